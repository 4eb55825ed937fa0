"""Fine-tuning tasks as data: one table of :class:`TaskSpec` for GLUE, SuperGLUE and RACE.

Every task the project fine-tunes on is one row of :data:`TASKS`: where its files live under
``--data_dir`` (the official layouts), which fields form the text pair, its label set, its metrics
and its leaderboard submission file. Readers (:mod:`bort.finetune.readers`), castings
(:mod:`bort.finetune.castings`), metrics (:mod:`bort.finetune.metrics`) and submissions
(:mod:`bort.finetune.submission`) are generic and driven by these specs; nothing branches on a
task's name.

Naming scheme: GLUE tasks keep their leaderboard names (``CoLA``, ``SST-2``, ``MNLI-m``, ...);
SuperGLUE tasks keep theirs except SuperGLUE's RTE, which is ``SuperGLUE-RTE`` so that it cannot
be confused with GLUE's ``RTE`` (its submission file is still ``RTE.jsonl``); RACE is split by
level into ``RACE-H`` (high school) and ``RACE-M`` (middle school). Look-ups ignore case.

Splits are always called ``train``, ``dev`` and ``test``; ``files`` maps them onto the official
file names (SuperGLUE's ``val.jsonl``, MNLI's ``dev_matched.tsv``, ...).

Official releases expected (all relative to ``data_dir``; ``TaskSpec.source`` says the same per
task, and a missing file's error repeats it):

* GLUE, the task zips that GLUE's ``download_glue_data.py`` fetches and unpacks (GLUE 1.0;
  MRPC's train/dev are built by that script from Microsoft's MSR Paraphrase files):
  ``CoLA/train.tsv`` (no header), ``MNLI/dev_matched.tsv``, ... The diagnostic set AX is the
  script's ``diagnostic/diagnostic.tsv`` (GLUE's unlabelled ``AX.tsv``); the project's reading
  adds ``diagnostic/diagnostic-full.tsv`` (the labelled copy linked from GLUE's diagnostics page)
  as AX's ``dev`` split so that its Matthews correlation can be computed locally.
* SuperGLUE v2.0 (the release the leaderboard scores), one zip per task from
  ``dl.fbaipublicfiles.com/glue/superglue/data/v2/``: ``BoolQ/train.jsonl``,
  ``BoolQ/val.jsonl``, ``BoolQ/test.jsonl``, ..., ``AX-b/AX-b.jsonl``, ``AX-g/AX-g.jsonl`` (the
  diagnostics are test-only and labelled). MultiRC files of the earlier release (v1, text
  under ``paragraph`` instead of ``passage``) are read too.
* RACE, ``RACE.tar.gz`` from the RACE authors (CMU): ``RACE/{train,dev,test}/{high,middle}/*.txt``,
  one JSON object per article; all three splits are labelled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Hashable, Mapping, Optional, Tuple, Union

from ..errors import UserError

__all__ = ['Example', 'TsvColumns', 'JsonFields', 'TaskSpec', 'TASKS', 'UnknownTaskError',
           'UnknownSplitError', 'CASTINGS', 'SUBMISSION_FORMATS', 'get_task', 'task_names']

#: How the records of a task become (text_a, text_b) examples; see :mod:`bort.finetune.castings`.
CASTINGS = ('pair', 'copa', 'wsc', 'multirc', 'record', 'race')
#: Submission writers in :mod:`bort.finetune.submission`.
SUBMISSION_FORMATS = ('glue_tsv', 'superglue_jsonl', 'multirc_jsonl', 'record_jsonl',
                      'race_jsonl')


class UnknownTaskError(UserError, KeyError):
    """A task name that is not in :data:`TASKS`; the message lists the known ones."""

    def __str__(self) -> str:
        # KeyError's str() quotes its argument; the message is meant to be read as is.
        return str(self.args[0]) if self.args else ''


class UnknownSplitError(UserError, ValueError):
    """A split a task has no file for (e.g. ``train`` of the test-only diagnostics)."""


@dataclass(frozen=True)
class Example:
    """One model input: a text pair and its label.

    Parameters
    ----------
    guid : str
        Unique id within a read split, ``"{task}-{split}-{n}"``.
    text_a, text_b : str, str or None
        The pair fed to the encoder; ``text_b`` is None for single-sentence tasks.
    label : int, float or None
        Index into ``TaskSpec.labels`` (classification), a float (regression) or None
        (unlabelled test data).
    group : hashable or None
        Ties together the binary sub-examples cast from one original question (COPA premise,
        WSC pronoun, MultiRC question, ReCoRD query, RACE question) or, for AX-g, the two
        examples of a gender pair (the ``idx`` of the pair's first row).
    idx : any
        The original record's id as the submission needs it (GLUE ``index`` column, SuperGLUE
        ``idx``, MultiRC ``(paragraph, question, answer)``, RACE ``(article id, question)``).
    choice : any
        The candidate this example stands for within its group (COPA choice 0/1, RACE option
        letter, MultiRC answer idx, ReCoRD entity text).
    gold : any
        The original question's gold answer for cast tasks (COPA choice, RACE letter, MultiRC
        answer label, ReCoRD tuple of answer texts); None when unlabelled.
    """

    guid: str
    text_a: str
    text_b: Optional[str]
    label: Union[int, float, None]
    group: Optional[Hashable] = None
    idx: Any = None
    choice: Any = None
    gold: Any = None


@dataclass(frozen=True)
class TsvColumns:
    """Where the fields of a GLUE TSV file are (0-based column indices, negative from the end).

    ``index`` is the column holding the row id used in submissions (None: the running row
    number). ``header`` says whether the first line is a header; ``num_columns`` is the number
    of columns every row must have (None: as many as the header has).
    """

    text_a: int
    text_b: Optional[int] = None
    label: Optional[int] = None
    index: Optional[int] = None
    header: bool = True
    num_columns: Optional[int] = None


@dataclass(frozen=True)
class JsonFields:
    """Where the fields of a SuperGLUE JSONL record are.

    ``text_a``/``text_b`` are :meth:`str.format` templates over the record's keys
    (``"{premise}"``). ``label`` is the label key (None: unlabelled split) and ``index`` the id
    key. ``pairs`` names a key for files whose records come in consecutive pairs (records 1-2,
    3-4, ... in file order) that must agree on it: AX-g's two rows of a pair share the
    ``hypothesis`` and differ only in the pronoun's gender in the ``premise``; its ``pair_id``
    is unique per row and does not identify the pair. Paired examples are grouped by the
    ``idx`` of the pair's first row. Cast tasks (COPA, WSC, MultiRC, ReCoRD) only use ``label``
    and ``index``; their structure is fixed by the casting.
    """

    text_a: str = ''
    text_b: Optional[str] = None
    label: Optional[str] = 'label'
    index: str = 'idx'
    pairs: Optional[str] = None


Layout = Union[TsvColumns, JsonFields, None]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the generic code needs to know about one task.

    Parameters
    ----------
    name : str
        Unique task name (the key in :data:`TASKS`).
    benchmark : {'GLUE', 'SuperGLUE', 'RACE'}
        Also selects the file reader.
    files : mapping of str to str
        Split (``train``/``dev``/``test``) to a path relative to ``data_dir``; for RACE a glob.
    layouts : mapping of str to TsvColumns or JsonFields
        Split to field positions (empty for RACE, whose structure is fixed).
    labels : tuple or None
        The classifier's classes as the files spell them (``"entailment"``, ``True``, ``"1"``);
        ``Example.label`` is an index into it. None for regression (STS-B). Cast tasks are binary
        with ``(False, True)`` or MultiRC's ``(0, 1)``.
    metrics : tuple of str
        Metric names understood by :func:`bort.finetune.metrics.compute_metrics`; the first one is the
        primary metric used for early stopping (the leaderboard's first column).
    submission_file : str
        File name the leaderboard expects.
    submission_format : str
        One of :data:`SUBMISSION_FORMATS`.
    casting : str
        One of :data:`CASTINGS`.
    submission_labels : tuple or None
        How each class is spelt in the submission when it differs from ``labels``
        (SuperGLUE wants ``"true"``/``"false"`` for BoolQ and ``"True"``/``"False"`` for WSC).
    model_task : str or None
        For evaluation-only sets (AX, AX-b, AX-g): the task whose fine-tuned model predicts them.
    skip_malformed : bool
        Skip (with a warning) rows with the wrong column count instead of raising. Only QQP,
        some of whose distributed copies contain broken rows.
    source : str
        Where the files come from and which release is expected (shown when one is missing).
    """

    name: str
    benchmark: str
    files: Mapping[str, str]
    layouts: Mapping[str, Layout]
    labels: Optional[Tuple[Any, ...]]
    metrics: Tuple[str, ...]
    submission_file: str
    submission_format: str
    casting: str = 'pair'
    submission_labels: Optional[Tuple[Any, ...]] = None
    model_task: Optional[str] = None
    skip_malformed: bool = False
    source: str = ''

    def __post_init__(self):
        # Read-only views so that a spec cannot be changed through its mappings either.
        object.__setattr__(self, 'files', MappingProxyType(dict(self.files)))
        object.__setattr__(self, 'layouts', MappingProxyType(dict(self.layouts)))
        if self.casting not in CASTINGS:
            raise ValueError(f'{self.name}: unknown casting {self.casting!r}')
        if self.submission_format not in SUBMISSION_FORMATS:
            raise ValueError(f'{self.name}: unknown submission format {self.submission_format!r}')
        if self.submission_labels is not None and (
                self.labels is None or len(self.submission_labels) != len(self.labels)):
            raise ValueError(f'{self.name}: submission_labels must match labels')

    def __hash__(self) -> int:
        # The mappings are unhashable; names are unique, so hash by name.
        return hash(self.name)

    @property
    def is_regression(self) -> bool:
        """True when the task predicts a real number (STS-B)."""
        return self.labels is None

    @property
    def num_classes(self) -> int:
        """Output width of the classifier head (1 for regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def splits(self) -> Tuple[str, ...]:
        """The splits this task has files for."""
        return tuple(self.files)

    def labelled(self, split: str) -> bool:
        """Whether the split's files carry gold labels (RACE's always do)."""
        if split not in self.files:
            return False
        layout = self.layouts.get(split)
        return layout is None or layout.label is not None

    @property
    def eval_split(self) -> str:
        """The labelled split a fine-tuned model is scored on: ``dev``, or for the test-only
        diagnostics AX-b and AX-g their labelled ``test`` file."""
        for split in ('dev', 'test'):
            if self.labelled(split):
                return split
        raise UnknownSplitError(f'{self.name} has no labelled split to score')

    def check_split(self, split: str) -> None:
        """Raise :class:`UnknownSplitError` unless the task has a file for ``split``."""
        if split not in self.files:
            raise UnknownSplitError(f'{self.name} has no {split!r} split '
                                    f'(it has {", ".join(self.files)})')

    def label_index(self, value: Any) -> int:
        """Index of a label value as read from a file; type-strict so ``1`` is not ``True``.

        Raises
        ------
        KeyError
            If ``value`` is not one of ``labels``.
        """
        for i, known in enumerate(self.labels or ()):
            if type(known) is type(value) and known == value:
                return i
        raise KeyError(f'{value!r} is not a label of {self.name} (expected one of {self.labels})')

    def submission_label(self, index: int) -> Any:
        """How class ``index`` is written in the submission file."""
        spelt = self.submission_labels if self.submission_labels is not None else self.labels
        if spelt is None or not 0 <= int(index) < len(spelt):
            raise ValueError(f'{self.name}: no class with index {index!r}')
        return spelt[int(index)]


# --------------------------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------------------------
_NLI3 = ('entailment', 'neutral', 'contradiction')
_NLI2 = ('not_entailment', 'entailment')
_BINARY = ('0', '1')
_BOOL = (False, True)


def _glue(name: str, folder: str, labelled: TsvColumns, test: TsvColumns,
          labels: Optional[Tuple[str, ...]], metrics: Tuple[str, ...], *,
          dev: str = 'dev.tsv', test_file: str = 'test.tsv', **extra: Any) -> TaskSpec:
    files = {'train': f'{folder}/train.tsv', 'dev': f'{folder}/{dev}',
             'test': f'{folder}/{test_file}'}
    layouts = {'train': labelled, 'dev': labelled, 'test': test}
    extra.setdefault('source', f"GLUE 1.0: {folder}/ as download_glue_data.py unpacks it")
    return TaskSpec(name=name, benchmark='GLUE', files=files, layouts=layouts, labels=labels,
                    metrics=metrics, submission_file=f'{name}.tsv',
                    submission_format='glue_tsv', **extra)


def _superglue_source(folder: str) -> str:
    return (f'SuperGLUE v2.0: {folder}.zip from dl.fbaipublicfiles.com/glue/superglue/data/v2/, '
            f'unpacked into {folder}/')


def _superglue(name: str, folder: str, fields: JsonFields, labels: Tuple[Any, ...],
               metrics: Tuple[str, ...], *, splits: Tuple[str, ...] = ('train', 'dev', 'test'),
               submission_format: str = 'superglue_jsonl', **extra: Any) -> TaskSpec:
    official = {'train': 'train', 'dev': 'val', 'test': 'test'}
    files = {split: f'{folder}/{official[split]}.jsonl' for split in splits}
    # SuperGLUE's test files carry no labels.
    layouts = {split: (dataclasses.replace(fields, label=None) if split == 'test' else fields)
               for split in splits}
    return TaskSpec(name=name, benchmark='SuperGLUE', files=files, layouts=layouts,
                    labels=labels, metrics=metrics, submission_file=f'{folder}.jsonl',
                    submission_format=submission_format, source=_superglue_source(folder),
                    **extra)


def _superglue_diagnostic(name: str, fields: JsonFields, metrics: Tuple[str, ...]) -> TaskSpec:
    # The diagnostics are test-only and, unlike the other test files, labelled.
    return TaskSpec(name=name, benchmark='SuperGLUE', files={'test': f'{name}/{name}.jsonl'},
                    layouts={'test': fields}, labels=_NLI2, metrics=metrics,
                    submission_file=f'{name}.jsonl', submission_format='superglue_jsonl',
                    model_task='SuperGLUE-RTE', source=_superglue_source(name))


def _race(name: str, level: str) -> TaskSpec:
    files = {split: f'RACE/{split}/{level}/*.txt' for split in ('train', 'dev', 'test')}
    return TaskSpec(name=name, benchmark='RACE', files=files, layouts={}, labels=_BOOL,
                    metrics=('accuracy',), submission_file=f'{name}.jsonl',
                    submission_format='race_jsonl', casting='race',
                    source='RACE: RACE.tar.gz from the RACE authors (CMU), unpacked into RACE/')


def _mnli(name: str, suffix: str) -> TaskSpec:
    # train.tsv has 12 columns and dev_*.tsv 16 (five annotator labels): the gold label is last.
    return _glue(name, 'MNLI', TsvColumns(text_a=8, text_b=9, label=-1, index=0),
                 TsvColumns(text_a=8, text_b=9, index=0), _NLI3, ('accuracy',),
                 dev=f'dev_{suffix}.tsv', test_file=f'test_{suffix}.tsv')


_SPECS = (
    # GLUE. CoLA's train/dev files have no header: source, label, original label, sentence.
    _glue('CoLA', 'CoLA', TsvColumns(text_a=3, label=1, header=False, num_columns=4),
          TsvColumns(text_a=1, index=0), _BINARY, ('mcc',)),
    _glue('SST-2', 'SST-2', TsvColumns(text_a=0, label=1), TsvColumns(text_a=1, index=0),
          _BINARY, ('accuracy',)),
    # MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String (test: index instead of Quality).
    _glue('MRPC', 'MRPC', TsvColumns(text_a=3, text_b=4, label=0),
          TsvColumns(text_a=3, text_b=4, index=0), _BINARY, ('f1', 'accuracy')),
    # STS-B: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score.
    _glue('STS-B', 'STS-B', TsvColumns(text_a=7, text_b=8, label=9, index=0),
          TsvColumns(text_a=7, text_b=8, index=0), None, ('pearson', 'spearman')),
    # QQP: id, qid1, qid2, question1, question2, is_duplicate (test: id, question1, question2).
    _glue('QQP', 'QQP', TsvColumns(text_a=3, text_b=4, label=5, index=0),
          TsvColumns(text_a=1, text_b=2, index=0), _BINARY, ('f1', 'accuracy'),
          skip_malformed=True),
    _mnli('MNLI-m', 'matched'),
    _mnli('MNLI-mm', 'mismatched'),
    _glue('QNLI', 'QNLI', TsvColumns(text_a=1, text_b=2, label=3, index=0),
          TsvColumns(text_a=1, text_b=2, index=0), _NLI2, ('accuracy',)),
    _glue('RTE', 'RTE', TsvColumns(text_a=1, text_b=2, label=3, index=0),
          TsvColumns(text_a=1, text_b=2, index=0), _NLI2, ('accuracy',)),
    _glue('WNLI', 'WNLI', TsvColumns(text_a=1, text_b=2, label=3, index=0),
          TsvColumns(text_a=1, text_b=2, index=0), _BINARY, ('accuracy',)),
    # AX: predicted by the MNLI model; diagnostic-full.tsv columns: Lexical Semantics,
    # Predicate-Argument Structure, Logic, Knowledge, Domain, Premise, Hypothesis, Label.
    TaskSpec(name='AX', benchmark='GLUE',
             files={'dev': 'diagnostic/diagnostic-full.tsv', 'test': 'diagnostic/diagnostic.tsv'},
             layouts={'dev': TsvColumns(text_a=5, text_b=6, label=7),
                      'test': TsvColumns(text_a=1, text_b=2, index=0)},
             labels=_NLI3, metrics=('mcc',), submission_file='AX.tsv',
             submission_format='glue_tsv', model_task='MNLI-m',
             source='GLUE 1.0: diagnostic/diagnostic.tsv as download_glue_data.py saves AX.tsv; '
                    "diagnostic/diagnostic-full.tsv, the labelled copy from GLUE's "
                    'diagnostics page'),
    # SuperGLUE.
    _superglue('BoolQ', 'BoolQ', JsonFields('{question}', '{passage}'), _BOOL, ('accuracy',),
               submission_labels=('false', 'true')),
    _superglue('CB', 'CB', JsonFields('{premise}', '{hypothesis}'),
               ('entailment', 'contradiction', 'neutral'), ('macro_f1', 'accuracy')),
    _superglue('COPA', 'COPA', JsonFields(), _BOOL, ('accuracy',), casting='copa'),
    _superglue('MultiRC', 'MultiRC', JsonFields(), (0, 1), ('f1a', 'em'), casting='multirc',
               submission_format='multirc_jsonl'),
    _superglue('ReCoRD', 'ReCoRD', JsonFields(), _BOOL, ('answer_f1', 'answer_em'),
               casting='record', submission_format='record_jsonl'),
    _superglue('SuperGLUE-RTE', 'RTE', JsonFields('{premise}', '{hypothesis}'), _NLI2,
               ('accuracy',)),
    # The project's reading for WiC: the target word is prepended to the first sentence.
    _superglue('WiC', 'WiC', JsonFields('{word}: {sentence1}', '{sentence2}'), _BOOL,
               ('accuracy',), submission_labels=('false', 'true')),
    _superglue('WSC', 'WSC', JsonFields(), _BOOL, ('accuracy',), casting='wsc',
               submission_labels=('False', 'True')),
    _superglue_diagnostic('AX-b', JsonFields('{sentence1}', '{sentence2}'), ('mcc',)),
    # AX-g: rows 2k and 2k+1 are a pair (same hypothesis, premises differing in the pronoun).
    _superglue_diagnostic('AX-g', JsonFields('{premise}', '{hypothesis}', pairs='hypothesis'),
                          ('gender_parity', 'accuracy')),
    # RACE.
    _race('RACE-H', 'high'),
    _race('RACE-M', 'middle'),
)

#: Task name to spec, in the order GLUE, SuperGLUE, RACE.
TASKS: Mapping[str, TaskSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
_BY_LOWER = {name.lower(): spec for name, spec in TASKS.items()}


def task_names(benchmark: Optional[str] = None) -> Tuple[str, ...]:
    """Names of all tasks, or of one benchmark's (``'GLUE'``, ``'SuperGLUE'``, ``'RACE'``)."""
    return tuple(name for name, spec in TASKS.items()
                 if benchmark is None or spec.benchmark.lower() == benchmark.lower())


def get_task(task: Union[str, TaskSpec]) -> TaskSpec:
    """Look a task up by name (case-insensitive); a :class:`TaskSpec` is returned unchanged.

    Raises
    ------
    UnknownTaskError
        For an unknown name (a :class:`KeyError`); the message lists the known ones.
    """
    if isinstance(task, TaskSpec):
        return task
    try:
        return _BY_LOWER[task.lower()]
    except KeyError:
        raise UnknownTaskError(f'unknown task {task!r} (--task); known tasks: '
                               f'{", ".join(TASKS)}') from None
