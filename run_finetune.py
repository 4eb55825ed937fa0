"""Fine-tune a pretrained model on one GLUE/SuperGLUE/RACE task, plainly or with Agora.

    python run_finetune.py --task RTE --data_dir data/glue --model MODEL_DIR \\
        --output_dir runs/rte [--agora --teacher TEACHER_DIR] [--predict]
    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python run_finetune.py ...

Every field of :class:`bort.finetune.FinetuneConfig`, :class:`bort.finetune.AgoraConfig` and
:class:`bort.finetune.RunOptions` is a flag of the same name; ``--config FILE.json`` sets defaults
from a JSON object whose keys are flag names, and flags given on the command line win.
``--finetuned DIR`` skips training and scores a fine-tuned folder (e.g. the MNLI model on AX, an
RTE model on the SuperGLUE diagnostics AX-b and AX-g, whose labelled test files are scored).
``--model`` (and ``--mlm_model``) take ``minilm``, a project model folder or a Hugging Face
folder; ``--max_minutes`` gives the run (or the whole Agora run) a time budget. Outputs in
``--output_dir`` (default ``runs/finetune``; with ``--finetuned``, the folder holding it):
``dev_metrics.json`` (the best dev metrics), ``chs.json`` with
``--agora`` (the convergent hyperparameter set), and the leaderboard submission file with
``--predict`` (never replacing one). The job's summary is printed as JSON. A mistake in the
input (a malformed row, a missing task file, an unknown task) ends the command with one line
naming the file and line, or the flag, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Optional, Sequence

from bort.threads import configure_threads


def build_parser() -> argparse.ArgumentParser:
    """The flags of the three configs, one group each (``--x_y`` and ``--x-y``)."""
    # pylint: disable=import-outside-toplevel  (nothing heavy at import time)
    from bort.cli import add_dataclass_flags, make_parser
    from bort.finetune.config import AgoraConfig, FinetuneConfig, RunOptions
    parser = make_parser(description=__doc__.split('\n')[0])
    for cls in (FinetuneConfig, AgoraConfig, RunOptions):
        add_dataclass_flags(parser, cls, group=cls.__name__)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None):
    """Flags (over ``--config`` defaults) into (FinetuneConfig, AgoraConfig, RunOptions)."""
    # pylint: disable=import-outside-toplevel
    from bort.cli import parse_configs
    from bort.finetune.config import AgoraConfig, FinetuneConfig, RunOptions
    return parse_configs(build_parser(), (FinetuneConfig, AgoraConfig, RunOptions), argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run as the flags say; returns the dev metrics (and the CHS with ``--agora``)."""
    configure_threads()  # before MXNet is imported
    config, agora_config, options = parse_args(argv)
    # pylint: disable=import-outside-toplevel
    from bort.cli import emit
    from bort.distributed import init_comm
    from bort.finetune.config import with_output_dir
    from bort.finetune.run import run_finetune_job
    from bort.log import setup_logging
    from bort.runlock import hold_run_folder
    config = with_output_dir(config, options.finetuned)  # the log file goes there too
    comm = init_comm(gpu=options.gpu)
    # The folder is held before the log file opens in it: a refused second run writes nothing
    # into the first run's log.txt, and a run refused for bad input removes the folder it made.
    with hold_run_folder(config.output_dir, comm):
        setup_logging(comm, log_file=os.path.join(config.output_dir, 'log.txt'))
        summary = run_finetune_job(config, agora_config, options, comm)
    if comm.is_root:
        emit(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


if __name__ == '__main__':
    from bort.cli import run_main
    run_main(main, logger='run_finetune')
