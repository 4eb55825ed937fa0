"""The search's pure pieces: W-coefficient, ε-selection, the space, scoring, the top-k loss."""
import itertools

import mxnet as mx
import numpy as np
import pytest

from bort.errors import ConfigError

from bort.arch import Architecture
from bort.pretrain.losses import soft_cross_entropy, topk_soft_cross_entropy
from bort.search import (SearchConfig, build_space, epsilon_select, non_dominated, order_space,
                         rank_records, w_coefficient)
from bort.search.config import resolve_grid


def test_w_coefficient_hand_computed():
    # p(T) = 100, i(T) = 2: savings 0.6 and 0.75, divided by e = 0.25.
    assert w_coefficient(40, 0.5, 0.25, 100, 2.0) == pytest.approx(0.6 * 0.75 / 0.25)
    # The maximum point scores 0.
    assert w_coefficient(100, 2.0, 0.3, 100, 2.0) == 0.0
    # Table 1 of the paper: Bort against RoBERTa-large, W = 8.6 means e ≈ 0.093 (SPEC §3).
    saving = (355 - 56.14) / 355 * (6.170 - 0.308) / 6.170
    assert saving == pytest.approx(0.842 * 0.950, abs=1e-3)
    assert w_coefficient(56.14, 0.308, 0.093, 355, 6.170) == pytest.approx(8.6, abs=0.01)
    assert np.isnan(w_coefficient(40, 0.5, float('nan'), 100, 2.0))
    with pytest.raises(ValueError):
        w_coefficient(1, 1, 1, 0, 1)


def _toy_space():
    base = Architecture(1, 1, 8, 8, vocab_size=50, max_length=16)
    return build_space({'num_layers': (1, 2, 3), 'num_heads': (1, 2, 3, 4),
                        'units': (8, 12), 'hidden_size': (8, 16)}, base)


def test_invalid_tuples_skipped_and_counted():
    space = _toy_space()
    grid = list(itertools.product((1, 2, 3), (1, 2, 3, 4), (8, 12), (8, 16)))
    invalid = [t for t in grid if t[2] % t[1]]
    assert sorted(space.skipped) == sorted(invalid)
    assert len(space.valid) + len(space.skipped) == len(grid)
    assert {a.tuple for a in space.valid} == set(grid) - set(invalid)
    assert space.summary()['skipped'] == len(invalid)
    assert all(not a.use_pooler for a in space.valid)
    with pytest.raises(ConfigError, match='no tuple of the grid .* divisible by num_heads'):
        build_space({'num_layers': (1,), 'num_heads': (3,), 'units': (8,), 'hidden_size': (8,)},
                    Architecture(1, 1, 8, 8))


def test_epsilon_selection_matches_brute_force():
    space = _toy_space()
    rng = np.random.RandomState(0)
    # p depends on (D, H, I) only, as the real count does, so A's make ties broken by i.
    p = {a.tuple: a.num_layers * a.units * a.hidden_size for a in space.valid}
    i = {a.tuple: float(rng.rand()) for a in space.valid}
    asked = []

    def cost(archs):
        asked.extend(a.tuple for a in archs)
        return [i[a.tuple] for a in archs]

    ordered = order_space(space.valid, lambda a: p[a.tuple], cost)
    # i is only asked for tuples that share their p with another one.
    shared = [t for t in p if sum(v == p[t] for v in p.values()) > 1]
    assert sorted(asked) == sorted(shared)
    for eps in range(1, len(space) + 2):
        chosen = [a.tuple for a in epsilon_select(ordered, eps)]
        # Brute force: the tuple at sorted position k has exactly k tuples before it in the
        # (p, i, tuple) order; keep positions 0, ε, 2ε, ...
        keys = {t: (p[t], i[t] if t in shared else 0.0, t) for t in p}
        position = {t: sum(keys[u] < keys[t] for u in p) for t in p}
        expected = sorted((t for t in p if position[t] % eps == 0), key=position.get)
        assert chosen == expected
    assert {a.tuple for a in epsilon_select(ordered, 1)} == set(p)  # exhaustive
    assert len(epsilon_select(ordered, 10 ** 6)) == 1
    with pytest.raises(ValueError):
        epsilon_select(ordered, 0)


def test_rank_records_and_non_dominated():
    recs = [dict(num_layers=d, num_heads=1, units=8, hidden_size=8, params=p, error=e, w=w)
            for d, p, e, w in [(1, 10, 1.0, 0.5), (2, 20, 0.5, 2.0), (3, 30, 0.4, float('nan')),
                               (4, 40, 0.3, 2.0)]]
    ranked = rank_records(recs)
    assert [r['num_layers'] for r in ranked] == [4, 2, 1, 3]  # W ties by error; NaN last
    assert [r['rank'] for r in ranked] == [1, 2, 3, 4]
    points = np.random.RandomState(1).rand(40, 3)
    expected = [k for k, a in enumerate(points)
                if not any((b <= a).all() and (b < a).any() for b in points)]
    assert non_dominated(points) == expected
    assert non_dominated([[1, 1], [1, 1], [2, 0]]) == [0, 1, 2]


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_topk_soft_cross_entropy_against_numpy():
    rng = np.random.RandomState(0)
    student, teacher = rng.randn(5, 30), rng.randn(5, 30) * 3
    k, temp = 7, 2.0
    ids = np.argsort(-teacher, axis=1)[:, :k]
    top = np.take_along_axis(teacher, ids, 1)
    q = np.exp(_log_softmax(top / temp))
    expected = -(q * np.take_along_axis(_log_softmax(student / temp), ids, 1)).sum(1).mean()
    got = topk_soft_cross_entropy(mx.nd.array(student), mx.nd.array(top),
                                  mx.nd.array(ids, dtype='int32'), temp)
    assert float(got.asscalar()) == pytest.approx(expected, rel=1e-5)
    # With the full log-normaliser: exact top-k probabilities, the rest spread evenly.
    lse = np.log(np.exp(teacher / temp).sum(1))
    q = np.exp(top / temp - lse[:, None])
    tail = np.full((5, 30), 0.0)
    for row in range(5):
        tail[row] = (1 - q[row].sum()) / (30 - k)
        tail[row, ids[row]] = q[row]
    expected = -(tail * _log_softmax(student / temp)).sum(1).mean()
    got = topk_soft_cross_entropy(mx.nd.array(student), mx.nd.array(top),
                                  mx.nd.array(ids, dtype='int32'), temp,
                                  logsumexp=mx.nd.array(lse))
    assert float(got.asscalar()) == pytest.approx(expected, rel=1e-5)
    # k = V is the full soft cross-entropy; the gradient flows to the student.
    ids = np.argsort(-teacher, axis=1)
    s = mx.nd.array(student)
    s.attach_grad()
    with mx.autograd.record():
        loss = topk_soft_cross_entropy(s, mx.nd.array(np.take_along_axis(teacher, ids, 1)),
                                       mx.nd.array(ids, dtype='int32'), temp)
    loss.backward()
    full = soft_cross_entropy(mx.nd, mx.nd.array(student), mx.nd.array(teacher),
                              mx.nd.ones((5,)), temp)
    assert float(loss.asscalar()) == pytest.approx(float(full.asscalar()), rel=1e-5)
    with_lse = topk_soft_cross_entropy(s, mx.nd.array(np.take_along_axis(teacher, ids, 1)),
                                       mx.nd.array(ids, dtype='int32'), temp,
                                       logsumexp=mx.nd.array(lse))
    assert float(with_lse.asscalar()) == pytest.approx(float(full.asscalar()), rel=1e-5)
    assert float(mx.nd.abs(s.grad).sum().asscalar()) > 0


def test_config_grid_and_validation(tmp_path):
    config = SearchConfig(num_layers='2,4', units=(64,))
    assert config.num_layers == (2, 4)
    grid = resolve_grid(config)
    assert grid['num_layers'] == (2, 4) and grid['units'] == (64,)
    assert grid['num_heads'] == (4, 12)
    assert len(resolve_grid(SearchConfig(space='paper'))['hidden_size']) == 5
    with pytest.raises(ValueError, match='epsilon'):
        SearchConfig(epsilon=0).validate()
    with pytest.raises(ValueError, match='neither a named grid'):
        resolve_grid(SearchConfig(space=str(tmp_path / 'missing.json')))
    # The fingerprint follows what the error depends on, not where the output goes.
    assert SearchConfig(out='a').fingerprint() == SearchConfig(out='b').fingerprint()
    assert SearchConfig(lr=0.1).fingerprint() != SearchConfig(lr=0.2).fingerprint()


def test_balanced_share_splits_every_candidate_once():
    from bort.distributed import Comm
    from bort.search.evaluate import balanced_share, training_work
    config = SearchConfig(seq_len=16)
    archs = _toy_space().valid
    shares = [balanced_share(archs, Comm(rank=r, size=3), config) for r in range(3)]
    flat = [t for share in shares for t in share]
    assert sorted(flat) == sorted(a.tuple for a in archs)  # each once
    work = {a.tuple: training_work(a, config) for a in archs}
    loads = [sum(work[t] for t in share) for share in shares]
    assert max(loads) - min(loads) <= max(work.values())  # LPT bound
