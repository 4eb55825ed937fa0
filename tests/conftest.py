"""Shared fixtures (tiny architectures that run every code path in milliseconds) and the tiers.

Tiers: the default run skips tests marked ``slow`` (whole training runs, seconds to minutes each)
and ``horovod`` (launch ``horovodrun -np 2``); ``--all`` runs every tier (what CI does), and an
explicit ``-m`` expression selects by marker instead (``-m slow``, ``-m horovod``).
"""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Tiny models run fastest on one thread, and passive OpenMP waiting keeps them fast when
# other jobs share the cores (spinning waiters slowed MXNet about 10x).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# A suite started in the background by a shell without job control inherits Ctrl-C ignored
# (and passes that on to every child): the Ctrl-C tests need Python's own handler, as in a
# terminal. Children then start with the default disposition again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from bort.arch import Architecture  # noqa: E402


TIERS = ('slow', 'horovod')


def pytest_addoption(parser):
    parser.addoption('--all', action='store_true', default=False,
                     help='run every tier: also the tests marked slow and horovod')


def _horovodrun_missing():
    local = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return not os.path.exists(local) and shutil.which('horovodrun') is None


def pytest_collection_modifyitems(config, items):
    if _horovodrun_missing():
        for item in items:
            if item.get_closest_marker('horovod'):
                item.add_marker(pytest.mark.skip(reason='horovodrun is not installed'))
    if config.getoption('--all') or config.option.markexpr:
        return
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if tiers:
            item.add_marker(pytest.mark.skip(
                reason=f'{"/".join(tiers)} tier: run with --all (or -m {tiers[0]})'))


@pytest.fixture
def tiny_arch():
    """A RoBERTa-family tiny shape: no token types, no pooler."""
    return Architecture(num_layers=2, num_heads=4, units=32, hidden_size=64, vocab_size=99,
                        max_length=40, dropout=0.0)


@pytest.fixture
def tiny_bert_arch(tiny_arch):
    """A BERT-family tiny shape: token types and pooler."""
    return tiny_arch.replace(token_type_vocab_size=2, use_pooler=True, layer_norm_eps=1e-12)


@pytest.fixture
def rng():
    return np.random.RandomState(0)


_HOLDER = textwrap.dedent('''
    import sys, time
    from bort.runlock import hold_folder
    with hold_folder(sys.argv[1], what='the first run'):
        print('held', flush=True)
        time.sleep(120)
''')


@pytest.fixture
def holder():
    """Start another process holding a folder (as a run does); killed at the end."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(folder)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == 'held'
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def keep_logging():
    """A command's main() sets up logging: give the next test the root handlers back."""
    import logging
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
