"""Errors that are the user's mistake, as opposed to bugs.

Every error class for a mistake in the user's input or settings (a malformed file, a checkpoint
made for another architecture, a teacher with another vocabulary, ...) derives from
:class:`UserError`, so a command line can show it as one line and exit with status 2 while a
bug keeps its traceback. Each class also keeps its built-in base (``ValueError``,
``RuntimeError``), so code that catches those still catches it.
"""
from __future__ import annotations

from typing import Optional

__all__ = ['UserError', 'DataFormatError', 'ConfigError']


class UserError(Exception):
    """A mistake in the user's input or settings; the message says what to change."""


class DataFormatError(UserError, ValueError):
    """An input file (text, shard, task file) that cannot be used; the message names the file.

    Parameters
    ----------
    reason : str
        What is wrong (the whole message when ``path`` is not given).
    path : str, optional
        The offending file.
    line : int, optional
        1-based line number in ``path`` (1 for one-JSON-per-file RACE articles).
    """

    def __init__(self, reason: str, path: Optional[str] = None, line: Optional[int] = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        where = self.path if line is None or self.path is None else f'{self.path}:{line}'
        super().__init__(reason if where is None else f'{where}: {reason}')


class ConfigError(UserError, ValueError):
    """A setting out of its range or inconsistent with another; the message names the flag."""
