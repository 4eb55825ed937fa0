"""bort.runlock: one run per output folder, released when the holder dies (even by SIGKILL)."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bort.runlock import LOCK_FILE, FolderInUseError, hold_folder

_HOLDER = textwrap.dedent('''
    import sys, time
    from bort.runlock import hold_folder
    with hold_folder(sys.argv[1], what='test holder'):
        print('held', flush=True)
        time.sleep(60)
''')


def _start_holder(folder):
    proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == 'held'
    return proc


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    proc = _start_holder(tmp_path / 'run')
    try:
        with pytest.raises(FolderInUseError, match=rf'in use by another run \(pid {proc.pid} '
                                                   r'.*test holder'):
            with hold_folder(str(tmp_path / 'run')):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path):
    proc = _start_holder(tmp_path / 'run')
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with hold_folder(str(tmp_path / 'run')) as folder:  # resumable at once
        assert os.path.isfile(os.path.join(folder, LOCK_FILE))


def test_sequential_runs_and_non_root_workers_pass(tmp_path):
    folder = str(tmp_path / 'run')
    with hold_folder(folder):
        with hold_folder(folder, is_root=False):  # another worker of the same run
            pass
    with hold_folder(folder):  # released at the end of the block
        pass


class _Worker:
    """A stand-in for one worker's Comm: ``broadcast_object`` returns rank 0's value."""

    def __init__(self, rank, root_value=None):
        self.rank, self.root_value = rank, root_value

    @property
    def is_root(self):
        return self.rank == 0

    def broadcast_object(self, obj):
        return obj if self.is_root else self.root_value


def test_a_refused_run_stops_on_every_worker(tmp_path):
    from bort.runlock import hold_run_folder
    proc = _start_holder(tmp_path / 'run')
    try:
        with pytest.raises(FolderInUseError) as refused:
            with hold_run_folder(str(tmp_path / 'run'), _Worker(0)):
                pass
        # rank 1 learns rank 0's refusal instead of waiting in a collective
        with pytest.raises(FolderInUseError, match='test holder'):
            with hold_run_folder(str(tmp_path / 'run'), _Worker(1, str(refused.value))):
                pass
    finally:
        proc.kill()
        proc.wait()
    with hold_run_folder(str(tmp_path / 'run'), _Worker(0)) as folder:
        assert os.path.isfile(os.path.join(folder, LOCK_FILE))


def test_a_run_may_hold_its_own_folder_again(tmp_path):
    """A command holds its folder before it opens its log there; the library function it calls
    holds the same folder again (re-entrant in one process), and the folder is free after."""
    folder = str(tmp_path / 'run')
    with hold_folder(folder):
        with hold_folder(folder + '/'):  # the same folder, spelled otherwise
            pass
        proc = subprocess.run([sys.executable, '-c', _HOLDER, folder], capture_output=True,
                              text=True, timeout=60)
        assert 'in use by another run' in proc.stderr  # still held after the inner block
    proc = _start_holder(folder)  # and free once the outer one ends
    proc.kill()
    proc.wait()


def test_a_failed_run_removes_the_folder_it_made_and_nothing_else(tmp_path):
    new = tmp_path / 'new'
    with pytest.raises(ValueError):
        with hold_folder(str(new)):
            (new / 'log.txt').write_text('refused: bad input\n')
            raise ValueError('bad input')
    assert not new.exists()
    # A folder that was there before, or that holds results, stays.
    old = tmp_path / 'old'
    old.mkdir()
    kept = tmp_path / 'kept'
    for folder in (old, kept):
        with pytest.raises(ValueError):
            with hold_folder(str(folder)):
                if folder == kept:
                    (folder / 'step-0000001').mkdir()
                raise ValueError('later failure')
        assert folder.exists()
    assert (kept / 'step-0000001').is_dir()


_FORKING_HOLDER = textwrap.dedent('''
    import multiprocessing, os, sys, time
    from bort.runlock import hold_folder

    def work():
        print(os.getpid(), flush=True)  # from the child: its fork hooks have run
        time.sleep(60)

    with hold_folder(sys.argv[1], what='forking holder'):
        multiprocessing.get_context('fork').Process(target=work).start()
        time.sleep(60)
''')


def test_forked_workers_do_not_keep_a_killed_runs_lock(tmp_path):
    """kill -9 of a command with worker processes (data preparation) frees its folder at
    once: the workers do not inherit the lock."""
    proc = subprocess.Popen([sys.executable, '-c', _FORKING_HOLDER, str(tmp_path / 'run')],
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with hold_folder(str(tmp_path / 'run')):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
