"""Casting task records into (text_a, text_b) classification examples, and back.

SuperGLUE and RACE records are not all sentence pairs. As SPEC section 6 says, every task is
cast into classification of text pairs:

* ``pair``: one record is one example (GLUE, BoolQ, CB, RTE, WiC, AX-b, AX-g).
* ``copa``: two binary examples per record, ``(premise + question, choice)``; the question
  ``cause``/``effect`` becomes :data:`COPA_QUESTIONS`.
* ``wsc``: one binary example per record, the text with the candidate span (span1) marked
  ``*like this*`` and the pronoun (span2) ``#like this#``.
* ``multirc``: one binary example per answer option, ``(paragraph, question + answer)``. The
  text is under ``passage`` in the SuperGLUE v2 release and under ``paragraph`` in v1; both
  are read.
* ``record``: one binary example per (query, candidate entity), ``(passage, query with
  @placeholder replaced by the entity)``; candidates are the passage's entities (unique texts,
  in order of first appearance; an entity's ``end`` offset is inclusive).
* ``race``: one binary example per (question, option), ``(article, question + option)``; a
  cloze question's ``_`` is replaced by the option.

:func:`aggregate` inverts the casting: per-example scores become per-original-question
predictions. :func:`balance_labels` discards examples at random (seeded) so that every class is
equally frequent; the readers apply it to training data only.
"""
from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import DataFormatError
from .tasks import Example, JsonFields, TaskSpec, get_task

__all__ = ['COPA_QUESTIONS', 'WSC_MARKERS', 'Source', 'cast_json_record', 'cast_race_article',
           'TaskPredictions', 'aggregate', 'balance_labels']

logger = logging.getLogger(__name__)

#: The text appended to a COPA premise for each question type.
COPA_QUESTIONS = {'cause': 'What was the cause of this?', 'effect': 'What happened as a result?'}
#: (left, right) markers around WSC's candidate span (span1) and pronoun (span2).
WSC_MARKERS = {'span1': ('*', '*'), 'span2': ('#', '#')}
# Castings whose original question is one example; the others pick one candidate per group.
_PER_EXAMPLE = ('pair', 'wsc', 'multirc')

GuidFactory = Callable[[], str]


@dataclass(frozen=True)
class Source:
    """Where a record came from, to name it in a :class:`DataFormatError`."""

    path: str
    line: int

    def error(self, reason: str) -> DataFormatError:
        """A :class:`DataFormatError` pointing at this file and line."""
        return DataFormatError(reason, self.path, self.line)


def _get(record: Any, key: str, src: Source, kind: Optional[type] = None) -> Any:
    if not isinstance(record, Mapping):
        raise src.error(f'expected a JSON object holding {key!r}, got {type(record).__name__}')
    if key not in record:
        raise src.error(f'missing field {key!r}')
    value = record[key]
    # bool is a subclass of int, but a boolean is never a valid index or offset.
    if kind is not None and (not isinstance(value, kind) or
                             (kind is int and isinstance(value, bool))):
        raise src.error(f'field {key!r} should be {kind.__name__}, got {value!r}')
    return value


def _fill(template: str, record: Mapping[str, Any], src: Source) -> str:
    try:
        return template.format_map(record)
    except KeyError as err:
        raise src.error(f'missing field {err.args[0]!r}') from None


def _label(spec: TaskSpec, value: Any, src: Source) -> int:
    try:
        return spec.label_index(value)
    except KeyError:
        raise src.error(f'unknown label {value!r} for {spec.name} '
                        f'(expected one of {spec.labels})') from None


def _cast_pair(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields, src: Source,
               guid: GuidFactory) -> List[Example]:
    text_a = _fill(fields.text_a, record, src)
    text_b = _fill(fields.text_b, record, src) if fields.text_b else None
    label = _label(spec, _get(record, fields.label, src), src) if fields.label else None
    return [Example(guid(), text_a, text_b, label, idx=_get(record, fields.index, src))]


def _cast_copa(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields, src: Source,
               guid: GuidFactory) -> List[Example]:
    question = _get(record, 'question', src, str)
    if question not in COPA_QUESTIONS:
        raise src.error(f'COPA question should be one of {sorted(COPA_QUESTIONS)}, '
                        f'got {question!r}')
    premise = f"{_get(record, 'premise', src, str)} {COPA_QUESTIONS[question]}"
    choices = [_get(record, 'choice1', src, str), _get(record, 'choice2', src, str)]
    gold = _get(record, fields.label, src, int) if fields.label else None
    if gold not in (None, 0, 1):
        raise src.error(f'unknown label {gold!r} for COPA (expected 0 or 1)')
    idx = _get(record, fields.index, src)
    return [Example(guid(), premise, choice, None if gold is None else int(gold == c),
                    group=idx, idx=idx, choice=c, gold=gold)
            for c, choice in enumerate(choices)]


def _words_match(words: Sequence[str], span_text: str) -> bool:
    def norm(text: str) -> str:
        return ' '.join(text.lower().translate(str.maketrans('', '', string.punctuation)).split())
    return norm(' '.join(words)) == norm(span_text)


def _cast_wsc(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields, src: Source,
              guid: GuidFactory) -> List[Example]:
    text = _get(record, 'text', src, str)
    target = _get(record, 'target', src, dict)
    words = text.split()
    for span in ('span1', 'span2'):
        index = _get(target, f'{span}_index', src, int)
        span_text = _get(target, f'{span}_text', src, str)
        width = max(1, len(span_text.split()))
        if not 0 <= index <= len(words) - width:
            raise src.error(f'{span}_index {index} outside the {len(words)}-word text')
        if not _words_match(words[index:index + width], span_text):
            # A handful of official rows disagree by more than case or punctuation: the index
            # wins, as it is what the marked text is built from.
            logger.debug('%s:%d: %s_text %r differs from the words at its index', src.path,
                         src.line, span, span_text)
        left, right = WSC_MARKERS[span]
        words[index] = left + words[index]
        words[index + width - 1] = words[index + width - 1] + right
    label = _label(spec, _get(record, fields.label, src), src) if fields.label else None
    group = (text, target['span2_index'])  # one pronoun, possibly several candidate referents
    return [Example(guid(), ' '.join(words), None, label, group=group,
                    idx=_get(record, fields.index, src), choice=target['span1_text'])]


def _cast_multirc(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields, src: Source,
                  guid: GuidFactory) -> List[Example]:
    p_idx = _get(record, fields.index, src)
    key = 'paragraph' if 'passage' not in record and 'paragraph' in record else 'passage'
    if key not in record:
        raise src.error("missing field 'passage' (SuperGLUE v2 MultiRC; v1 files have "
                        "'paragraph')")
    paragraph = _get(record, key, src, dict)
    text = _get(paragraph, 'text', src, str)
    examples = []
    for question in _get(paragraph, 'questions', src, list):
        q_idx = _get(question, 'idx', src)
        q_text = _get(question, 'question', src, str)
        for answer in _get(question, 'answers', src, list):
            a_idx = _get(answer, 'idx', src)
            label = _label(spec, _get(answer, 'label', src), src) if fields.label else None
            examples.append(Example(guid(), text, f"{q_text} {_get(answer, 'text', src, str)}",
                                    label, group=(p_idx, q_idx), idx=(p_idx, q_idx, a_idx),
                                    choice=a_idx, gold=label))
    return examples


def _record_entities(passage: Mapping[str, Any], src: Source) -> List[str]:
    text = _get(passage, 'text', src, str)
    entities: Dict[str, None] = {}  # an ordered set
    for entity in _get(passage, 'entities', src, list):
        start, end = _get(entity, 'start', src, int), _get(entity, 'end', src, int)
        if not 0 <= start <= end < len(text):
            raise src.error(f'entity offsets ({start}, {end}) outside the passage')
        entities.setdefault(text[start:end + 1], None)
    return list(entities)


def _cast_record(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields, src: Source,
                 guid: GuidFactory) -> List[Example]:
    passage = _get(record, 'passage', src, dict)
    text = _get(passage, 'text', src, str)
    entities = _record_entities(passage, src)
    examples = []
    for qa in _get(record, 'qas', src, list):
        query = _get(qa, 'query', src, str)
        if '@placeholder' not in query:
            raise src.error(f'ReCoRD query without @placeholder: {query!r}')
        q_idx = _get(qa, 'idx', src)
        gold = None
        if fields.label:
            gold = tuple(dict.fromkeys(_get(a, 'text', src, str)
                                       for a in _get(qa, 'answers', src, list)))
        for entity in entities:
            label = None if gold is None else int(entity in gold)
            examples.append(Example(guid(), text, query.replace('@placeholder', entity), label,
                                    group=q_idx, idx=q_idx, choice=entity, gold=gold))
    return examples


_JSON_CASTINGS = {'pair': _cast_pair, 'copa': _cast_copa, 'wsc': _cast_wsc,
                  'multirc': _cast_multirc, 'record': _cast_record}


def cast_json_record(spec: TaskSpec, record: Mapping[str, Any], fields: JsonFields,
                     src: Source, guid: GuidFactory) -> List[Example]:
    """Turn one SuperGLUE JSONL record into examples according to ``spec.casting``.

    Parameters
    ----------
    spec : TaskSpec
        The task.
    record : mapping
        One parsed JSONL line.
    fields : JsonFields
        The split's layout; ``fields.label`` None means the split is unlabelled.
    src : Source
        File and line of the record, for errors.
    guid : callable
        Returns the next unique example id.

    Raises
    ------
    DataFormatError
        Missing field, wrong type or unknown label.
    """
    if not isinstance(record, Mapping):
        raise src.error(f'expected a JSON object, got {type(record).__name__}')
    return _JSON_CASTINGS[spec.casting](spec, record, fields, src, guid)


def cast_race_article(spec: TaskSpec, article: Mapping[str, Any], src: Source,
                      guid: GuidFactory) -> List[Example]:
    """Turn one RACE article (``article, questions, options, answers, id``) into examples."""
    text = _get(article, 'article', src, str)
    article_id = _get(article, 'id', src, str)
    questions = _get(article, 'questions', src, list)
    options = _get(article, 'options', src, list)
    answers = _get(article, 'answers', src, list)
    if not len(questions) == len(options) == len(answers):
        raise src.error(f'{len(questions)} questions, {len(options)} option lists and '
                        f'{len(answers)} answers')
    examples = []
    for q, (question, choices, answer) in enumerate(zip(questions, options, answers)):
        letters = [chr(ord('A') + k) for k in range(len(choices))]
        if answer not in letters:
            raise src.error(f'question {q}: unknown answer {answer!r} (options {letters})')
        for letter, option in zip(letters, choices):
            if '_' in question:  # cloze question: fill the blank
                text_b = question.replace('_', option)
            else:
                text_b = f'{question} {option}'
            examples.append(Example(guid(), text, text_b, int(letter == answer),
                                    group=(article_id, q), idx=(article_id, q), choice=letter,
                                    gold=answer))
    return examples


@dataclass(frozen=True)
class TaskPredictions:
    """Predictions per original question, ready for metrics and submission.

    Attributes
    ----------
    ids : list
        The original ids (``Example.idx``) the submission needs, one per prediction.
    predictions : list
        Class indices (classification, MultiRC answers, WSC), floats (STS-B), COPA choices,
        RACE option letters or ReCoRD entity texts.
    labels : list or None
        The gold answers in the same form (ReCoRD: tuples of answer texts); None when unlabelled.
    groups : list or None
        Per-prediction group keys where a metric needs them (MultiRC question, AX-g pair).
    """

    ids: List[Any]
    predictions: List[Any]
    labels: Optional[List[Any]]
    groups: Optional[List[Hashable]]


def _check_scores(spec: TaskSpec, examples: Sequence[Example], scores: Any) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if spec.is_regression and scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    expected = (len(examples),) if spec.is_regression else (len(examples), spec.num_classes)
    if scores.shape != expected:
        raise ValueError(f'{spec.name}: scores should have shape {expected}, '
                         f'got {scores.shape}')
    return scores


def aggregate(task: Any, examples: Sequence[Example], scores: Any) -> TaskPredictions:
    """Map per-example scores back to per-original-question predictions.

    Parameters
    ----------
    task : str or TaskSpec
        The task.
    examples : sequence of Example
        The examples the scores belong to, as read (not balanced).
    scores : array-like, shape (N, num_classes) or (N,) for regression
        Logits or probabilities; only their order matters.

    Returns
    -------
    TaskPredictions
        ``pair``/``wsc``/``multirc``: one prediction per example, the argmax class (MultiRC: the
        answer option's 0/1 label). ``copa``/``race``/``record``: one prediction per group, the
        candidate whose positive-class margin ``scores[:, 1] - scores[:, 0]`` is largest (ties
        go to the first candidate): COPA's choice index, RACE's option letter, ReCoRD's entity.
    """
    spec = get_task(task)
    scores = _check_scores(spec, examples, scores)
    if spec.casting in _PER_EXAMPLE:
        predictions = (scores.tolist() if spec.is_regression
                       else [int(i) for i in np.argmax(scores, axis=1)])
        labels = [ex.label for ex in examples]
        groups = [ex.group for ex in examples]
        return TaskPredictions(
            ids=[ex.idx for ex in examples], predictions=predictions,
            labels=None if any(label is None for label in labels) else labels,
            groups=None if all(group is None for group in groups) else groups)
    margin = scores[:, 1] - scores[:, 0]
    best: Dict[Hashable, int] = {}  # group -> index of its best example, in order of appearance
    for i, ex in enumerate(examples):
        if ex.group not in best or margin[i] > margin[best[ex.group]]:
            best[ex.group] = i
    chosen = [examples[i] for i in best.values()]
    golds = [ex.gold for ex in chosen]
    return TaskPredictions(ids=[ex.idx for ex in chosen], predictions=[ex.choice for ex in chosen],
                           labels=None if any(g is None for g in golds) else golds, groups=None)


def balance_labels(examples: Sequence[Example], seed: int = 0) -> List[Example]:
    """Randomly discard examples of the larger classes until all classes are equally frequent.

    For the binary castings (MultiRC, ReCoRD, RACE) this discards negatives, as the Bort paper
    did for Agora. Meant for training data only: evaluation needs every candidate.

    Parameters
    ----------
    examples : sequence of Example
        Labelled classification examples.
    seed : int
        Seed of the random choice; the same seed keeps the same examples.

    Returns
    -------
    list of Example
        The kept examples, in their original order.
    """
    by_class: Dict[Any, List[int]] = {}
    for i, ex in enumerate(examples):
        if ex.label is None or isinstance(ex.label, float):
            raise ValueError('balance_labels needs class-labelled examples, '
                             f'got label {ex.label!r} on {ex.guid}')
        by_class.setdefault(ex.label, []).append(i)
    if not by_class:
        return []
    size = min(len(members) for members in by_class.values())
    rng = np.random.default_rng(seed)
    kept: List[int] = []
    for label in sorted(by_class):
        kept.extend(rng.choice(by_class[label], size=size, replace=False).tolist())
    logger.info('balanced %d examples to %d (%d per class)', len(examples), len(kept), size)
    return [examples[i] for i in sorted(kept)]
