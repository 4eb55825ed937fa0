"""Stages of a long experiment, each cached in its own folder: a rerun skips the finished ones.

A stage is a function that writes into its folder and returns a JSON-able dict of figures.
:func:`run_stage` runs it once: on success the figures go into ``<folder>/done.json`` (written
atomically) together with the stage's wall time and the machine's load average at its start and
end; a later call finds ``done.json`` and returns the stored figures without running anything.
A stage killed midway (``kill -9``) has no ``done.json`` and runs again on the next call; the
library's own resume (search candidates, pretraining checkpoints, fine-tuning epochs, Agora's
state) makes that rerun continue rather than restart. The stage's ``seconds`` then add the
killed attempt's time, estimated from the newest file it wrote (``attempt.json`` holds its
start).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional

from ..checkpoint import write_json_atomic

__all__ = ['DONE_FILE', 'ATTEMPT_FILE', 'run_stage', 'stage_done', 'read_done', 'StageLog']

log = logging.getLogger(__name__)

DONE_FILE = 'done.json'
#: Written when a stage starts: lets a rerun count the time of an attempt that was killed.
ATTEMPT_FILE = 'attempt.json'


def _load() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every platform has it
        return []


def _earlier_attempts(folder: str) -> float:
    """Seconds spent in this stage by earlier, unfinished attempts (killed sessions).

    An attempt records its start in ``attempt.json``; the time it ended is not recorded (it
    was killed), so it is estimated by the newest file it wrote in the folder.
    """
    path = os.path.join(folder, ATTEMPT_FILE)
    if not os.path.isfile(path):
        return 0.0
    try:
        with open(path, encoding='utf-8') as f:
            attempt = json.load(f)
    except (OSError, ValueError):
        return 0.0
    newest = attempt['start']
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.path.getmtime(os.path.join(root, name)))
            except OSError:  # removed while walking
                pass
    return round(attempt.get('earlier_seconds', 0.0) + max(0.0, newest - attempt['start']), 2)


def stage_done(folder: str) -> bool:
    """Whether the stage in ``folder`` has finished (its ``done.json`` exists)."""
    return os.path.isfile(os.path.join(folder, DONE_FILE))


def read_done(folder: str) -> Dict[str, Any]:
    """The record of a finished stage: ``figures``, ``seconds``, ``load_start``, ``load_end``."""
    with open(os.path.join(folder, DONE_FILE), encoding='utf-8') as f:
        return json.load(f)


class StageLog:
    """The records of the stages run or found finished in one experiment, in order."""

    def __init__(self):
        self.records: Dict[str, Dict[str, Any]] = {}

    def add(self, name: str, record: Dict[str, Any]) -> None:
        self.records[name] = record

    def figures(self, name: str) -> Dict[str, Any]:
        return self.records[name]['figures']


def run_stage(name: str, folder: str, fn: Callable[[str], Dict[str, Any]],
              stages: Optional[StageLog] = None,
              clock: Callable[[], float] = time.time) -> Dict[str, Any]:
    """Run ``fn(folder)`` unless the stage already finished; its figures either way.

    Parameters
    ----------
    name : str
        The stage's name (logged, and the key in ``stages``).
    folder : str
        The stage's folder (created); ``done.json`` is written there last.
    fn : callable
        ``fn(folder) -> dict`` of JSON-able figures. An exception propagates and leaves no
        ``done.json``, so the stage runs again next time.
    stages : StageLog, optional
        Collects the stage's record (``figures``, ``seconds``, loads, ``cached``).
    clock : callable
        Wall clock (tests pass a fake one).

    Returns
    -------
    dict
        The figures ``fn`` returned (now or in an earlier run).
    """
    os.makedirs(folder, exist_ok=True)
    if stage_done(folder):
        record = dict(read_done(folder), cached=True)
        log.info('stage %s: done earlier (%.0f s), skipped', name, record.get('seconds', 0.0))
    else:
        log.info('stage %s: starting in %s', name, folder)
        earlier = _earlier_attempts(folder)
        load_start, start = _load(), clock()
        attempt = {'start': time.time(), 'earlier_seconds': earlier}
        write_json_atomic(os.path.join(folder, ATTEMPT_FILE), attempt)
        figures = fn(folder)
        seconds = round(clock() - start, 2)
        record = {'name': name, 'figures': figures, 'seconds': round(seconds + earlier, 2),
                  'seconds_this_session': seconds, 'seconds_earlier_attempts': earlier,
                  'load_start': load_start, 'load_end': _load(),
                  'finished': time.strftime('%Y-%m-%d %H:%M:%S')}
        write_json_atomic(os.path.join(folder, DONE_FILE), record)
        log.info('stage %s: done in %.0f s', name, record['seconds'])
        record['cached'] = False
    if stages is not None:
        stages.add(name, record)
    return record['figures']
