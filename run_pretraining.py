"""Pretrain a Bort student by knowledge distillation (or plain masked LM with --kd-weight 0).

Single process::

    python run_pretraining.py --data shards/ --teacher teacher/ --arch bort_4_8_768_1024 \\
        --output-dir runs/kd --total-steps 10000

Several workers (Gloo on CPU, NCCL on GPU)::

    horovodrun -np 4 -H localhost:4 python run_pretraining.py --config kd.json --gpu

``--config FILE.json`` holds flag names as keys (``"kd-weight"`` or ``"kd_weight"``); flags on the
command line win. ``--arch`` takes a registered name, an ``arch.json`` file or folder, a search
result JSON, or an inline JSON object. Prepare the data with ``python -m bort.pretrain.prepare``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Dict, List, Optional, Sequence

from bort.threads import configure_threads

log = logging.getLogger('run_pretraining')

HELP = {
    'data': 'folder written by `python -m bort.pretrain.prepare` (or a glob of shards)',
    'eval_data': "held-out shards (default: the data folder's eval-* shards)",
    'arch': 'student: registered name, arch JSON file/folder, search result, or inline JSON',
    'teacher': 'teacher model folder (arch.json + model.params with MLM head)',
    'tokenizer': 'tokenizer folder, only for shards without meta.json',
    'kd_weight': 'weight of the distillation term (0: self-supervised baseline)',
    'released_quirks': "the released script's loss (softmax twice, vocabulary mean)",
    'batch_size': 'sequences per worker per micro-batch',
    'accumulate': 'micro-batches per optimizer step',
    'data_parts': 'data order parts (0: number of workers); keep fixed to compare worker counts',
    'dtype': 'float16 (GPU only) or float32',
    'resume': 'continue from the latest checkpoint in --output-dir',
}


def build_parser(config_cls) -> argparse.ArgumentParser:
    """One flag per config field (``--x_y`` and ``--x-y``); booleans get --x/--no-x."""
    from bort.cli import add_dataclass_flags  # pylint: disable=import-outside-toplevel
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_flags(parser, config_cls, HELP)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None):
    """The run's :class:`~bort.pretrain.PretrainConfig` from flags and an optional JSON file."""
    from bort.cli import parse_with_config  # pylint: disable=import-outside-toplevel
    from bort.pretrain.loop import PretrainConfig  # pylint: disable=import-outside-toplevel
    return PretrainConfig(**parse_with_config(build_parser(PretrainConfig), argv))


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse flags, set up workers and logging, pretrain; the final metrics."""
    configure_threads()  # before MXNet is imported
    # pylint: disable=import-outside-toplevel
    from bort.distributed import init_comm
    from bort.log import setup_logging
    from bort.pretrain.loop import pretrain
    config = parse_config(argv)
    comm = init_comm(gpu=config.gpu)
    setup_logging(comm)
    log.info('config: %s', json.dumps(dataclasses.asdict(config), sort_keys=True))
    result = pretrain(config, comm)
    log.info('done: %s', json.dumps(result, sort_keys=True, default=str))
    return result


if __name__ == '__main__':
    from bort.cli import run_main
    from bort.pretrain.teacher import VocabularyMismatchError
    from bort.pretrain.loop import NonFiniteLossError
    run_main(main, (NonFiniteLossError, VocabularyMismatchError, FileExistsError),
             'run_pretraining')
