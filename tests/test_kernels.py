"""The fused CPU operator against numpy, inside graphs, and the fallbacks when it is absent."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

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
