"""Fine-tune a pretrained model on one GLUE/SuperGLUE/RACE task, plainly or with Agora.

    python run_finetune.py --task RTE --data_dir data/glue --model MODEL_DIR \\
        --output_dir runs/rte [--agora --teacher TEACHER_DIR] [--predict]
    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo .venv/bin/python run_finetune.py ...

Every field of :class:`bort.finetune.FinetuneConfig`, :class:`bort.finetune.AgoraConfig` and
:class:`bort.finetune.RunOptions` is a flag of the same name; ``--config FILE.json`` sets defaults
from a JSON object whose keys are flag names, and flags given on the command line win.
``--finetuned DIR`` skips training and scores a fine-tuned folder (e.g. the MNLI model on AX, an
RTE model on the SuperGLUE diagnostics AX-b and AX-g, whose labelled test files are scored).
``--recipe paper`` fine-tunes with the released Bort recipe (BERT-Adam without bias
correction, U(-0.5, 0.5) head, length-bucketed batches, batch 8, lr 5e-5, weight decay 110,
warm-up 0.45, length 512); the default recipe fine-tunes any pretrained model as the
transformers library does (AdamW, N(0, 0.02) head, shuffled batches, batch 16, lr 5e-5, weight
decay 0.01, warm-up 0.1, length 128). Flags given, and ``--config`` values, win over the
recipe's. ``--model`` (and ``--mlm_model``) take ``minilm``, a project model folder or a Hugging Face
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


def chosen_recipe(argv: Optional[Sequence[str]] = None) -> str:
    """The ``--recipe`` of the command line, else of the ``--config`` file, else ``default``
    (an unknown name is left for the full parse to refuse)."""
    # pylint: disable=import-outside-toplevel
    from bort.finetune.config import RECIPES
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument('--recipe')
    first.add_argument('--config')
    known, _ = first.parse_known_args(argv)
    recipe = known.recipe
    if recipe is None and known.config:
        try:
            with open(known.config, encoding='utf-8') as f:
                recipe = json.load(f).get('recipe')
        except (OSError, ValueError, AttributeError):
            recipe = None  # the full parse reports an unreadable file
    return recipe if recipe in RECIPES else 'default'


def parse_args(argv: Optional[Sequence[str]] = None):
    """Flags (over ``--config`` defaults, over the ``--recipe``'s) into (FinetuneConfig,
    AgoraConfig, RunOptions)."""
    # pylint: disable=import-outside-toplevel
    from bort.cli import parse_configs
    from bort.finetune.config import AgoraConfig, FinetuneConfig, RunOptions, recipe_defaults
    parser = build_parser()
    parser.set_defaults(**recipe_defaults(chosen_recipe(argv)))
    return parse_configs(parser, (FinetuneConfig, AgoraConfig, RunOptions), argv)


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
    from bort.cli import ctrl_c_exits_at_once, run_main
    with ctrl_c_exits_at_once():  # importing MXNet takes a second or two
        import bort.finetune.run  # noqa: F401  (what main imports)
    run_main(main, logger='run_finetune')
