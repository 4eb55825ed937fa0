"""Pretrain a Bort student by knowledge distillation (or plain masked LM with --kd-weight 0).

Single process::

    python run_pretraining.py --data shards/ --teacher minilm --arch bort_4_8_768_1024 \\
        --output-dir runs/kd --total-steps 10000

Several workers (Gloo on CPU, NCCL on GPU)::

    .venv/bin/horovodrun -np 4 -H localhost:4 .venv/bin/python run_pretraining.py \\
        --config kd.json --gpu

``--config FILE.json`` holds flag names as keys (``"kd-weight"`` or ``"kd_weight"``); flags on the
command line win. ``--arch`` takes a registered name, an ``arch.json`` file or folder, a search
result JSON, or an inline JSON object. ``--teacher`` and ``--init_from`` take ``minilm`` (the
built-in default teacher, built once), a project model folder or a Hugging Face folder; the
folder each resolves to is logged. ``--max_minutes`` gives the run a time budget (the schedule
spans it; the run ends with a checkpoint, an evaluation and the final model); Ctrl-C ends it
after the current step with a checkpoint ``--resume`` continues. Prepare the data with
``python -m bort.pretrain.prepare --tokenizer minilm ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Dict, List, Optional, Sequence

from bort.threads import configure_threads

log = logging.getLogger('run_pretraining')


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`~bort.pretrain.PretrainConfig` field (``--x_y`` and ``--x-y``)."""
    # pylint: disable=import-outside-toplevel  (nothing heavy at import time)
    from bort.cli import add_dataclass_flags, make_parser
    from bort.pretrain.config import PretrainConfig
    parser = make_parser(description=__doc__.split('\n\n')[0])
    add_dataclass_flags(parser, PretrainConfig)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None):
    """The run's :class:`~bort.pretrain.PretrainConfig` from flags and an optional JSON file."""
    # pylint: disable=import-outside-toplevel
    from bort.cli import parse_configs
    from bort.pretrain.config import PretrainConfig
    return parse_configs(build_parser(), [PretrainConfig], argv)[0]


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse flags, set up workers and logging, pretrain; the final metrics."""
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    from bort.distributed import init_comm
    from bort.log import setup_logging
    from bort.pretrain.loop import pretrain
    from bort.pretrain.default_teacher import resolve_model_dir
    config = parse_config(argv)
    config.validate()  # every combination refused here, in one line, before any work
    comm = init_comm(gpu=config.gpu)
    setup_logging(comm)
    # minilm is built (or a Hugging Face folder imported) once; the folder is logged and is
    # what the checkpoints record.
    if config.teacher and (config.kd_weight > 0 or config.init == 'teacher'):
        config.teacher = resolve_model_dir(config.teacher, comm=comm, what='teacher')
    if config.init_from:
        config.init_from = resolve_model_dir(config.init_from, comm=comm, what='init_from')
    log.info('config: %s', json.dumps(dataclasses.asdict(config), sort_keys=True))
    result = pretrain(config, comm)
    log.info('done: %s', json.dumps(result, sort_keys=True, default=str))
    return result


if __name__ == '__main__':
    from bort.cli import ctrl_c_exits_at_once, run_main
    with ctrl_c_exits_at_once():  # importing MXNet takes a second or two
        from bort.pretrain.teacher import VocabularyMismatchError
        from bort.pretrain.loop import NonFiniteLossError
    run_main(main, (NonFiniteLossError, VocabularyMismatchError, FileExistsError),
             'run_pretraining')
