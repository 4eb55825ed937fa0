"""Measured inference cost under load: candidates timed in the same rounds as the teacher."""
import os
import subprocess
import sys

import pytest

from bort.arch import Architecture
from bort.costs import flops
from bort.search import SearchConfig
from bort.search.inference import CostModel


def _arch(layers):
    return Architecture(layers, 4, 256, 1024, vocab_size=100, max_length=128,
                        token_type_vocab_size=2, use_pooler=False)


@pytest.mark.slow
def test_ordering_survives_cpu_load(tmp_path):
    """Two encoders whose operation counts differ 3× keep their order, and their ratio to the
    teacher stays near its quiet value, while busy processes load every core."""
    small, large, teacher = _arch(1), _arch(3), _arch(8)
    assert flops(large, seq_len=64) / flops(small, seq_len=64) == pytest.approx(3.0, rel=0.01)
    config = SearchConfig(cost='measured', latency_seq_len=64, latency_warmup=2,
                          latency_repeats=9)
    quiet = CostModel(config)
    quiet.set_reference(teacher)
    quiet.costs([teacher, small, large])
    # Spinning interpreters and one multi-threaded BLAS loop (like another training process).
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]
    busy.append(subprocess.Popen(
        [sys.executable, '-c', 'import numpy as np\na = np.ones((600, 600))\n'
         'while True: a = np.tanh(a @ a / 600)'], env=dict(os.environ, OPENBLAS_NUM_THREADS='2',
                                                             OMP_NUM_THREADS='2')))
    try:
        loaded = CostModel(config)
        loaded.set_reference(teacher)
        loaded.costs([teacher, small, large])
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    for model in (quiet, loaded):
        r_small, r_large = model.record(small)['ratio'], model.record(large)['ratio']
        assert r_small < r_large < 1.0
        assert model.record(small)['low_s'] <= model.cost(small) <= model.record(small)['high_s']
    # The ratios (what savings(i) is made of) move much less than a load of 3 busy processes on
    # the cores would move absolute times: within a factor 1.5 of the quiet figure.
    for arch in (small, large):
        assert loaded.record(arch)['ratio'] == pytest.approx(quiet.record(arch)['ratio'], rel=0.5)


def test_time_in_child_uses_its_own_threads_and_clock():
    """The child process times every encoder with the requested thread count and clock; a
    3×-FLOPs encoder takes longer than the small one."""
    from bort.inference.isolated import time_in_child
    small, large = _arch(1), _arch(3)
    timed = time_in_child({'small': small.to_dict(), 'large': large.to_dict()}, 1, 64,
                          warmup=2, repeats=5, threads=1, clock='process')
    assert all(r.threads == 1 and r.clock == 'process' for r in timed.values())
    assert all(r.thread_env['MXNET_ENGINE_TYPE'] == 'NaiveEngine' for r in timed.values())
    assert set(timed) == {'small', 'large'}
    assert all(len(r.samples) == 5 and min(r.samples) > 0 for r in timed.values())
    median = {k: sorted(r.samples)[2] for k, r in timed.items()}
    assert median['large'] > 1.5 * median['small']


def test_in_process_timing_still_available(tmp_path):
    """--latency_threads 0 times in the search process (its own threads, wall clock)."""
    teacher, small = _arch(3), _arch(1)
    config = SearchConfig(cost='measured', latency_seq_len=32, latency_warmup=1,
                          latency_repeats=3, latency_threads=0)
    model = CostModel(config, folder=str(tmp_path))
    model.set_reference(teacher)
    assert model.cost(small) > 0
    assert model.settings['child_threads'] == 0 and model.settings['clock'] == 'wall'
