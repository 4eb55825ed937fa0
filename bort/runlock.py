"""A run holds its output folder exclusively: a second run on the same folder stops at once.

The lock is an advisory ``fcntl.flock`` on ``<folder>/.bort.lock``, so the kernel releases it
when the holding process ends in any way (``kill -9`` included) and a killed run can be resumed
straight away; the file itself stays and says who held it last. Under ``horovodrun`` only rank 0
takes it (the workers of one run share the folder by design).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional

from .errors import UserError

__all__ = ['FolderInUseError', 'hold_folder', 'LOCK_FILE']

LOCK_FILE = '.bort.lock'


class FolderInUseError(UserError, RuntimeError):
    """Another live run holds the output folder."""


def _holder(path: str) -> str:
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
        return (f'pid {info.get("pid")} on {info.get("host")}, started '
                f'{info.get("started")}: {info.get("command")}')
    except (OSError, ValueError):
        return 'another process'


@contextlib.contextmanager
def hold_folder(folder: str, is_root: bool = True, what: Optional[str] = None) -> Iterator[str]:
    """Hold ``folder`` (created if missing) for the duration of the ``with`` block.

    Parameters
    ----------
    folder : str
        The run's output folder.
    is_root : bool
        Only the root worker locks; the others pass straight through.
    what : str, optional
        What holds it, written into the lock file (default: this process's command line).

    Raises
    ------
    FolderInUseError
        Another live process holds the folder; the message names it.
    """
    if not is_root:
        yield folder
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f'{folder} is in use by another run ({_holder(path)}); wait for it to end or '
                f'choose another output folder') from None
        info = {'pid': os.getpid(), 'host': socket.gethostname(),
                'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                'command': what or ' '.join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + '\n').encode('utf-8'))
        try:
            yield folder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
