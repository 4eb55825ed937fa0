"""Write test-set predictions in the leaderboards' submission formats.

The files are named and laid out as the GLUE and SuperGLUE servers expect them in the zip a
user uploads (one file per task at the zip's top level):

* GLUE (``CoLA.tsv``, ``MNLI-m.tsv``, ``AX.tsv``, ...): a TSV with the header
  ``index<TAB>prediction`` and one row per test example, the label spelt as in GLUE's files
  (``entailment``, ``not_entailment``, ``0``/``1``); STS-B scores are clipped to [0, 5] and
  written at full precision (they read back as the same floats).
* SuperGLUE (``BoolQ.jsonl``, ..., ``AX-b.jsonl``, ``AX-g.jsonl``): one ``{"idx": .., "label":
  ..}`` object a line, labels spelt as the server wants (``"true"`` for BoolQ and WiC, ``"True"``
  for WSC, the choice index for COPA, the entity text for ReCoRD). MultiRC nests answers in
  questions in paragraphs: ``{"idx": p, "passage": {"questions": [{"idx": q, "answers":
  [{"idx": a, "label": 0 or 1}]}]}}``.
* RACE (no official server): ``RACE-H.jsonl``/``RACE-M.jsonl``, one ``{"id": article id,
  "answers": [letters in question order]}`` object per article, mirroring the input files.

Predictions are what :func:`bort.finetune.castings.aggregate` returns (``ids`` and
``predictions``). An existing file is never replaced unless ``overwrite=True`` (no command
passes it: ``run_finetune.py --predict`` refuses an output folder that already holds the
task's submission, before any training); files are written atomically.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

from ..errors import UserError
from .tasks import TaskSpec, get_task

__all__ = ['submission_path', 'format_submission', 'write_submission', 'check_new_submission',
           'SubmissionExistsError']

logger = logging.getLogger(__name__)

PathLike = Union[str, 'os.PathLike[str]']


class SubmissionExistsError(UserError, FileExistsError):
    """The submission file is already there; it is not replaced."""


def _plain(value: Any) -> Any:
    # numpy scalars (and tuples of them) are not JSON-serialisable; make them Python values.
    if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _glue_tsv(spec: TaskSpec, ids: Sequence[Any], predictions: Sequence[Any]) -> List[str]:
    lines = ['index\tprediction']
    for idx, pred in zip(ids, predictions):
        if spec.is_regression:
            # Full precision: rounding to 3 decimals changed Pearson on narrow score ranges.
            # Three decimals where they are exact (the official files' layout, '3.000'),
            # otherwise the shortest text that reads back as the same float.
            score = min(max(float(pred), 0.0), 5.0)
            value = f'{score:.3f}' if float(f'{score:.3f}') == score else repr(score)
        else:
            value = str(spec.submission_label(pred))
        lines.append(f'{_plain(idx)}\t{value}')
    return lines


def _superglue_jsonl(spec: TaskSpec, ids: Sequence[Any],
                     predictions: Sequence[Any]) -> List[str]:
    lines = []
    for idx, pred in zip(ids, predictions):
        # COPA's prediction is the chosen alternative, not a class of the binary casting.
        label = int(pred) if spec.casting == 'copa' else spec.submission_label(pred)
        lines.append(json.dumps({'idx': _plain(idx), 'label': _plain(label)}))
    return lines


def _multirc_jsonl(spec: TaskSpec, ids: Sequence[Any], predictions: Sequence[Any]) -> List[str]:
    # paragraph -> question -> answers, in order of first appearance
    nested: Dict[Any, Dict[Any, List[Dict[str, Any]]]] = {}
    for idx, pred in zip(ids, predictions):
        p, q, a = _plain(idx)
        answer = {'idx': a, 'label': _plain(spec.submission_label(pred))}
        nested.setdefault(p, {}).setdefault(q, []).append(answer)
    return [json.dumps({'idx': p, 'passage': {'questions': [
        {'idx': q, 'answers': answers} for q, answers in questions.items()]}})
        for p, questions in nested.items()]


def _record_jsonl(spec: TaskSpec, ids: Sequence[Any], predictions: Sequence[Any]) -> List[str]:
    return [json.dumps({'idx': _plain(idx), 'label': str(pred)})
            for idx, pred in zip(ids, predictions)]


def _race_jsonl(spec: TaskSpec, ids: Sequence[Any], predictions: Sequence[Any]) -> List[str]:
    articles: Dict[str, Dict[int, str]] = {}
    for idx, pred in zip(ids, predictions):
        article_id, question = _plain(idx)
        articles.setdefault(article_id, {})[question] = str(pred)
    return [json.dumps({'id': article_id, 'answers': [answers[q] for q in sorted(answers)]})
            for article_id, answers in articles.items()]


_FORMATTERS: Dict[str, Callable[[TaskSpec, Sequence[Any], Sequence[Any]], List[str]]] = {
    'glue_tsv': _glue_tsv, 'superglue_jsonl': _superglue_jsonl, 'multirc_jsonl': _multirc_jsonl,
    'record_jsonl': _record_jsonl, 'race_jsonl': _race_jsonl}


def submission_path(task: Union[str, TaskSpec], output_dir: PathLike) -> Path:
    """Where the task's submission file goes: ``output_dir / spec.submission_file``."""
    return Path(output_dir) / get_task(task).submission_file


def check_new_submission(task: Union[str, TaskSpec], output_dir: PathLike) -> Path:
    """The task's submission path, after checking that no file is there yet.

    Raises
    ------
    SubmissionExistsError
        The file exists (a :class:`FileExistsError`).
    """
    path = submission_path(task, output_dir)
    if path.exists():
        raise SubmissionExistsError(f'{path} exists and is not replaced; move it away or '
                                    'choose another --output_dir')
    return path


def format_submission(task: Union[str, TaskSpec], ids: Sequence[Any],
                      predictions: Sequence[Any]) -> str:
    """The submission file's text (newline-terminated lines).

    Parameters
    ----------
    task : str or TaskSpec
        The task.
    ids : sequence
        Original ids, one per prediction (``TaskPredictions.ids``).
    predictions : sequence
        ``TaskPredictions.predictions``: class indices, STS-B floats, COPA choices, ReCoRD
        entity texts or RACE letters.

    Raises
    ------
    ValueError
        Mismatched lengths, no predictions, or a class index the task does not have.
    """
    spec = get_task(task)
    ids, predictions = list(ids), list(predictions)
    if len(ids) != len(predictions):
        raise ValueError(f'{spec.name}: {len(ids)} ids but {len(predictions)} predictions')
    if not ids:
        raise ValueError(f'{spec.name}: no predictions to write')
    return '\n'.join(_FORMATTERS[spec.submission_format](spec, ids, predictions)) + '\n'


def write_submission(task: Union[str, TaskSpec], ids: Sequence[Any], predictions: Sequence[Any],
                     output_dir: PathLike, *, overwrite: bool = False) -> Path:
    """Write the task's leaderboard submission file into ``output_dir``.

    Parameters
    ----------
    task, ids, predictions
        As for :func:`format_submission`.
    output_dir : path-like
        Folder to write into (created if missing).
    overwrite : bool
        Replace an existing file; by default an existing file is an error.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    SubmissionExistsError
        The file exists and ``overwrite`` is False (a :class:`FileExistsError`).
    """
    path = submission_path(task, output_dir) if overwrite else check_new_submission(task,
                                                                                   output_dir)
    text = format_submission(task, ids, predictions)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves half a submission.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8', newline='\n') as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info('wrote %d predictions for %s to %s', len(ids), get_task(task).name, path)
    return path
