"""Agora's labeller (the paper's Socrates) and the example-level accuracy Agora compares.

The labeller is a classifier fine-tuned on the task (``run_finetune.py --agora --teacher``);
its predictions label the new points Agora makes from the student's dev mistakes, never the dev
set's gold labels. It must qualify first: the task's labels, and dev accuracy above 2/3.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional, Sequence

import numpy as np

from ..distributed import Comm
from ..errors import UserError
from ..tokenizers import load_tokenizer
from .classifier import encode_examples, load_classifier, predict_scores
from .evaluate import BEST
from .tasks import Example, TaskSpec, get_task

__all__ = ['Labeller', 'LabellerError', 'check_labeller', 'agora_accuracy', 'dev_mistakes']


class LabellerError(UserError, ValueError):
    """The labeller (``--teacher``) does not qualify (too weak on dev, or made for other labels).
    """



def _predictions(spec: TaskSpec, scores: np.ndarray) -> np.ndarray:
    if spec.is_regression:
        return np.round(scores[:, 0])
    return np.argmax(scores, axis=1)


def _correct(spec: TaskSpec, examples: Sequence[Example], scores: np.ndarray) -> np.ndarray:
    labels = np.asarray([ex.label for ex in examples], dtype=np.float64)
    return _predictions(spec, scores) == (np.round(labels) if spec.is_regression else labels)


def agora_accuracy(task: Any, examples: Sequence[Example], scores: np.ndarray) -> float:
    """Example-level accuracy (regression: rounded), the score Agora compares."""
    return float(np.mean(_correct(get_task(task), examples, scores)))


def dev_mistakes(task: Any, examples: Sequence[Example], scores: np.ndarray) -> List[int]:
    """Indices of the examples that ``scores`` gets wrong (see :func:`agora_accuracy`)."""
    return np.flatnonzero(~_correct(get_task(task), examples, scores)).tolist()


class Labeller:
    """Agora's labeller (the paper's Socrates, set by ``--teacher``): a classifier fine-tuned on
    the task whose predictions label the new points, with its own tokenizer and max length.

    Named apart from the masked-LM teacher of distillation (:class:`bort.pretrain.teacher.Teacher`).

    Parameters
    ----------
    folder : str
        A fine-tuned folder, or a fine-tuning run folder holding ``best/``.
    comm : Comm, optional
    batch_size : int
    """

    def __init__(self, folder: str, comm: Optional[Comm] = None, batch_size: int = 32):
        if os.path.isdir(os.path.join(folder, BEST)):
            folder = os.path.join(folder, BEST)
        self.folder = folder
        self.comm = comm or Comm()
        self.model = load_classifier(folder, self.comm.ctx)
        self.model.hybridize(static_alloc=True)
        self.tokenizer = load_tokenizer(folder)
        self.task = get_task(self.model.head_config.task)
        self.batch_size = batch_size

    def scores(self, examples: Sequence[Example]) -> np.ndarray:
        """(N, num_classes) scores of the labeller."""
        encoded = encode_examples(self.tokenizer, examples, self.model.head_config.max_length)
        return predict_scores(self.model, encoded, self.tokenizer.pad_id, self.batch_size,
                              self.comm)

    def label(self, examples: Sequence[Example]) -> List[Example]:
        """Copies of ``examples`` carrying the labeller's labels (class index or float)."""
        if not examples:
            return []
        scores = self.scores(examples)
        if self.task.is_regression:  # the raw score, not its rounding, is the label
            return [dataclasses.replace(ex, label=float(s))
                    for ex, s in zip(examples, scores[:, 0])]
        return [dataclasses.replace(ex, label=int(p))
                for ex, p in zip(examples, np.argmax(scores, axis=1))]


def check_labeller(labeller: Labeller, task: Any, dev: Sequence[Example],
                  min_accuracy: float = 2 / 3) -> float:
    """The labeller's dev accuracy, after checking it qualifies.

    Raises
    ------
    LabellerError
        The labeller predicts other labels than the task's, or its dev accuracy does not exceed
        ``min_accuracy``.
    """
    spec = get_task(task)
    if labeller.task.labels != spec.labels:
        raise LabellerError(f'teacher {labeller.folder} was fine-tuned on {labeller.task.name} '
                           f'(labels {labeller.task.labels}); {spec.name} has labels '
                           f'{spec.labels}')
    accuracy = agora_accuracy(spec, dev, labeller.scores(dev))
    if not accuracy > min_accuracy:
        raise LabellerError(f'teacher {labeller.folder} has dev accuracy {accuracy:.4f} on '
                           f'{spec.name}; Agora needs a teacher above {min_accuracy:.4f} '
                           f'(2/3 unless --min_teacher_accuracy says otherwise)')
    return accuracy
