"""Fine-tune a pretrained model on one GLUE/SuperGLUE/RACE task, plainly or with Agora.

    python run_finetune.py --task RTE --data_dir data/glue --model MODEL_DIR \\
        --output_dir runs/rte [--agora --teacher TEACHER_DIR] [--predict]
    horovodrun -np 2 -H localhost:2 --gloo python run_finetune.py ...   # synchronised workers

Every field of :class:`bort.finetune.FinetuneConfig` and :class:`bort.finetune.agora.AgoraConfig` is a
flag of the same name; ``--config FILE.json`` sets defaults from a JSON object whose keys are flag
names, and flags given on the command line win. ``--finetuned DIR`` skips training and uses a
fine-tuned folder (e.g. the MNLI model for AX). Outputs in ``--output_dir``: ``dev_metrics.json``
(the best dev metrics), ``chs.json`` with ``--agora`` (the convergent hyperparameter set), and
the leaderboard submission file with ``--predict``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from bort.threads import configure_threads


@dataclass
class RunOptions:
    """What to do with the task (the flags not in the library's configs)."""

    agora: bool = False
    predict: bool = False
    finetuned: str = ''
    gpu: bool = False


def _configs():
    # pylint: disable=import-outside-toplevel  (nothing heavy at import time)
    from bort.finetune.agora import AgoraConfig
    from bort.finetune.loop import FinetuneConfig
    return FinetuneConfig, AgoraConfig, RunOptions


def parse_args(argv: Optional[Sequence[str]] = None):
    """Flags (over ``--config`` defaults) into (FinetuneConfig, AgoraConfig, RunOptions)."""
    from bort.cli import add_dataclass_flags, parse_with_config  # pylint: disable=import-outside-toplevel
    classes = _configs()
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    for cls in classes:
        add_dataclass_flags(parser, cls, group=cls.__name__)
    args = parse_with_config(parser, argv)
    return tuple(cls(**{f.name: args[f.name] for f in dataclasses.fields(cls)})
                 for cls in classes)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run as the flags say; returns the dev metrics (and the CHS with ``--agora``)."""
    configure_threads()  # before MXNet is imported
    finetune_config, agora_config, options = parse_args(argv)
    # pylint: disable=import-outside-toplevel
    from bort.finetune.agora import run_agora
    from bort.checkpoint import write_json_atomic
    from bort.distributed import init_comm
    from bort.finetune.loop import finetune
    from bort.finetune.evaluate import evaluate_folder, predict_test
    from bort.log import setup_logging
    from bort.finetune.tasks import get_task

    comm = init_comm(gpu=options.gpu)
    os.makedirs(finetune_config.output_dir, exist_ok=True)
    setup_logging(comm, log_file=os.path.join(finetune_config.output_dir, 'log.txt'))
    config = finetune_config
    summary: Dict[str, Any] = {'task': config.task}
    if options.finetuned:
        folder = options.finetuned
        if 'dev' in get_task(config.task).splits:  # AX-b and AX-g have a test split only
            metrics, _ = evaluate_folder(config.task, folder, config.data_dir, 'dev', comm,
                                         config.eval_batch_size)
            summary.update(metrics=metrics)
        if comm.is_root:
            write_json_atomic(os.path.join(config.output_dir, 'dev_metrics.json'), summary)
    elif options.agora:
        result = run_agora(config, agora_config, comm)
        folder = result.folder
        summary.update(metrics=result.metrics, agora_score=result.score, chs=result.chs,
                       iterations=result.iterations, points_added=result.points_added,
                       examples_seen=result.examples_seen,
                       teacher_accuracy=result.teacher_accuracy)
        if comm.is_root:
            write_json_atomic(os.path.join(config.output_dir, 'dev_metrics.json'), summary)
    else:
        result = finetune(config, comm)
        folder = result.folder
        summary.update(metrics=result.metrics, epoch=result.epoch, steps=result.steps)
    if options.predict:
        summary['submission'] = predict_test(config.task, folder, config.data_dir,
                                             config.output_dir, comm, config.eval_batch_size)
    return summary


if __name__ == '__main__':
    main()
