"""One ``run_finetune.py`` job: fine-tune plainly or with Agora, or evaluate a fine-tuned folder.

:func:`run_finetune_job` is the whole job behind the script, so that the script only parses flags
and the modes can be called (and tested) as a library function.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from ..checkpoint import write_json_atomic
from ..distributed import Comm
from .agora import run_agora
from .config import AgoraConfig, FinetuneConfig, RunOptions, with_output_dir
from .evaluate import evaluate_folder, predict_test
from .loop import finetune
from .submission import check_new_submission
from .tasks import get_task

__all__ = ['run_finetune_job', 'DEV_METRICS']

logger = logging.getLogger(__name__)

#: The summary file of a job in ``output_dir``.
DEV_METRICS = 'dev_metrics.json'


def run_finetune_job(config: FinetuneConfig, agora_config: Optional[AgoraConfig] = None,
                     options: Optional[RunOptions] = None, comm: Optional[Comm] = None
                     ) -> Dict[str, Any]:
    """Run one job as ``options`` say; its summary, also written to ``output_dir``.

    The modes:

    * ``options.finetuned`` set: no training; the folder's metrics on the task's labelled
      evaluation split (:attr:`~bort.finetune.tasks.TaskSpec.eval_split`: ``dev``, or the
      labelled test file of the diagnostics AX-b and AX-g, scored with an RTE model);
    * ``options.agora``: :func:`bort.finetune.run_agora` with ``agora_config``; the summary
      holds the CHS and Agora's counts;
    * otherwise: :func:`bort.finetune.finetune` (which writes ``dev_metrics.json`` itself).

    With ``options.predict``, the best (or given) folder then writes the leaderboard submission
    file of the test split into ``output_dir`` (when empty: the folder holding
    ``options.finetuned``, else ``runs/finetune``); an existing one is refused before any
    work.

    Parameters
    ----------
    config : FinetuneConfig
    agora_config : AgoraConfig, optional
        Used with ``options.agora`` (default: :class:`AgoraConfig`'s defaults).
    options : RunOptions, optional
        What to do (default: plain fine-tuning, no submission).
    comm : Comm, optional
        Workers (default: one process).

    Returns
    -------
    dict
        ``task`` and ``metrics`` (the dev metrics); ``split`` (the split scored) with
        ``finetuned``; ``epoch`` and ``steps`` when trained plainly;
        ``agora_score``, ``chs``, ``iterations``, ``points_added``, ``examples_seen`` and
        ``teacher_accuracy`` with Agora; ``submission`` (the file; None on other workers than
        rank 0) with ``predict``.
    """
    options = options or RunOptions()
    comm = comm or Comm()
    config = with_output_dir(config, options.finetuned)
    spec = get_task(config.task)  # an unknown task ends the job before anything is written
    if options.predict:
        check_new_submission(spec, config.output_dir)  # not after hours of training
    os.makedirs(config.output_dir, exist_ok=True)
    summary: Dict[str, Any] = {'task': config.task}
    if options.finetuned:
        folder = options.finetuned
        split = spec.eval_split
        metrics, _ = evaluate_folder(spec, folder, config.data_dir, split, comm,
                                     config.eval_batch_size)
        summary.update(split=split, metrics=metrics)
        logger.info('%s %s split with %s: %s', spec.name, split, folder,
                    ', '.join(f'{name} {value:.4f}' for name, value in metrics.items()))
        _write_summary(config, summary, comm)
    elif options.agora:
        result = run_agora(config, agora_config or AgoraConfig(), comm)
        folder = result.folder
        summary.update(metrics=result.metrics, agora_score=result.score, chs=result.chs,
                       iterations=result.iterations, points_added=result.points_added,
                       examples_seen=result.examples_seen,
                       teacher_accuracy=result.teacher_accuracy, stopped=result.stopped)
        _write_summary(config, summary, comm)
    else:
        result = finetune(config, comm)
        folder = result.folder
        summary.update(metrics=result.metrics, epoch=result.epoch, steps=result.steps,
                       stopped=result.stopped)
    if options.predict:
        summary['submission'] = predict_test(config.task, folder, config.data_dir,
                                             config.output_dir, comm, config.eval_batch_size)
    return summary


def _write_summary(config: FinetuneConfig, summary: Dict[str, Any], comm: Comm) -> None:
    if comm.is_root:
        write_json_atomic(os.path.join(config.output_dir, DEV_METRICS), summary)
