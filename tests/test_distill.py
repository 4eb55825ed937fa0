"""The pretraining losses against numpy references, and the statistics of dynamic masking."""
import mxnet as mx
import numpy as np
import pytest

from bort.pretrain.masking import MaskingConfig, mask_tokens
from bort.pretrain.losses import kd_loss, masked_accuracy, masked_lm_loss, soft_cross_entropy


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _np_soft_ce(student, teacher, weights, temperature, quirks):
    """The two readings of the distillation term, written out in numpy."""
    p_teacher = _softmax(teacher / temperature)
    s = student / temperature
    if quirks:  # the released script: softmax applied twice to the student, mean over vocab
        per_position = -(p_teacher * _log_softmax(_softmax(s))).mean(-1)
    else:
        per_position = -(p_teacher * _log_softmax(s)).sum(-1)
    return (per_position * weights).sum() / max(weights.sum(), 1.0)


def _np_mlm(logits, labels, weights):
    logp = _log_softmax(logits)
    nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return (nll * weights).sum() / max(weights.sum(), 1.0)


@pytest.fixture
def logits(rng):
    batch, masked, vocab = 3, 5, 11
    student = rng.randn(batch, masked, vocab).astype(np.float32) * 3
    teacher = rng.randn(batch, masked, vocab).astype(np.float32) * 3
    labels = rng.randint(0, vocab, (batch, masked))
    weights = (rng.rand(batch, masked) > 0.3).astype(np.float32)
    weights[0, 0] = 1.0
    return student, teacher, labels, weights


@pytest.mark.parametrize('quirks', [False, True])
@pytest.mark.parametrize('temperature', [1.0, 2.0, 0.5])
def test_soft_cross_entropy_matches_numpy(logits, quirks, temperature):
    student, teacher, _, weights = logits
    got = soft_cross_entropy(mx.nd, mx.nd.array(student), mx.nd.array(teacher),
                             mx.nd.array(weights), temperature, released_quirks=quirks)
    want = _np_soft_ce(student.astype(np.float64), teacher.astype(np.float64), weights,
                       temperature, quirks)
    np.testing.assert_allclose(got.asscalar(), want, rtol=1e-5)


def test_quirks_change_the_loss(logits):
    student, teacher, _, weights = logits
    correct = _np_soft_ce(student, teacher, weights, 2.0, False)
    released = _np_soft_ce(student, teacher, weights, 2.0, True)
    # Mean over the vocabulary shrinks the term by about |V|; the double softmax flattens it.
    assert abs(correct - released) > 0.5 * correct


def test_soft_cross_entropy_gradient_is_q_minus_p(logits):
    """d/ds of -sum p log softmax(s/T) is (softmax(s/T) - p) / T, per weighted position."""
    student, teacher, _, weights = logits
    temperature = 2.0
    s = mx.nd.array(student)
    s.attach_grad()
    with mx.autograd.record():
        loss = soft_cross_entropy(mx.nd, s, mx.nd.array(teacher), mx.nd.array(weights),
                                  temperature)
    loss.backward()
    want = (_softmax(student / temperature) - _softmax(teacher / temperature)) / temperature
    want *= weights[..., None] / weights.sum()
    np.testing.assert_allclose(s.grad.asnumpy(), want, atol=1e-6)


def test_masked_lm_loss_matches_numpy(logits):
    student, _, labels, weights = logits
    got = masked_lm_loss(mx.nd, mx.nd.array(student), mx.nd.array(labels), mx.nd.array(weights))
    np.testing.assert_allclose(got.asscalar(), _np_mlm(student, labels, weights), rtol=1e-5)


@pytest.mark.parametrize('quirks', [False, True])
def test_kd_loss_combines_with_temperature_squared(logits, quirks):
    student, teacher, labels, weights = logits
    total, mlm, kd = kd_loss(mx.nd, mx.nd.array(student), mx.nd.array(teacher),
                             mx.nd.array(labels), mx.nd.array(weights), mlm_weight=0.1,
                             kd_weight=0.5, temperature=2.0, released_quirks=quirks)
    want_mlm = _np_mlm(student, labels, weights)
    want_kd = _np_soft_ce(student, teacher, weights, 2.0, quirks)
    np.testing.assert_allclose(mlm.asscalar(), want_mlm, rtol=1e-5)
    np.testing.assert_allclose(kd.asscalar(), want_kd, rtol=1e-5)
    np.testing.assert_allclose(total.asscalar(), 0.1 * want_mlm + 0.5 * 4.0 * want_kd,
                               rtol=1e-5)


def test_kd_weight_zero_is_masked_lm_only(logits):
    student, _, labels, weights = logits
    total, mlm, kd = kd_loss(mx.nd, mx.nd.array(student), None, mx.nd.array(labels),
                             mx.nd.array(weights), mlm_weight=1.0, kd_weight=0.0)
    assert kd.asscalar() == 0.0
    np.testing.assert_allclose(total.asscalar(), _np_mlm(student, labels, weights), rtol=1e-5)


def test_no_weighted_position_gives_zero(logits):
    student, teacher, labels, _ = logits
    zeros = mx.nd.zeros(labels.shape)
    total, _, _ = kd_loss(mx.nd, mx.nd.array(student), mx.nd.array(teacher),
                          mx.nd.array(labels), zeros)
    assert total.asscalar() == 0.0


def test_masked_accuracy_counts_weighted_positions():
    logits = np.zeros((1, 3, 4))
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 1
    correct, count = masked_accuracy(logits, np.array([[2, 0, 3]]), np.array([[1, 1, 0.]]))
    assert (correct, count) == (1.0, 2.0)


# -- masking ---------------------------------------------------------------------------------
CLS, SEP, PAD, MASK, VOCAB = 0, 1, 2, 3, 1000


def _batch(rng, rows=400, width=64):
    lengths = rng.randint(8, width + 1, rows)
    ids = np.full((rows, width), PAD, dtype=np.int32)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.randint(5, VOCAB, n)
        ids[r, 0], ids[r, n - 1] = CLS, SEP
    return ids, lengths


def test_masking_statistics(rng):
    ids, lengths = _batch(rng, rows=1500)
    config = MaskingConfig(mask_id=MASK, vocab_size=VOCAB, special_ids=(CLS, SEP, PAD))
    masked, positions, labels, weights = mask_tokens(ids, lengths, config, rng)
    chosen = weights > 0
    counts = chosen.sum(1)
    candidates = lengths - 2
    np.testing.assert_array_equal(counts, np.maximum(1, np.round(candidates * 0.15)))
    rows = np.nonzero(chosen)[0]
    pos = positions[chosen]
    assert np.all(pos > 0) and np.all(pos < lengths[rows] - 1), 'a special token was masked'
    np.testing.assert_array_equal(labels[chosen], ids[rows, pos])
    new = masked[rows, pos]
    total = len(new)
    as_mask = np.mean(new == MASK)
    kept = np.mean(new == ids[rows, pos])
    assert total > 6000
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015  # (a random draw equal to the original: 1e-4 here)
    assert abs(1 - as_mask - kept - 0.1) < 0.015
    untouched = np.ones_like(ids, dtype=bool)
    untouched[rows, pos] = False
    np.testing.assert_array_equal(masked[untouched], ids[untouched])


def test_masking_respects_max_predictions_and_is_redrawn(rng):
    ids, lengths = _batch(rng, rows=20, width=200)
    lengths[:] = 200
    config = MaskingConfig(mask_id=MASK, vocab_size=VOCAB, special_ids=(CLS, SEP, PAD),
                           max_predictions=20)
    _, first, _, weights = mask_tokens(ids, lengths, config, rng)
    assert weights.sum(1).max() == 20
    _, second, _, _ = mask_tokens(ids, lengths, config, rng)
    assert not np.array_equal(first, second)
