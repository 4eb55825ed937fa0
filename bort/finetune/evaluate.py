"""Scoring fine-tuned models on a labelled split, and writing their test predictions.

:func:`evaluate` scores a model in memory (the dev evaluation of the fine-tuning loop);
:func:`evaluate_folder` and :func:`predict_test` load a fine-tuned folder (or a run folder holding
``best/``) and score a split, or write the test predictions in the task's leaderboard format
(:mod:`bort.finetune.submission`). A folder fine-tuned on another task with the same classes may
predict this one: AX with the MNLI model, the SuperGLUE diagnostics AX-b and AX-g with an RTE
model (scored on their labelled test files, :attr:`TaskSpec.eval_split`). Under several
workers, each scores a shard and the scores are gathered; only rank 0 writes files.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..distributed import Comm
from ..errors import UserError
from ..tokenizers import load_tokenizer
from .castings import aggregate
from .classifier import Encoded, TaskClassifier, encode_examples, load_classifier, predict_scores
from .metrics import compute_metrics
from .readers import read_examples
from .submission import write_submission
from .tasks import Example, get_task

__all__ = ['evaluate', 'evaluate_folder', 'predict_test', 'BEST', 'TaskMismatchError']

#: The sub-folder of a fine-tuning run that holds its best model.
BEST = 'best'


class TaskMismatchError(UserError, ValueError):
    """A fine-tuned folder whose classes are not the task's (e.g. a CB model for AX-b)."""


def evaluate(task: Any, model: TaskClassifier, examples: Sequence[Example],
             encoded: Sequence[Encoded], pad_id: int, batch_size: int = 32,
             comm: Optional[Comm] = None) -> Tuple[Dict[str, float], np.ndarray]:
    """Task metrics of ``model`` on labelled examples, and its raw scores (N, num_classes)."""
    scores = predict_scores(model, encoded, pad_id, batch_size, comm)
    preds = aggregate(task, examples, scores)
    return compute_metrics(task, preds.predictions, preds.labels, preds.groups), scores


def evaluate_folder(task: Any, folder: str, data_dir: str, split: Optional[str] = None,
                    comm: Optional[Comm] = None, batch_size: int = 32
                    ) -> Tuple[Dict[str, float], np.ndarray]:
    """Task metrics of a fine-tuned folder on a labelled split (e.g. AX with an MNLI model).

    ``split`` defaults to the task's :attr:`~bort.finetune.tasks.TaskSpec.eval_split`: ``dev``,
    or the labelled test file of AX-b and AX-g.

    Raises
    ------
    TaskMismatchError
        The folder's classes are not the task's (a ValueError).
    """
    split = split or get_task(task).eval_split
    model, tokenizer = _load_for(task, folder, comm)
    examples = read_examples(task, data_dir, split)
    encoded = encode_examples(tokenizer, examples, model.head_config.max_length)
    return evaluate(task, model, examples, encoded, tokenizer.pad_id, batch_size, comm)


def predict_test(task: Any, folder: str, data_dir: str, output_dir: str,
                 comm: Optional[Comm] = None, batch_size: int = 32) -> Optional[str]:
    """Write the task's test predictions in its leaderboard format (:mod:`bort.finetune.submission`).

    An existing submission file is never replaced.

    Returns
    -------
    str or None
        The submission file (rank 0; None on other workers).

    Raises
    ------
    SubmissionExistsError
        ``output_dir`` already holds the task's submission file.
    """
    comm = comm or Comm()
    model, tokenizer = _load_for(task, folder, comm)
    examples = read_examples(task, data_dir, 'test')
    encoded = encode_examples(tokenizer, examples, model.head_config.max_length)
    preds = aggregate(task, examples, predict_scores(model, encoded, tokenizer.pad_id,
                                                     batch_size, comm))
    if not comm.is_root:
        return None
    return str(write_submission(task, preds.ids, preds.predictions, output_dir))


def _load_for(task: Any, folder: str, comm: Optional[Comm]):
    comm = comm or Comm()
    if os.path.isdir(os.path.join(folder, BEST)):
        folder = os.path.join(folder, BEST)
    model = load_classifier(folder, comm.ctx)
    spec, trained = get_task(task), get_task(model.head_config.task)
    if spec.labels != trained.labels:
        raise TaskMismatchError(f'{folder} was fine-tuned on {trained.name} (labels '
                                f'{trained.labels}), which cannot predict {spec.name} (labels '
                                f'{spec.labels})')
    model.hybridize(static_alloc=True)
    return model, load_tokenizer(folder)
