"""Read task files in their official layouts into :class:`~bort.finetune.tasks.Example` lists.

One reader per file format, each driven by the task's :class:`~bort.finetune.tasks.TaskSpec`:

* GLUE TSV: tab-separated, no quoting (GLUE's files contain unbalanced quotes); columns are
  taken from the split's :class:`~bort.finetune.tasks.TsvColumns` and every row must have the header's
  column count.
* SuperGLUE JSONL: one JSON object a line, turned into examples by :mod:`bort.finetune.castings`;
  files whose records come in pairs (AX-g, ``JsonFields.pairs``) are checked pair by pair.
* RACE: one JSON object per ``*.txt`` article file, read in natural file-name order.

Files are read as UTF-8 (a leading byte-order mark is dropped); blank lines are skipped.
Anything else that does not fit raises :class:`~bort.errors.DataFormatError` naming the file and
line. Nothing is downloaded: a missing file raises :class:`MissingTaskFileError` (a
:class:`FileNotFoundError` and a :class:`~bort.errors.UserError`) with the path the official
layout expects and the release it comes from.
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import logging
import os
import re
from typing import Any, Dict, Iterator, List, Tuple, Union

from .castings import GuidFactory, Source, balance_labels, cast_json_record, cast_race_article
from ..errors import DataFormatError, UserError
from .tasks import Example, JsonFields, TaskSpec, TsvColumns, get_task

__all__ = ['read_examples', 'read_tsv_rows', 'read_jsonl', 'read_race_articles', 'label_counts',
           'MissingTaskFileError']

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


class MissingTaskFileError(UserError, FileNotFoundError):
    """A task file is not where its official layout puts it; the message names the path."""


def read_tsv_rows(path: PathLike, columns: TsvColumns,
                  skip_malformed: bool = False) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line number, fields)`` for the data rows of a GLUE TSV file.

    Parameters
    ----------
    path : path-like
        The file.
    columns : TsvColumns
        Whether there is a header and how many columns a row has.
    skip_malformed : bool
        Log and skip rows with the wrong column count instead of raising.

    Raises
    ------
    DataFormatError
        A row whose column count differs from the header's (or ``columns.num_columns``).
    """
    path = str(path)
    expected = columns.num_columns
    skipped = 0
    # newline='\n': a stray carriage return inside a field must not end the row.
    with open(path, encoding='utf-8-sig', newline='\n') as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip('\r\n')
            if columns.header and line_no == 1:
                expected = expected or len(line.split('\t'))
                continue
            if not line.strip():
                continue
            fields = line.split('\t')
            if expected is not None and len(fields) != expected:
                reason = f'expected {expected} tab-separated columns, got {len(fields)}'
                if not skip_malformed:
                    raise DataFormatError(reason, path, line_no)
                skipped += 1
                logger.debug('skipping %s:%d: %s', path, line_no, reason)
                continue
            yield line_no, fields
    if skipped:
        logger.warning('skipped %d malformed rows in %s', skipped, path)


def read_jsonl(path: PathLike) -> Iterator[Tuple[int, Any]]:
    """Yield ``(line number, parsed JSON)`` for each non-blank line of a JSONL file.

    Raises
    ------
    DataFormatError
        A line that is not valid JSON.
    """
    path = str(path)
    with open(path, encoding='utf-8-sig') as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f'bad JSON: {err.msg} (column {err.colno})', path,
                                      line_no) from None


def _natural_key(path: str) -> List[Union[int, str]]:
    # high2.txt before high10.txt
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path)]


def read_race_articles(data_dir: PathLike, pattern: str) -> Iterator[Tuple[str, Any]]:
    """Yield ``(path, parsed JSON)`` for each RACE article matching ``data_dir/pattern``.

    Raises
    ------
    MissingTaskFileError
        If no file matches.
    DataFormatError
        A file that is not one valid JSON object.
    """
    full = os.path.join(str(data_dir), pattern)
    paths = sorted(glob.glob(full), key=_natural_key)
    if not paths:
        raise MissingTaskFileError(f'no RACE articles match {full}')
    for path in paths:
        with open(path, encoding='utf-8-sig') as f:
            text = f.read()
        try:
            yield path, json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFormatError(f'bad JSON: {err.msg}', path, err.lineno) from None


def _parse_index(value: str) -> Union[int, str]:
    value = value.strip()
    return int(value) if value.isdigit() else value


def _glue_examples(spec: TaskSpec, path: str, columns: TsvColumns,
                   guid: GuidFactory) -> Iterator[Example]:
    rows = read_tsv_rows(path, columns, skip_malformed=spec.skip_malformed)
    for row_number, (line_no, fields) in enumerate(rows):
        label: Union[int, float, None] = None
        if columns.label is not None:
            value = fields[columns.label].strip()
            if spec.is_regression:
                try:
                    label = float(value)
                except ValueError:
                    raise DataFormatError(f'label {value!r} is not a number', path,
                                          line_no) from None
            else:
                try:
                    label = spec.label_index(value)
                except KeyError:
                    raise DataFormatError(f'unknown label {value!r} for {spec.name} '
                                          f'(expected one of {spec.labels})', path,
                                          line_no) from None
        text_b = None if columns.text_b is None else fields[columns.text_b].strip()
        idx = row_number if columns.index is None else _parse_index(fields[columns.index])
        yield Example(guid(), fields[columns.text_a].strip(), text_b, label, idx=idx)


def _path(spec: TaskSpec, data_dir: PathLike, split: str) -> str:
    spec.check_split(split)
    return os.path.join(str(data_dir), spec.files[split])


def _missing(spec: TaskSpec, split: str, path: str) -> MissingTaskFileError:
    source = f'; expected from {spec.source}' if spec.source else ''
    return MissingTaskFileError(f'{spec.name} {split} split: no file {path} (official layout'
                                f'{source}; nothing is downloaded)')


def _json_examples(spec: TaskSpec, path: str, fields: JsonFields,
                   guid: GuidFactory) -> List[Example]:
    examples: List[Example] = []
    first: Any = None  # (idx, shared value, line) of the open pair's first row
    number = -1
    for number, (line_no, record) in enumerate(read_jsonl(path)):
        src = Source(path, line_no)
        cast = cast_json_record(spec, record, fields, src, guid)
        if fields.pairs:
            shared = record.get(fields.pairs)
            if number % 2 == 0:
                first = (record.get(fields.index), shared, line_no)
            elif shared != first[1]:
                raise src.error(f'{spec.name} rows come in consecutive pairs with the same '
                                f'{fields.pairs!r}; this row\'s differs from line {first[2]}\'s')
            cast = [dataclasses.replace(ex, group=first[0]) for ex in cast]
        examples.extend(cast)
    if fields.pairs and number % 2 == 0:  # an odd number of rows
        raise DataFormatError(f'{spec.name} rows come in consecutive pairs; the last row has '
                              'no partner', path, first[2])
    return examples


def read_examples(task: Union[str, TaskSpec], data_dir: PathLike, split: str, *,
                  balance: bool = False, seed: int = 0) -> List[Example]:
    """Read one split of a task from ``data_dir`` (official layout, see :mod:`bort.finetune.tasks`).

    Parameters
    ----------
    task : str or TaskSpec
        Task name (case-insensitive) or spec.
    data_dir : path-like
        Folder holding the benchmark's task folders (``CoLA/``, ``BoolQ/``, ``RACE/``, ...).
    split : {'train', 'dev', 'test'}
        Which split.
    balance : bool
        Training only: randomly discard examples of the larger classes (the negatives of the
        MultiRC/ReCoRD/RACE castings) so that every class is equally frequent, as the Bort
        paper did for Agora. Refused for other splits, whose metrics need every candidate.
    seed : int
        Seed of the balancing.

    Returns
    -------
    list of Example
        In file order; cast tasks give several examples per record (see :mod:`bort.finetune.castings`).

    Raises
    ------
    MissingTaskFileError
        The split's file is not where the official layout puts it (a FileNotFoundError).
    DataFormatError
        A malformed row (names file and line).
    UnknownSplitError
        The task has no such split (a ValueError).
    ValueError
        ``balance`` on a split other than ``train``.
    """
    spec = get_task(task)
    spec.check_split(split)
    if balance and split != 'train':
        raise ValueError(f'balance=True is for training data only, not the {split!r} split')
    path = _path(spec, data_dir, split)
    counter = itertools.count()

    def guid() -> str:
        return f'{spec.name}-{split}-{next(counter)}'

    if spec.benchmark == 'RACE':
        if not glob.glob(path):
            raise _missing(spec, split, path)
        examples = [ex for art_path, article in read_race_articles(data_dir, spec.files[split])
                    for ex in cast_race_article(spec, article, Source(art_path, 1), guid)]
    else:
        if not os.path.isfile(path):
            raise _missing(spec, split, path)
        layout = spec.layouts[split]
        if isinstance(layout, TsvColumns):
            examples = list(_glue_examples(spec, path, layout, guid))
        elif isinstance(layout, JsonFields):
            examples = _json_examples(spec, path, layout, guid)
        else:  # pragma: no cover - the task table only holds the two layouts
            raise TypeError(f'{spec.name}: unsupported layout {layout!r}')
    logger.info('read %d %s %s examples from %s', len(examples), spec.name, split, path)
    if balance:
        examples = balance_labels(examples, seed=seed)
    return examples


def label_counts(examples: List[Example]) -> Dict[Any, int]:
    """How many examples carry each label (None for unlabelled), e.g. to log class balance."""
    counts: Dict[Any, int] = {}
    for ex in examples:
        counts[ex.label] = counts.get(ex.label, 0) + 1
    return counts
