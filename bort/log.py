"""Logging set-up (rank 0 only) and the ``metrics.jsonl`` writer shared by every run."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional

from tqdm import tqdm

from .cli import LOG_DATEFMT, LOG_FORMAT
from .distributed import Comm
from .errors import DataFormatError

__all__ = ['setup_logging', 'MetricsLog', 'progress']


def setup_logging(comm: Optional[Comm] = None, level: int = logging.INFO,
                  log_file: Optional[str] = None) -> None:
    """Send the library's log records to stderr (and ``log_file``) on rank 0; silence others."""
    comm = comm or Comm()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if not comm.is_root:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.WARNING)
        return
    fmt = logging.Formatter(LOG_FORMAT, LOG_DATEFMT)
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)


def progress(iterable=None, comm: Optional[Comm] = None, **kwargs):
    """A tqdm bar shown on rank 0 only.

    When stderr is not a terminal (a log file, CI) the bar redraws at most once a minute
    instead of flooding the file with carriage-return updates.
    """
    comm = comm or Comm()
    disable = kwargs.pop('disable', False) or not comm.is_root  # pop first: always consumed
    if not sys.stderr.isatty():
        kwargs.setdefault('mininterval', 60.0)
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


class MetricsLog:
    """Append one JSON object per line to ``metrics.jsonl`` (rank 0 only).

    Each record gets a wall-clock ``time``; reading the file back gives the run's history, also
    after a resume (records are appended, never rewritten). An existing file is read when the
    log is opened, so that a damaged one (a line cut short by a crash or a full disk) is named
    before the run appends to it, not when its curves are plotted hours later.

    Raises
    ------
    DataFormatError
        From the constructor and :meth:`read`: a line of the file is not a JSON object.
    """

    def __init__(self, path: str, comm: Optional[Comm] = None):
        self.path = path
        self.comm = comm or Comm()
        if self.comm.is_root:
            self.read()

    def write(self, record: Dict) -> None:
        if not self.comm.is_root:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, 'a') as f:
            f.write(json.dumps(dict(record, time=round(time.time(), 3)), default=float) + '\n')

    def read(self) -> List[Dict]:
        """Every record of the file, in order ([] when there is no file yet)."""
        if not os.path.exists(self.path):
            return []
        records, number = [], 0
        try:
            with open(self.path, encoding='utf-8') as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        records.append(json.loads(line))
                        if not isinstance(records[-1], dict):
                            raise ValueError('not an object')
        except ValueError:  # JSON and UTF-8 errors alike
            raise DataFormatError('not a JSON record (cut short by a crash or a full disk, or '
                                  'edited): repair or delete that line, then run again',
                                  self.path, max(number, 1)) from None
        return records
