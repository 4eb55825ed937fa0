"""The fused CPU operators (inference and training) against numpy and MXNet's own operators,
inside graphs, and the fallbacks when they are absent."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from bort import kernels as train_kernels
from bort.inference.fast import FastModel
from bort.inference.kernels import OP_ADD_LAYER_NORM, OP_MASKED_SOFTMAX, load_fused_ops
from bort.model import build_model

pytestmark = pytest.mark.skipif(not load_fused_ops(), reason='no C++ compiler to build the op')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(x, residual, gamma, beta, eps, pad):
    """numpy: LayerNorm(x + residual[..., :H]) * gamma + beta, then ``pad`` zero channels."""
    h = x.shape[-1]
    rows = x.reshape(-1, h).astype(np.float64)
    res = residual.reshape(-1, residual.shape[-1])[:, :h].astype(np.float64)
    res = np.repeat(res, rows.shape[0] // res.shape[0], axis=0)
    total = rows + res
    mean = total.mean(axis=1, keepdims=True)
    var = total.var(axis=1, keepdims=True)
    out = (total - mean) / np.sqrt(var + eps) * gamma + beta
    out = np.concatenate([out, np.zeros((out.shape[0], pad))], axis=1)
    return out.reshape(x.shape[:-1] + (h + pad,))


def _op(*arrays, **attrs):
    return getattr(mx.nd, OP_ADD_LAYER_NORM)(*[mx.nd.array(a) for a in arrays], **attrs)


@pytest.mark.parametrize('rows,width,pad', [(7, 32, 0), (5, 48, 16), (64, 1024, 16)])
def test_add_layer_norm_matches_numpy(rng, rows, width, pad):
    x = rng.randn(rows, width).astype(np.float32) * 3 + 1
    # The residual's extra channels hold garbage: only its first H channels may be read.
    residual = rng.randn(rows, width + pad).astype(np.float32)
    gamma, beta = rng.rand(width).astype(np.float32), rng.randn(width).astype(np.float32)
    got = _op(x, residual, gamma, beta, eps=1e-5, pad=pad).asnumpy()
    assert got.shape == (rows, width + pad)
    np.testing.assert_allclose(got, _reference(x, residual, gamma, beta, 1e-5, pad),
                               rtol=1e-4, atol=1e-4)
    assert not got[:, width:].any()


def test_residual_rows_repeat_and_three_axes(rng):
    """Position embeddings (L, H) against rows laid out (L, B): row l*B + b meets row l."""
    length, batch, width = 6, 3, 16
    x = rng.randn(length, batch, width).astype(np.float32)
    positions = rng.randn(length, width).astype(np.float32)
    gamma, beta = np.ones(width, np.float32), np.zeros(width, np.float32)
    flat = _op(x.reshape(-1, width), positions, gamma, beta, eps=1e-12, pad=4).asnumpy()
    expected = _reference(x.reshape(-1, width), positions, gamma, beta, 1e-12, 4)
    np.testing.assert_allclose(flat, expected, rtol=1e-4, atol=1e-4)
    # Brute force for one row: (l=4, b=2) is normalised with position row 4.
    row = x[4, 2] + positions[4]
    np.testing.assert_allclose(flat[4 * batch + 2, :width],
                               (row - row.mean()) / np.sqrt(row.var() + 1e-12), atol=1e-4)
    three = _op(x, x, gamma, beta, eps=1e-12).asnumpy()
    assert three.shape == x.shape
    np.testing.assert_allclose(three, _reference(x, x, gamma, beta, 1e-12, 0), atol=1e-4)


@pytest.mark.parametrize('residual_shape', [(4, 8), (3, 16)])
def test_shape_errors(residual_shape):
    x, gamma = np.zeros((4, 16), np.float32), np.ones(16, np.float32)
    with pytest.raises(mx.base.MXNetError):
        _op(x, np.zeros(residual_shape, np.float32), gamma, gamma).wait_to_read()


def _masked_softmax_reference(scores, valid, heads):
    """numpy: softmax over keys j < valid[n // heads], zeros beyond; uniform when none."""
    out = np.zeros_like(scores, dtype=np.float64)
    for n in range(scores.shape[0]):
        length = int(valid[n // heads])
        if length == 0:
            out[n] = 1.0 / scores.shape[2]
            continue
        kept = scores[n, :, :length].astype(np.float64)
        kept = np.exp(kept - kept.max(axis=1, keepdims=True))
        out[n, :, :length] = kept / kept.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize('keys', [19, 32, 128])  # a generic length and two bucket lengths
def test_masked_softmax_matches_numpy_and_the_additive_mask(rng, keys):
    heads, batch, queries = 3, 4, 5
    scores = (rng.randn(batch * heads, queries, keys) * 8).astype(np.float32)
    valid = np.array([keys, 7, 1, 0], dtype=np.float32)
    got = getattr(mx.nd, OP_MASKED_SOFTMAX)(mx.nd.array(scores), mx.nd.array(valid),
                                            heads=heads).asnumpy()
    np.testing.assert_allclose(got, _masked_softmax_reference(scores, valid, heads),
                               rtol=2e-6, atol=1e-7)
    assert not got[3:6, :, 7:].any()  # item 1's padded keys get exactly 0
    # What the unfused graph computes: the -1e9 additive mask, then softmax.
    mask = (np.arange(keys)[None, :] >= valid[:, None]) * -1e9
    additive = mx.nd.softmax(mx.nd.array(
        scores.reshape(batch, heads, queries, keys) + mask[:, None, None, :]), axis=-1)
    np.testing.assert_allclose(got, additive.asnumpy().reshape(got.shape), atol=1e-6)
    with pytest.raises(mx.base.MXNetError):
        getattr(mx.nd, OP_MASKED_SOFTMAX)(mx.nd.array(scores), mx.nd.array(valid[:3]),
                                          heads=heads).wait_to_read()


def test_inside_a_hybridized_graph_and_no_backward(rng):
    class Block(mx.gluon.HybridBlock):
        def hybrid_forward(self, F, x, r, g, b):  # pylint: disable=arguments-differ
            return getattr(F, OP_ADD_LAYER_NORM)(x * 2, r, g, b, eps=1e-5, pad=2)

    block = Block()
    block.hybridize(static_alloc=True, static_shape=True)
    x, r = rng.randn(3, 8).astype(np.float32), rng.randn(3, 8).astype(np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    got = block(*[mx.nd.array(a) for a in (x, r, g, b)]).asnumpy()
    np.testing.assert_allclose(got, _reference(2 * x, r, g, b, 1e-5, 2), atol=1e-4)
    data = mx.nd.array(x)
    data.attach_grad()
    with mx.autograd.record():
        out = getattr(mx.nd, OP_ADD_LAYER_NORM)(data, mx.nd.array(r), mx.nd.array(g),
                                                mx.nd.array(b))
    with pytest.raises(mx.base.MXNetError, match='inference only'):
        out.backward()
        data.grad.wait_to_read()


def test_fused_and_unfused_fast_paths_agree(tiny_bert_arch, rng):
    wide = tiny_bert_arch.replace(units=1024, num_heads=8, hidden_size=512, num_layers=1)
    for arch in (tiny_bert_arch, wide):
        model = build_model(arch, use_decoder=False)
        tokens = rng.randint(0, arch.vocab_size, (2, 7))
        valid = np.array([7, 3])
        engines = [FastModel.from_model(model, fused_ops=fused, pad_inputs=pad)
                   for fused in (True, False) for pad in (True, False)]
        outs = [engine(tokens, valid_length=valid) for engine in engines]
        for out in outs[1:]:
            for a, b in zip(outs[0], out):
                assert np.abs(a.asnumpy() - b.asnumpy()).max() <= 1e-4


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=REPO, **env)
    return subprocess.run([sys.executable, '-c', code], env=full, capture_output=True,
                          text=True, timeout=300)


def test_fallbacks_without_the_library(tmp_path):
    """Disabled, or with a compiler that fails, the fast path uses MXNet's own operators."""
    code = ('import logging; logging.basicConfig(level=logging.WARNING)\n'
            'from bort.arch import Architecture\n'
            'from bort.inference.fast import FastModel\nfrom bort.model import build_model\n'
            'arch = Architecture(num_layers=1, num_heads=2, units=8, hidden_size=16, '
            'vocab_size=20, max_length=8)\n'
            'fast = FastModel.from_model(build_model(arch, use_decoder=False))\n'
            'print("fused", fast.fused_ops, fast([[1, 2, 3]]).shape)\n')
    disabled = _run(code, BORT_FUSED_OPS='0')
    assert disabled.returncode == 0, disabled.stderr[-2000:]
    assert 'fused False (1, 3, 8)' in disabled.stdout
    broken = _run(code, CXX='false', BORT_CACHE=str(tmp_path))
    assert broken.returncode == 0, broken.stderr[-2000:]
    assert 'fused False (1, 3, 8)' in broken.stdout
    assert 'fused operators unavailable' in broken.stderr
    assert not [p for p in os.listdir(tmp_path / 'kernels') if p.endswith('.so')]


# -- the training operators (bort.kernels) ---------------------------------------------------------
needs_train_ops = pytest.mark.skipif(not train_kernels.load_train_ops(),
                                     reason='no C++ compiler to build the training ops')


def _layer_norm_reference(x, gamma, beta, eps, dout):
    """numpy float64: LayerNorm over the last axis and its gradients for ``dout``."""
    x, dout = x.astype(np.float64), dout.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dout * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    axes = tuple(range(x.ndim - 1))
    return xhat * gamma + beta, dx, (dout * xhat).sum(axes), dout.sum(axes)


def _with_grads(fn, *arrays, dout=None, grad_req='write'):
    """fn's output and the gradients of its inputs for the head gradient ``dout``."""
    inputs = [mx.nd.array(a) for a in arrays]
    for a in inputs:
        a.attach_grad(grad_req=grad_req)
    with mx.autograd.record():
        out = fn(*inputs)
    out.backward(None if dout is None else mx.nd.array(dout))
    return out.asnumpy(), [a.grad.asnumpy() for a in inputs]


@needs_train_ops
@pytest.mark.parametrize('case', ['random', 'constant_rows', 'large_offset', 'three_axes'])
def test_layer_norm_forward_and_gradients(rng, case):
    shape = (4, 5, 24) if case == 'three_axes' else (9, 40)
    x = rng.randn(*shape).astype(np.float32) * 3 + 1
    if case == 'constant_rows':  # variance 0: rstd = 1 / sqrt(eps), xhat = 0
        x[:3] = 2.5
    if case == 'large_offset':  # the mean is subtracted before squaring
        x = (x + 1e4).astype(np.float32)
    gamma = rng.rand(shape[-1]).astype(np.float32) + 0.5
    beta = rng.randn(shape[-1]).astype(np.float32)
    dout = rng.randn(*shape).astype(np.float32)
    out, grads = _with_grads(lambda *a: train_kernels.layer_norm(mx.nd, *a, 1e-5), x, gamma,
                             beta, dout=dout)
    expected = _layer_norm_reference(x, gamma, beta, 1e-5, dout)
    tol = dict(rtol=1e-3, atol=2e-3) if case == 'large_offset' else dict(rtol=1e-4, atol=1e-5)
    for got, want in zip([out] + grads, expected):
        np.testing.assert_allclose(got, want, **tol)
    # and MXNet's own operator, the plain path
    plain, plain_grads = _with_grads(lambda d, g, b: mx.nd.LayerNorm(d, g, b, eps=1e-5), x, gamma,
                                     beta, dout=dout)
    if case == 'large_offset':  # MXNet's float32 kernel is the less accurate one here (~5e-3)
        tol = dict(rtol=1e-2, atol=1e-2)
    for got, want in zip([out] + grads, [plain] + plain_grads):
        np.testing.assert_allclose(got, want, **tol)


@needs_train_ops
def test_layer_norm_parameter_gradients_add(rng):
    """grad_req 'add' (gradient accumulation) on gamma and beta: the identity in front adds."""
    x = rng.randn(6, 16).astype(np.float32)
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)
    params = [mx.nd.array(gamma), mx.nd.array(beta)]
    for p in params:
        p.attach_grad(grad_req='add')
    for _ in range(2):
        with mx.autograd.record():
            out = train_kernels.layer_norm(mx.nd, mx.nd.array(x), *params, 1e-12)
        out.backward(mx.nd.array(x))
    _, _, dgamma, dbeta = _layer_norm_reference(x, gamma, beta, 1e-12, x)
    np.testing.assert_allclose(params[0].grad.asnumpy(), 2 * dgamma, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params[1].grad.asnumpy(), 2 * dbeta, rtol=1e-4, atol=1e-5)


@needs_train_ops
def test_dropout_mask_scale_gradient_and_seed(rng):
    x = rng.randn(64, 257).astype(np.float32)
    x[0, :10] = 0  # zeros: dropped or kept, the gradient follows the mask, not the value
    dout = rng.randn(*x.shape).astype(np.float32)
    p = 0.3

    def run(seed):
        mx.random.seed(seed)
        return _with_grads(lambda a: train_kernels.dropout(mx.nd, a, p, train_kernels.train_mode(
            mx.nd)), x, dout=dout)

    out, (dx,) = run(1)
    kept = dx != 0
    assert abs(kept.mean() - (1 - p)) < 0.01  # 16k draws: sigma ~0.004
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    assert not out[~kept].any()
    np.testing.assert_allclose(dx[kept], dout[kept] / (1 - p), rtol=1e-6)
    again, (dx_again,) = run(1)  # the same seed: the same mask (resume)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(dx_again, dx)
    other, _ = run(2)
    assert (other != out).any()
    # inference (not recording): the identity
    inference = train_kernels.dropout(mx.nd, mx.nd.array(x), p, train_kernels.train_mode(mx.nd))
    np.testing.assert_array_equal(inference.asnumpy(), x)


def _attention_reference(qkv, lengths, heads, dcontext):
    """numpy float64: interleaved self-attention with padded keys masked, and d qkv."""
    length, batch, width = qkv.shape
    d = width // (3 * heads)
    x = qkv.astype(np.float64).reshape(length, batch, heads, 3, d)
    q, k, v = (x[:, :, :, i].transpose(1, 2, 0, 3) for i in range(3))  # (B, A, L, d)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    valid = np.where((lengths <= 0) | (lengths > length), length, lengths).astype(int)
    padded = np.arange(length)[None, :] >= valid[:, None]  # (B, L)
    scores = np.where(padded[:, None, None, :], -np.inf, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = probs @ v  # (B, A, L, d)
    dc = dcontext.astype(np.float64).reshape(length, batch, heads, d).transpose(1, 2, 0, 3)
    dprobs = dc @ v.transpose(0, 1, 3, 2)
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdims=True)) / np.sqrt(d)
    grads = [dscores @ k, dscores.transpose(0, 1, 3, 2) @ q, probs.transpose(0, 1, 3, 2) @ dc]
    dqkv = np.stack([g.transpose(2, 0, 1, 3) for g in grads], axis=3).reshape(qkv.shape)
    return (context.transpose(2, 0, 1, 3).reshape(length, batch, heads * d),
            probs.reshape(batch * heads, length, length), dqkv)


def _attention(qkv, lengths, heads, p):
    """The fused operator's context and gradient (head gradient: ``_attention.dcontext``)."""
    return _with_grads(lambda a: train_kernels.self_attention(
        mx.nd, a, mx.nd.array(lengths), heads, p, train_kernels.train_mode(mx.nd)), qkv,
        dout=_attention.dcontext)


@needs_train_ops
@pytest.mark.parametrize('length,batch,heads,d', [(13, 3, 2, 24), (32, 2, 3, 32), (7, 2, 1, 5),
                                                  (40, 1, 2, 64)])
def test_self_attention_matches_numpy(rng, length, batch, heads, d):
    """Shapes off the 16-float vectors included; a row of one key, one of all keys, one of none."""
    qkv = (rng.randn(length, batch, 3 * heads * d) * 2).astype(np.float32)
    lengths = np.array([length, 1, 0][:batch], np.float32)
    _attention.dcontext = rng.randn(length, batch, heads * d).astype(np.float32)
    context, (dqkv,) = _attention(qkv, lengths, heads, 0.0)
    expected = _attention_reference(qkv, lengths, heads, _attention.dcontext)
    np.testing.assert_allclose(context, expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dqkv, expected[2], rtol=1e-4, atol=1e-5)


@needs_train_ops
def test_self_attention_dropout_mask_gradient_and_non_finite(rng):
    """Values that are one-hot rows make the context the weights themselves: W = P * keep / (1 - p)
    exactly, padded keys 0; the gradient through the same mask (recomputed in the backward)."""
    length, batch, heads, d, p = 16, 2, 1, 16, 0.25
    qkv = rng.randn(length, batch, 3 * d).astype(np.float32)
    qkv[:, :, 2 * d:] = np.eye(length, dtype=np.float32)[:, None, :]  # v_j = e_j
    lengths = np.array([16, 9], np.float32)
    _attention.dcontext = rng.randn(length, batch, d).astype(np.float32)
    mx.random.seed(3)
    weights, (dqkv,) = _attention(qkv, lengths, heads, p)
    mx.random.seed(3)
    again, (dqkv_again,) = _attention(qkv, lengths, heads, p)
    np.testing.assert_array_equal(again, weights)  # the same seed, the same mask (resume)
    np.testing.assert_array_equal(dqkv_again, dqkv)
    w = weights.transpose(1, 0, 2)  # (B, L_q, L_k)
    probs = _attention_reference(qkv, lengths, heads, _attention.dcontext)[1]
    keep = (w != 0) | (probs == 0)
    assert 0.65 < keep[probs > 0].mean() < 0.85
    assert not w[1, :, 9:].any()
    np.testing.assert_allclose(w, np.where(keep, probs / (1 - p), 0), rtol=1e-4, atol=1e-6)
    # numpy's gradient through that mask
    x = qkv.astype(np.float64).reshape(length, batch, heads, 3, d)
    q, k, v = (x[:, :, :, i].transpose(1, 2, 0, 3) for i in range(3))
    w64, pr, keep4 = (a.reshape(batch, heads, length, length).astype(np.float64)
                      for a in (w, probs, keep))
    dc = _attention.dcontext.astype(np.float64).reshape(length, batch, heads, d)
    dc = dc.transpose(1, 2, 0, 3)
    dw = (dc @ v.transpose(0, 1, 3, 2)) * keep4 / (1 - p)
    ds = pr * (dw - (dw * pr).sum(-1, keepdims=True)) / np.sqrt(d)
    grads = [ds @ k, ds.transpose(0, 1, 3, 2) @ q, w64.transpose(0, 1, 3, 2) @ dc]
    expected = np.stack([g.transpose(2, 0, 1, 3) for g in grads], axis=3).reshape(qkv.shape)
    np.testing.assert_allclose(dqkv, expected, rtol=1e-4, atol=1e-5)
    # a NaN in the input reaches the output (the step's norm check stops on it)
    qkv[3, 0, 0] = np.nan
    context, _ = _attention(qkv, lengths, heads, 0.0)
    assert np.isnan(context[:, 0]).any()


@needs_train_ops
def test_global_norm_op_against_numpy(rng):
    arrays = [rng.randn(*s).astype(np.float32) for s in [(3,), (70000,), (300, 257), (1,)]]
    expected = np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in arrays))
    got = train_kernels.global_norm([mx.nd.array(a) for a in arrays])
    assert float(got.asscalar()) == pytest.approx(expected, rel=1e-6)
    arrays[1][5] = np.inf
    assert not np.isfinite(train_kernels.global_norm([mx.nd.array(a) for a in arrays]).asscalar())
    arrays[1][5] = np.nan
    assert np.isnan(train_kernels.global_norm([mx.nd.array(a) for a in arrays]).asscalar())


def test_training_falls_back_without_the_library(tmp_path):
    """A compiler that fails: one warning, the model trains with MXNet's own operators."""
    code = ('import logging; logging.basicConfig(level=logging.WARNING)\n'
            'import mxnet as mx\n'
            'from bort.arch import Architecture\nfrom bort.model import build_model\n'
            'arch = Architecture(num_layers=1, num_heads=2, units=8, hidden_size=16, '
            'vocab_size=20, max_length=8, dropout=0.1)\n'
            'model = build_model(arch, use_decoder=False)\nmodel.hybridize(static_alloc=True)\n'
            'for _ in range(2):\n'
            '    with mx.autograd.record():\n'
            '        out = model(mx.nd.array([[1, 2, 3]]), None, mx.nd.array([2])).sum()\n'
            '    out.backward()\n'
            'print("ops", sorted(op for op in mx.nd.__dict__ if op.startswith("bort_")))\n')
    broken = _run(code, CXX='false', BORT_CACHE=str(tmp_path))
    assert broken.returncode == 0, broken.stderr[-2000:]
    assert 'ops []' in broken.stdout
    assert broken.stderr.count('fused operators unavailable') == 1


# -- the losses over the vocabulary ---------------------------------------------------------------
def _log_softmax64(x):
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@needs_train_ops
@pytest.mark.parametrize('teacher,temperature,scale', [(True, 2.0, 3.0), (True, 1.0, 30.0),
                                                       (False, 1.0, 3.0), (True, 0.5, 1.0)])
def test_vocab_losses_match_numpy(rng, teacher, temperature, scale):
    """nll and soft cross-entropy per position, and their gradient for any head gradients,
    against float64 numpy (large logits: the maxima must be subtracted)."""
    shape, vocab = (3, 4), 257
    s = (rng.randn(*shape, vocab) * scale).astype(np.float32)
    t = (rng.randn(*shape, vocab) * scale).astype(np.float32)
    labels = rng.randint(0, vocab, shape)
    labels[0, :2] = s[0, :2].argmax(-1)  # two positions predicted right
    g_nll, g_ce = rng.randn(*shape), rng.randn(*shape)
    log_p = _log_softmax64(s)
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    q = np.exp(_log_softmax64(t / temperature))
    ce = -(q * _log_softmax64(s / temperature)).sum(-1) if teacher else np.zeros(shape)
    onehot = np.eye(vocab)[labels]
    grad = g_nll[..., None] * (np.exp(log_p) - onehot)
    if teacher:
        grad += g_ce[..., None] / temperature * (np.exp(_log_softmax64(s / temperature)) - q)

    x = mx.nd.array(s)
    x.attach_grad()
    with mx.autograd.record():
        got_nll, got_ce, hit = train_kernels.vocab_losses(
            mx.nd, x, mx.nd.array(t) if teacher else None, mx.nd.array(labels, dtype='int32'),
            temperature, hits=True)
        head = (got_nll * mx.nd.array(g_nll)).sum() + (got_ce * mx.nd.array(g_ce)).sum()
    head.backward()
    np.testing.assert_allclose(got_nll.asnumpy(), nll, rtol=2e-5, atol=2e-5 * scale)
    np.testing.assert_allclose(got_ce.asnumpy(), ce, rtol=2e-5, atol=2e-5 * scale)
    np.testing.assert_allclose(x.grad.asnumpy(), grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(hit.asnumpy(), s.argmax(-1) == labels)
    assert hit.asnumpy()[0, :2].all()


@needs_train_ops
@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sparse_soft_cross_entropy_matches_numpy(rng, temperature):
    """Against the dense target built in numpy: k (id, probability) pairs, the tail elsewhere."""
    rows, vocab, k = 5, 301, 17
    s = (rng.randn(rows, vocab) * 3).astype(np.float32)
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(rows)])
    probs = rng.dirichlet(np.ones(k), rows) * 0.9
    tail = (1 - probs.sum(1)) / (vocab - k)
    tail[0] = 0.0  # a row whose target is its k tokens only (mass 0.9: not renormalised)
    target = np.repeat(tail[:, None], vocab, 1)
    np.put_along_axis(target, ids, probs, 1)
    log_p = _log_softmax64(s / temperature)
    ce = -(target * log_p).sum(1)
    g = rng.randn(rows)
    grad = g[:, None] / temperature * (target.sum(1, keepdims=True) * np.exp(log_p) - target)

    x = mx.nd.array(s)
    x.attach_grad()
    with mx.autograd.record():
        got = train_kernels.sparse_soft_cross_entropy(
            x, mx.nd.array(ids, dtype='int32'), mx.nd.array(probs), mx.nd.array(tail),
            temperature)
        head = (got * mx.nd.array(g)).sum()
    head.backward()
    np.testing.assert_allclose(got.asnumpy(), ce, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.asnumpy(), grad, rtol=1e-4, atol=1e-6)


@needs_train_ops
def test_the_fused_losses_equal_the_generic_ones(rng, monkeypatch):
    """kd_loss and topk_soft_cross_entropy give the same values and gradients with the fused
    operators as with MXNet's own (BortModel.fused_kernels off)."""
    from bort.model import BortModel
    from bort.pretrain import losses
    b, m, vocab, k = 2, 5, 400, 30
    s = (rng.randn(b, m, vocab) * 2).astype(np.float32)
    t = (rng.randn(b, m, vocab) * 2).astype(np.float32)
    labels = mx.nd.array(rng.randint(0, vocab, (b, m)), dtype='int32')
    weights = mx.nd.array((rng.rand(b, m) > 0.3).astype(np.float32))
    ids = np.argsort(-t.reshape(-1, vocab), 1)[:, :k]
    top = np.take_along_axis(t.reshape(-1, vocab), ids, 1)
    lse = np.log(np.exp(t.reshape(-1, vocab) / 2.0).sum(1))
    results = []
    for fused in (True, False):
        monkeypatch.setattr(BortModel, 'fused_kernels', fused)
        _, grads_kd = _with_grads(lambda x: losses.kd_loss(
            mx.nd, x, mx.nd.array(t), labels, weights, 0.1, 0.5, 2.0)[0], s)
        values = [float(v.asscalar()) for v in losses.kd_loss(
            mx.nd, mx.nd.array(s), mx.nd.array(t), labels, weights, 0.1, 0.5, 2.0)]
        value_top, grads_top = _with_grads(lambda x: losses.topk_soft_cross_entropy(
            x, mx.nd.array(top), mx.nd.array(ids, dtype='int32'), 2.0, mx.nd.array(lse)),
            s.reshape(-1, vocab))
        results.append((values, grads_kd[0], float(value_top), grads_top[0]))
    (v1, g1, t1, h1), (v2, g2, t2, h2) = results
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-7)
    assert t1 == pytest.approx(t2, rel=1e-5)
    np.testing.assert_allclose(h1, h2, rtol=1e-4, atol=1e-7)
