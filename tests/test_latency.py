"""Latency measurement: what is recorded, the interleaving, the statistics."""
import time

import numpy as np
import pytest

from bort.inference.fast import FastModel
from bort.inference.latency import (LatencyResult, compare_latency, device_string, format_results,
                                    matmul_peak_gflops, measure_latency)
from bort.model import build_model


def test_measure_a_model_records_its_setting(tiny_arch, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    model = build_model(tiny_arch, use_decoder=False)
    model.hybridize(static_alloc=True)
    result = measure_latency(model, batch_size=3, seq_len=16, warmup=1, repeats=4, label='tiny')
    assert isinstance(result, LatencyResult)
    assert len(result.samples) == result.repeats == 4
    assert (result.batch_size, result.seq_len, result.warmup) == (3, 16, 1)
    assert result.threads == 2 and result.thread_env['OMP_NUM_THREADS'] == '2'
    assert result.device.startswith('cpu')
    assert min(result.samples) <= result.p10 <= result.median <= result.p90 <= max(result.samples)
    assert result.q25 <= result.median <= result.q75 and result.iqr >= 0
    assert result.per_sample == pytest.approx(result.median / 3)
    assert result.throughput == pytest.approx(3 / result.median)
    record = result.to_dict()
    for key in ('median', 'p10', 'p90', 'per_sample', 'samples', 'threads', 'device'):
        assert key in record
    assert 'tiny' in str(result)


def test_statistics_against_numpy():
    samples = [0.5, 0.1, 0.3, 0.2, 0.4]
    r = LatencyResult(samples=samples, batch_size=2, seq_len=8, warmup=0, repeats=5, device='x')
    assert r.median == np.median(samples)
    assert r.p10 == pytest.approx(np.percentile(samples, 10))
    assert r.p90 == pytest.approx(np.percentile(samples, 90))
    assert r.per_sample == pytest.approx(0.15)


def test_compare_interleaves_and_times_callables():
    calls = []

    def make(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)
        return run

    results = compare_latency({'a': make('a', 0.002), 'b': make('b', 0.01)}, batch_size=1,
                              seq_len=4, warmup=1, repeats=3)
    assert calls == ['a', 'b'] + ['a', 'b'] * 3
    assert results['b'].median >= 0.01
    assert results['a'].median < results['b'].median
    table = format_results(list(results.values()), reference='b')
    assert '| a |' in table and '1.00' in table


def test_process_clock_ignores_sleep():
    def busy():
        end = time.process_time() + 0.01
        while time.process_time() < end:
            pass

    results = compare_latency({'sleep': lambda: time.sleep(0.02), 'busy': busy}, batch_size=1,
                              seq_len=4, warmup=0, repeats=3, clock='process')
    assert results['sleep'].median < 0.005 <= results['busy'].median
    assert results['busy'].clock == 'process'
    with pytest.raises(ValueError):
        compare_latency({'a': busy}, 1, 4, clock='cycles')


def test_fast_model_is_measurable(tiny_bert_arch):
    fast = FastModel.from_model(build_model(tiny_bert_arch, use_decoder=False))
    result = measure_latency(fast, batch_size=2, seq_len=8, warmup=1, repeats=2)
    assert result.median > 0


def test_rejects_bad_arguments():
    with pytest.raises(TypeError):
        measure_latency(42, 1, 8)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, 1, 8, repeats=0)


def test_matmul_peak_and_device():
    assert matmul_peak_gflops(size=128, repeats=2) > 0
    assert device_string().startswith('cpu: ')
