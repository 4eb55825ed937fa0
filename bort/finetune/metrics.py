"""Task metrics as GLUE, SuperGLUE and RACE define them.

Each task's spec (:mod:`bort.finetune.tasks`) lists metric names from :data:`METRICS`; the first is the
primary metric, used for early stopping and model selection. Predictions and labels are in the
form :func:`bort.finetune.castings.aggregate` produces: class indices into ``TaskSpec.labels`` (so the
positive class of MRPC, QQP and MultiRC is 1), floats for STS-B, COPA choice indices, RACE
letters, ReCoRD entity texts against tuples of gold answer texts.

=================  ====================================================================
``accuracy``       fraction of exact matches
``mcc``            Matthews correlation; multi-class R_K for AX (scikit-learn)
``f1``             binary F1 of class 1 (MRPC, QQP)
``macro_f1``       unweighted mean of per-class F1 over the classes present (CB)
``pearson``        Pearson correlation (STS-B, scipy)
``spearman``       Spearman rank correlation (STS-B, scipy)
``f1a``            MultiRC: binary F1 over all answer options pooled
``em``             MultiRC: fraction of questions (groups) whose answers are all right
``answer_f1``      ReCoRD: SQuAD-style token F1, max over gold answers, mean over queries
``answer_em``      ReCoRD: SQuAD-style exact match, max over gold answers, mean over queries
``gender_parity``  AX-g: fraction of pairs whose two examples, which differ only in the
                   pronoun's gender, get the same prediction (SuperGLUE's definition; the
                   pairs are consecutive rows of AX-g.jsonl, grouped by the reader)
=================  ====================================================================
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .tasks import TaskSpec, get_task

__all__ = ['METRICS', 'compute_metrics', 'primary_metric', 'normalize_answer', 'answer_f1',
           'answer_em', 'multirc_em', 'gender_parity', 'majority_baseline']

_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = str.maketrans('', '', string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, squeeze whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return ' '.join(_ARTICLES.sub(' ', text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _golds(gold: Union[str, Sequence[str]]) -> Sequence[str]:
    return (gold,) if isinstance(gold, str) else gold


def answer_f1(predictions: Sequence[str], golds: Sequence[Union[str, Sequence[str]]]) -> float:
    """Mean over queries of the best token F1 against any gold answer (ReCoRD, SQuAD)."""
    return float(np.mean([max((_token_f1(p, g) for g in _golds(gs)), default=0.0)
                          for p, gs in zip(predictions, golds)]))


def answer_em(predictions: Sequence[str], golds: Sequence[Union[str, Sequence[str]]]) -> float:
    """Mean over queries of exact match (after normalisation) with any gold answer."""
    return float(np.mean([max((float(normalize_answer(p) == normalize_answer(g))
                               for g in _golds(gs)), default=0.0)
                          for p, gs in zip(predictions, golds)]))


def _by_group(values: Sequence[Any], groups: Sequence[Hashable]) -> Dict[Hashable, List[Any]]:
    grouped: Dict[Hashable, List[Any]] = collections.OrderedDict()
    for value, group in zip(values, groups):
        grouped.setdefault(group, []).append(value)
    return grouped


def multirc_em(predictions: Sequence[int], labels: Sequence[int],
               groups: Sequence[Hashable]) -> float:
    """Fraction of questions (``groups``) all of whose answer options are labelled right."""
    grouped = _by_group([int(p == t) for p, t in zip(predictions, labels)], groups)
    return float(np.mean([all(right) for right in grouped.values()]))


def gender_parity(predictions: Sequence[Any], groups: Sequence[Hashable]) -> float:
    """Fraction of AX-g pairs whose two examples are predicted identically.

    Parameters
    ----------
    predictions : sequence, length N
        One prediction per example.
    groups : sequence of hashable, length N
        The pair of each example; every pair has exactly two examples. (AX-g's ``pair_id`` is
        unique per row: the reader groups rows 2k and 2k+1, which share their hypothesis.)

    Raises
    ------
    ValueError
        If a group does not hold exactly two examples.
    """
    grouped = _by_group(list(predictions), groups)
    odd = [(g, len(preds)) for g, preds in grouped.items() if len(preds) != 2]
    if odd:
        raise ValueError(f'gender parity needs pairs; group {odd[0][0]!r} has {odd[0][1]} '
                         'examples')
    return float(np.mean([preds[0] == preds[1] for preds in grouped.values()]))


def _binary_f1(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    return float(skm.f1_score(labels, predictions, pos_label=1, average='binary'))


def majority_baseline(predictions: Sequence[Hashable], labels: Sequence[Hashable]
                      ) -> Tuple[float, float, int]:
    """How answers compare with always giving the most frequent gold answer.

    Parameters
    ----------
    predictions, labels : sequences of hashable, length N
        One answer and one gold answer per question (a class index, COPA's choice, RACE's
        letter): :func:`bort.finetune.castings.aggregate`'s output, so that COPA counts its
        100 questions, not its 200 (question, choice) pairs.

    Returns
    -------
    (accuracy, majority, distinct)
        The answers' accuracy, the most frequent gold answer's share, and how many different
        answers were given.
    """
    if not len(labels) or len(labels) != len(predictions):
        raise ValueError(f'{len(predictions)} predictions for {len(labels)} labels')
    majority = collections.Counter(labels).most_common(1)[0][1] / len(labels)
    accuracy = float(np.mean([p == t for p, t in zip(predictions, labels)]))
    return accuracy, float(majority), len(set(predictions))


def _needs_groups(name: str, groups: Optional[Sequence[Hashable]]) -> Sequence[Hashable]:
    if groups is None:
        raise ValueError(f'metric {name!r} needs groups')
    return groups


MetricFn = Callable[[Sequence[Any], Sequence[Any], Optional[Sequence[Hashable]]], float]

#: Metric name to ``fn(predictions, labels, groups) -> float``.
METRICS: Dict[str, MetricFn] = {
    'accuracy': lambda p, t, g: float(skm.accuracy_score(t, p)),
    'mcc': lambda p, t, g: float(skm.matthews_corrcoef(t, p)),
    'f1': lambda p, t, g: _binary_f1(p, t),
    'macro_f1': lambda p, t, g: float(skm.f1_score(t, p, average='macro')),
    'pearson': lambda p, t, g: float(stats.pearsonr(p, t)[0]),
    'spearman': lambda p, t, g: float(stats.spearmanr(p, t)[0]),
    'f1a': lambda p, t, g: _binary_f1(p, t),
    'em': lambda p, t, g: multirc_em(p, t, _needs_groups('em', g)),
    'answer_f1': lambda p, t, g: answer_f1(p, t),
    'answer_em': lambda p, t, g: answer_em(p, t),
    'gender_parity': lambda p, t, g: gender_parity(p, _needs_groups('gender_parity', g)),
}


def compute_metrics(task_name: Union[str, TaskSpec], predictions: Sequence[Any],
                    labels: Sequence[Any],
                    groups: Optional[Sequence[Hashable]] = None) -> Dict[str, float]:
    """All of a task's metrics.

    Parameters
    ----------
    task_name : str or TaskSpec
        The task; its spec lists the metrics.
    predictions, labels : sequence, length N
        One entry per original question (see the module docstring for the forms).
    groups : sequence of hashable, length N, optional
        Group keys, needed by MultiRC's ``em`` (question) and AX-g's ``gender_parity``
        (pair).

    Returns
    -------
    dict of str to float
        Metric name to value, primary metric first.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, or groups missing where needed.
    """
    spec = get_task(task_name)
    predictions, labels = list(predictions), list(labels)
    if not predictions:
        raise ValueError(f'{spec.name}: no predictions to score')
    if len(predictions) != len(labels):
        raise ValueError(f'{spec.name}: {len(predictions)} predictions but {len(labels)} labels')
    if groups is not None and len(groups) != len(predictions):
        raise ValueError(f'{spec.name}: {len(groups)} groups for {len(predictions)} predictions')
    return {name: METRICS[name](predictions, labels, groups) for name in spec.metrics}


def primary_metric(task: Union[str, TaskSpec]) -> str:
    """The metric to early-stop on (higher is better for all of them)."""
    return get_task(task).metrics[0]
