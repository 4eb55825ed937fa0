"""A run holds its output folder exclusively: a second run on the same folder stops at once.

The lock is an advisory ``fcntl.flock`` on ``<folder>/.bort.lock``, so the kernel releases it
when the holding process ends in any way (``kill -9`` included) and a killed run can be resumed
straight away (forked worker processes do not inherit it); the file itself stays and says who
held it last. Under ``horovodrun`` only rank 0 takes it (the workers of one run share the folder
by design). A run refused before it wrote anything removes the folder it made.

A command that replaces a whole folder (data preparation, a quantized artefact, a copied best
model) builds the new content in a sibling (:func:`building_folder`) and swaps it in with
:func:`replace_folder` only once it is complete, so a failure leaves the old content as it was.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import socket
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

from .errors import UserError

__all__ = ['FolderInUseError', 'hold_folder', 'hold_run_folder', 'building_folder',
           'replace_folder', 'LOCK_FILE', 'DISPOSABLE']

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


#: The folders this process holds: real path -> [lock file descriptor, nesting depth].
_HELD: Dict[str, List[int]] = {}
#: What a command may have written into a folder it made before failing (its log, the lock):
#: a folder holding nothing else is removed when the run fails.
DISPOSABLE = (LOCK_FILE, 'log.txt', 'search.log')


def _forget_in_child() -> None:
    """In a forked child (a worker pool), close the inherited lock descriptors: the lock belongs
    to the parent, and a child keeping a copy kept a killed parent's folder locked until the
    child ended (10-45 s for ``prepare --num-workers``)."""
    for fd, _ in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _is_disposable(folder: str) -> bool:
    try:
        return set(os.listdir(folder)) <= set(DISPOSABLE)
    except OSError:
        return False


@contextlib.contextmanager
def hold_folder(folder: str, is_root: bool = True, what: Optional[str] = None) -> Iterator[str]:
    """Hold ``folder`` (created if missing) for the duration of the ``with`` block.

    A process that already holds ``folder`` may hold it again (a command holds its folder
    before opening its log there, then calls a library function that holds it too). When the
    block ends with an exception and the folder was made by this call and holds nothing but
    the lock and a log (:data:`DISPOSABLE`), it is removed: a refused run leaves nothing behind.

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
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
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
        _HELD[key] = [fd, 1]
        try:
            yield folder
        except BaseException:
            if created and _is_disposable(folder):
                shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            _HELD.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_run_folder(folder: str, comm: Any, what: Optional[str] = None) -> Iterator[str]:
    """:func:`hold_folder` for every worker of a run: rank 0 holds ``folder`` and tells the
    others whether it could, so that a refused run stops on every worker with the same error
    (instead of the others waiting in a collective rank 0 never reaches).

    Parameters
    ----------
    folder : str
    comm : Comm
        The run's workers (:class:`bort.distributed.Comm`; every worker must call this).
    what : str, optional
        As :func:`hold_folder`.

    Raises
    ------
    FolderInUseError
        On every worker, when another live run holds the folder.
    """
    with contextlib.ExitStack() as stack:
        refused = None
        if comm.is_root:
            try:
                stack.enter_context(hold_folder(folder, what=what))
            except FolderInUseError as err:
                refused = str(err)
        refused = comm.broadcast_object(refused)
        if refused:
            raise FolderInUseError(refused)
        yield folder


def _sibling(folder: str, kind: str, pid: Optional[int] = None) -> str:
    base = os.path.normpath(folder)
    return f'{base}.{kind}-{os.getpid() if pid is None else pid}'


def building_folder(folder: str) -> str:
    """A fresh, empty sibling of ``folder`` to build its replacement in (``folder.new-PID``).

    Siblings left by earlier processes that died while building are removed first; call it
    while holding ``folder`` (:func:`hold_folder`), so that none of them belongs to a live run.
    """
    for stale in glob.glob(glob.escape(os.path.normpath(folder)) + '.new-*'):
        shutil.rmtree(stale, ignore_errors=True)
    path = _sibling(folder, 'new')
    os.makedirs(path)
    return path


def replace_folder(new: str, folder: str) -> str:
    """Put the complete folder ``new`` in the place of ``folder`` (which may not exist).

    The old folder is renamed aside before ``new`` is renamed into place and removed only after,
    so at every moment one complete version exists (the old one under ``folder.old-PID`` in the
    instant between the two renames). Both must be on the same file system (siblings are).

    Returns
    -------
    str
        ``folder``.
    """
    aside = _sibling(folder, 'old')
    shutil.rmtree(aside, ignore_errors=True)
    if os.path.lexists(folder):
        os.replace(folder, aside)
    os.replace(new, folder)
    shutil.rmtree(aside, ignore_errors=True)
    return folder
