"""Measured inference cost under load: candidates timed in the same rounds as the teacher."""
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
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(3)]
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
