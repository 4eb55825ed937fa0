"""Logging set-up (rank 0 only) and the ``metrics.jsonl`` writer shared by every run, with
TensorBoard event files beside it (``tensorboard --logdir runs/`` shows the curves live)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from tqdm import tqdm

from .cli import LOG_DATEFMT, LOG_FORMAT
from .distributed import Comm
from .errors import DataFormatError

__all__ = ['setup_logging', 'MetricsLog', 'progress']

log = logging.getLogger(__name__)


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


#: Record fields that give a record's TensorBoard step, in order of preference.
_STEP_KEYS = ('step', 'iteration', 'epoch')


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _numbers(record: Dict, skip=(), prefix: str = ''):
    """``(tag, float)`` for every finite number in ``record``, nested dicts as ``outer/inner``."""
    for key, value in record.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            yield from _numbers(value, prefix=f'{prefix}{key}/')
        elif _is_number(value) and np.isfinite(value):
            yield f'{prefix}{key}', float(value)


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports torch when it is installed (to accept its tensors; these logs hold
    floats). That costs seconds, and kills a Horovod worker: Horovod loads its MXNet extension
    ``RTLD_GLOBAL``, which puts ``libmxnet.so`` (built by GCC 4.8, old C++ ABI) into the global
    symbol scope, and torch's static initialisers then bind to libmxnet's copies of ``std::``
    containers (SIGSEGV in ``free``). Hiding torch for the import makes tensorboardX skip it.
    """
    hidden = 'torch' not in sys.modules
    if hidden:
        sys.modules['torch'] = None  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    finally:
        if hidden and 'torch' in sys.modules and sys.modules['torch'] is None:
            del sys.modules['torch']
    return SummaryWriter


class MetricsLog:
    """Append one JSON object per line to ``metrics.jsonl`` (rank 0 only), and each of its
    numbers as a TensorBoard scalar in an event file beside it.

    Each record gets a wall-clock ``time``; reading the file back gives the run's history, also
    after a resume (records are appended, never rewritten). The TensorBoard step of a record is
    its ``step`` (else its ``iteration``, else its ``epoch``); nested numbers are tagged
    ``outer/inner``; strings and flags (booleans) are not curves. Events are written with
    tensorboardX (flushed after every record, so the curves are live); without it installed
    the run goes on with the JSON lines alone and says so once. An existing file is read when the
    log is opened, so that a damaged one (a line cut short by a crash or a full disk) is named
    before the run appends to it, not when its curves are plotted hours later.

    Raises
    ------
    DataFormatError
        From the constructor and :meth:`read`: a line of the file is not a JSON object.
    """

    def __init__(self, path: str, comm: Optional[Comm] = None, tensorboard: bool = True):
        self.path = path
        self.comm = comm or Comm()
        self.tensorboard = tensorboard and self.comm.is_root
        self._writer = None
        self._count = 0
        if self.comm.is_root:
            self.read()

    def write(self, record: Dict) -> None:
        if not self.comm.is_root:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, 'a') as f:
            f.write(json.dumps(dict(record, time=round(time.time(), 3)), default=float) + '\n')
        if self.tensorboard:
            self._scalars(record)

    def _scalars(self, record: Dict) -> None:
        """The record's numbers as TensorBoard scalars at its step."""
        if self._writer is None:
            try:
                SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
            except ImportError:
                log.warning('tensorboardX is not installed: no TensorBoard events (pip install '
                            'tensorboardX); metrics.jsonl is written as always')
                self.tensorboard = False
                return
            self._writer = SummaryWriter(logdir=os.path.dirname(os.path.abspath(self.path)))
        self._count += 1
        key = next((k for k in _STEP_KEYS if _is_number(record.get(k))), None)
        step = int(record[key]) if key else self._count
        for tag, value in _numbers(record, skip={key, 'time'}):
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file (also done when the process ends)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

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
