"""The trust arithmetic of a search: seed noise, Kendall τ, W intervals, the verdict."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from bort.search.trust import (SEPARATION, fidelity_choice, fidelity_summary, kendall_tau,
                               noise_choice, pooled_noise, ranking_sources, unigram_log_probs,
                               verdict, w_interval)
from bort.search.report import score_records

TEACHER = {'params': 100.0, 'inference_cost': 10.0}


def _tau_brute_force(x, y):
    """τ-b by counting every pair (no ties in these samples: τ-a = τ-b)."""
    concordant = discordant = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        concordant += s > 0
        discordant += s < 0
    return (concordant - discordant) / (len(x) * (len(x) - 1) / 2)


def test_kendall_tau_against_brute_force_and_scipy():
    rng = np.random.RandomState(0)
    for n in (6, 9, 12):
        x = rng.permutation(n).astype(float)
        y = x + rng.randn(n) * 3
        tau, p = kendall_tau(x, y)
        assert tau == pytest.approx(_tau_brute_force(x, y))
        ref = stats.kendalltau(x, y)
        assert p == pytest.approx(ref.pvalue)
    assert kendall_tau([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])[0])  # a constant sample
    assert math.isnan(kendall_tau([1], [2])[0])
    assert kendall_tau([1, 2, float('nan'), 3], [1, 2, 0, 3])[0] == pytest.approx(1.0)


def test_pooled_noise_against_numpy():
    groups = [[6.8, 6.9, 6.85], [7.0, 7.1], [6.5], [5.0, float('nan'), 5.2, 5.1]]
    got = pooled_noise(groups)
    usable = [np.array([6.8, 6.9, 6.85]), np.array([7.0, 7.1]), np.array([5.0, 5.2, 5.1])]
    df = sum(len(g) - 1 for g in usable)
    pooled = math.sqrt(sum((len(g) - 1) * np.var(g, ddof=1) for g in usable) / df)
    assert got['sigma'] == pytest.approx(pooled)
    assert got['df'] == df == 5
    assert got['per_group'][2] is None  # one value: no spread
    assert got['per_group'][0] == pytest.approx(np.std([6.8, 6.9, 6.85], ddof=1))
    assert got['max_range'] == pytest.approx(0.2)
    # Equal group sizes: the pooled variance is the mean of the variances.
    equal = [[1.0, 2.0, 4.0], [3.0, 3.5, 5.0]]
    assert pooled_noise(equal)['sigma'] ** 2 == pytest.approx(
        np.mean([np.var(g, ddof=1) for g in equal]))
    assert math.isnan(pooled_noise([[1.0]])['sigma'])


def test_w_interval_brackets_w_and_widens_with_noise():
    r = {'params': 40.0, 'inference_cost': 4.0, 'error': 2.0}
    w = 0.6 * 0.6 / 2.0
    assert w_interval(r, 0.0, TEACHER) == pytest.approx((w, w))
    lo, hi = w_interval(r, 0.1, TEACHER)
    assert lo == pytest.approx(0.36 / 2.2) and hi == pytest.approx(0.36 / 1.8)
    lo2, hi2 = w_interval(dict(r, inference_low=3.0, inference_high=5.0), 0.1, TEACHER)
    assert lo2 == pytest.approx(0.6 * 0.5 / 2.2) and hi2 == pytest.approx(0.6 * 0.7 / 1.8)


def _records(errors, params, costs):
    return score_records([dict(num_layers=d + 1, num_heads=4, units=128, hidden_size=256,
                               params=p, inference_cost=c, error=e)
                          for d, (e, p, c) in enumerate(zip(errors, params, costs))], TEACHER)


def test_verdict_noise_when_e_within_noise():
    # e differs by 0.05 across candidates with σ = 0.05: costs decide; the smallest wins.
    ranked = _records([7.00, 7.03, 7.05, 7.01], [10, 20, 30, 40], [1, 2, 3, 4])
    out = verdict(ranked, 0.05, TEACHER)
    assert out['decided_by'] == 'noise' and not out['error_is_signal']
    assert out['spread_over_noise'] == pytest.approx(0.05 / 0.05)
    assert 'Not separated by e' in out['text']
    assert ranked[0]['num_layers'] == 1  # the cheapest


def test_verdict_error_decides_when_cheapest_learned_nothing():
    # The cheapest is far worse in e (beyond noise); W puts a larger one first.
    ranked = _records([9.0, 3.0, 3.1, 3.2], [10, 20, 30, 40], [1, 2, 3, 4])
    out = verdict(ranked, 0.05, TEACHER)
    assert out['error_is_signal'] and out['spread_over_noise'] == pytest.approx(120.0)
    assert ranked[0]['num_layers'] == 2
    assert out['decided_by'] == 'error'
    assert out['sources']['cost_best'] == [1, 4, 128, 256]
    assert out['top_separated'] is True
    assert 'e decides the top' in out['text']


def test_verdict_costs_decide_when_cheapest_also_best():
    ranked = _records([3.0, 3.5, 4.0, 4.5], [10, 20, 30, 40], [1, 2, 3, 4])
    out = verdict(ranked, 0.05, TEACHER)
    assert out['error_is_signal'] and out['decided_by'] == 'costs'
    # Rank 1 and 2: W 0.9·0.9/3 = 0.27 vs 0.8·0.8/3.5 = 0.183: intervals disjoint at σ 0.05.
    assert out['top_separated'] is True


def test_verdict_tied_top_and_unmeasured():
    ranked = _records([3.0, 3.01, 9.0], [10, 10.1, 40], [1, 1.01, 4])
    out = verdict(ranked, 0.2, TEACHER)
    assert out['top_separated'] is False and 'tied' in out['text']
    assert out['top_error_separated'] is False
    assert verdict(ranked, float('nan'), TEACHER)['decided_by'] == 'unmeasured'
    assert SEPARATION == 3.0


def test_ranking_sources_taus():
    ranked = _records([3.0, 3.5, 4.0, 4.5], [10, 20, 30, 40], [1, 2, 3, 4])
    src = ranking_sources(ranked, TEACHER)
    # Here W, 1/e and the cost product all fall with size: both τ are 1.
    assert src['tau_w_inverse_error'] == pytest.approx(1.0)
    assert src['tau_w_costs'] == pytest.approx(1.0)
    flipped = _records([9.0, 3.0, 3.1, 3.2], [10, 20, 30, 40], [1, 2, 3, 4])
    src = ranking_sources(flipped, TEACHER)
    w = [r['w'] for r in flipped]
    assert src['tau_w_inverse_error'] == pytest.approx(
        _tau_brute_force(w, [1 / r['error'] for r in flipped]))


def test_fidelity_summary_and_choices():
    short = _records([7.0, 6.9, 6.8, 6.7, 6.6, 6.5], [10, 20, 30, 40, 50, 60], [1, 2, 3, 4, 5, 6])
    long = [dict(r, error=r['error'] - 1.0) for r in short]
    long[0]['error'], long[1]['error'] = long[1]['error'], long[0]['error']  # one swap
    out = fidelity_summary(short, long, TEACHER, 4)
    assert out['candidates'] == 6 and out['factor'] == 4
    assert out['tau_error'] == pytest.approx(1 - 2 / 15)  # one discordant pair of 15
    assert out['p_error'] == pytest.approx(stats.kendalltau(
        [r['error'] for r in short], [b['error'] for b in
                                      sorted(long, key=lambda r: r['num_layers'])]).pvalue)
    ranked = _records(list(np.linspace(7, 6, 9)), list(range(10, 100, 10)), list(range(1, 10)))
    chosen = fidelity_choice(ranked, 6)
    sizes = sorted(r['params'] for r in ranked if (r['num_layers'], 4, 128, 256) in chosen)
    assert len(chosen) == 6 and sizes[0] == 10 and sizes[-1] == 90  # both ends of the range
    assert noise_choice(ranked, 3) == [tuple((r['num_layers'], 4, 128, 256))
                                       for r in ranked[:3]]


def test_unigram_log_probs():
    log_q = unigram_log_probs([np.array([1, 1, 2]), np.array([[2, 2]])], 4, smoothing=0.5)
    counts = np.array([0.5, 2.5, 3.5, 0.5])
    np.testing.assert_allclose(log_q, np.log(counts / counts.sum()))


def test_verdict_counts_candidates_above_the_context_free_floor():
    ranked = _records([6.30, 6.10, 6.28], [10, 20, 30], [1, 2, 3])
    out = verdict(ranked, 0.02, TEACHER, context_free=6.25)
    assert out['below_context_free'] == 1  # only 6.10 < 6.25 − 3·0.02
    assert '2 of 3 candidates are not below the context-free floor' in out['text']
    assert 'context-free' not in verdict(ranked, 0.02, TEACHER, context_free=7.0)['text']


def test_verdict_when_only_the_longer_runs_learn_from_context():
    """Above the floor after s steps, below it after k·s: the text says whether the s-step order
    carries over (τ ≥ 0.6) or not."""
    ranked = _records([6.30, 6.28, 6.29], [10, 20, 30], [1, 2, 3])

    def fidelity(tau):
        return {'factor': 4, 'candidates': 3, 'tau_error': tau, 'p_error': 0.5, 'tau_w': 1.0,
                'p_w': 0.3, 'rows': [{'tuple': [1, 1, 1, 1], 'error_short': 6.30,
                                      'error_long': 6.10},
                                     {'tuple': [2, 1, 1, 1], 'error_short': 6.28,
                                      'error_long': 6.05},
                                     {'tuple': [3, 1, 1, 1], 'error_short': 6.29,
                                      'error_long': 6.24}]}
    agrees = verdict(ranked, 0.01, TEACHER, fidelity=fidelity(1.0), context_free=6.25)
    assert agrees['below_context_free'] == 0
    assert agrees['below_context_free_long'] == 2  # 6.24 is not below 6.25 − 3·0.01
    assert '2 of 3 are after 4·s' in agrees['text']
    assert 'token frequencies' not in agrees['text']
    disagrees = verdict(ranked, 0.01, TEACHER, fidelity=fidelity(-0.33), context_free=6.25)
    assert 'how fast token frequencies are learned' in disagrees['text']
    assert 'does not rank e as longer training does' in disagrees['text']
