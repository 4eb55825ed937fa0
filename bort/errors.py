"""Errors that are the user's mistake, as opposed to bugs.

Every error class for a mistake in the user's input or settings (a malformed file, a checkpoint
made for another architecture, a teacher with another vocabulary, ...) derives from
:class:`UserError`, so a command line can show it as one line and exit with status 2 while a
bug keeps its traceback. Each class also keeps its built-in base (``ValueError``,
``RuntimeError``), so code that catches those still catches it.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Tuple, Type

__all__ = ['UserError', 'DataFormatError', 'ConfigError', 'read_json']


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


def read_json(path: str, kind: Type = dict, what: str = 'file', error: Type = DataFormatError
              ) -> Any:
    """The JSON value in ``path``; a damaged file is an error naming it, never a traceback.

    Parameters
    ----------
    path : str
    kind : type or tuple of types
        What the top-level value must be (``dict`` for the project's files).
    what : str
        What the file is, for the message ("checkpoint state file", ...).
    error : type
        The :class:`UserError` class raised, called with one message naming the file.

    Raises
    ------
    error
        The file is not UTF-8, not JSON (truncated by a crash or a full disk), or its value is
        not a ``kind``. A missing file stays :class:`FileNotFoundError`.
    """
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        value = json.loads(text)
    except UnicodeDecodeError:
        raise error(f'{path}: not a UTF-8 {what}: damaged; write or copy it again') from None
    except json.JSONDecodeError as err:
        raise error(f'{path}:{err.lineno}: not a valid {what} ({err.msg}: truncated or '
                    f'damaged, e.g. by a crash or a full disk)') from None
    kinds: Tuple = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds):
        raise error(f'{path}: not a valid {what} (expected a JSON '
                    f'{"object" if dict in kinds else " or ".join(k.__name__ for k in kinds)}, '
                    f'got {type(value).__name__})')
    return value
