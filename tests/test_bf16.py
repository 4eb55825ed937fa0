"""bfloat16 fast path: its graph's types (checked everywhere, no bf16 kernel runs), its numbers
against a numpy encoder that rounds where the graph rounds (only where the CPU runs bf16), and
the refusal elsewhere."""
import json

import mxnet as mx
import numpy as np
import pytest
from scipy.special import erf

from bort import hardware
from bort.hardware import CpuSupport, UnsupportedHardware
from bort.inference.fast import BFLOAT16, FastEncoder, FastModel, fast_weights, load_weights
from bort.model import build_model, param_dict

BF16_HERE = hardware.cpu_support().bf16_usable
needs_bf16 = pytest.mark.skipif(not BF16_HERE, reason='no bfloat16 kernels on this CPU: '
                                + hardware.cpu_support().reason)


def round_bf16(x):
    """float32 -> nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def _ln(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def reference(model, tokens, types, valid, rnd=lambda v: v):
    """The encoder in numpy from GluonNLP's parameters, float64, with ``rnd`` applied where the
    bfloat16 graph rounds: dense inputs, weights, biases and outputs (ffn_1's after GELU).

    tokens, types: (B, L); valid: (B,). Returns sequence outputs (B, L, H) and the pooled
    output (B, H) or None.
    """
    arch, p = model.arch, {k: v.data().asnumpy() for k, v in param_dict(model).items()}
    eps, heads = arch.layer_norm_eps, arch.num_heads

    def dense(x, name, act=None):
        y = rnd(x) @ rnd(p[name + '.weight']).astype(np.float64).T + rnd(p[name + '.bias'])
        return rnd(act(y) if act else y)

    length = tokens.shape[1]
    x = p['word_embed.0.weight'][tokens].astype(np.float64) + p['encoder.position_weight'][:length]
    if arch.token_type_vocab_size:
        x = x + p['token_type_embed.0.weight'][types]
    x = _ln(x, p['encoder.layer_norm.gamma'], p['encoder.layer_norm.beta'], eps)
    pad = np.arange(length)[None, :] >= valid[:, None]                        # (B, L)
    for i in range(arch.num_layers):
        c = f'encoder.transformer_cells.{i}.'
        q, k, v = (dense(x, c + 'attention_cell.proj_' + n) for n in ('query', 'key', 'value'))
        split = lambda t: t.reshape(t.shape[0], length, heads, -1).transpose(0, 2, 1, 3)  # noqa
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])          # (B, A, L, L)
        scores = np.where(pad[:, None, None, :], -np.inf, scores)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        context = (att @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = _ln(x + dense(context, c + 'proj'), p[c + 'layer_norm.gamma'],
                p[c + 'layer_norm.beta'], eps)
        hidden = dense(x, c + 'ffn.ffn_1', act=lambda y: 0.5 * y * (1 + erf(y / np.sqrt(2))))
        x = _ln(x + dense(hidden, c + 'ffn.ffn_2'), p[c + 'ffn.layer_norm.gamma'],
                p[c + 'ffn.layer_norm.beta'], eps)
    x = np.where(pad[..., None], 0.0, x)
    pooled = (np.tanh(x[:, 0] @ p['pooler.weight'].T + p['pooler.bias']) if arch.use_pooler
              else None)
    return x, pooled


@pytest.fixture
def setup(tiny_bert_arch, rng):
    mx.random.seed(3)
    model = build_model(tiny_bert_arch, use_decoder=False)
    tokens = rng.randint(0, tiny_bert_arch.vocab_size, (4, 13))
    types = rng.randint(0, 2, tokens.shape)
    valid = np.array([13, 5, 9, 13])
    return model, tokens, types, valid


def test_round_bf16_matches_amp_cast(rng):
    """The reference rounds as the graph's ``amp_cast`` does (a plain op: runs on any CPU),
    ties to even included; MXNet's ``astype`` truncates instead (why the graph avoids it)."""
    x = np.concatenate([rng.randn(4096).astype(np.float32) * 10 ** rng.uniform(-3, 3, 4096),
                        np.float32([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 255.5, 0.0])])
    x = x.astype(np.float32)
    low = mx.nd.amp_cast(mx.nd.array(x), dtype=BFLOAT16)
    np.testing.assert_array_equal(mx.nd.amp_cast(low, dtype='float32').asnumpy(), round_bf16(x))
    assert np.abs(round_bf16(x) - x).max() > 0  # it did round
    truncated = mx.nd.array(x).astype(BFLOAT16).astype('float32').asnumpy()
    np.testing.assert_array_equal(truncated, (x.view(np.uint32) & 0xFFFF0000).view(np.float32))


def test_dense_weights_rounded_to_nearest(setup):
    model = setup[0]
    encoder = FastEncoder(model.arch, dtype='bfloat16', prefix='fast_')
    encoder.initialize()
    weights = fast_weights(model)
    load_weights(encoder, weights)
    encoder.cast_dense()
    layer = encoder.layers[1]
    for name, param in (('ffn_1.weight', layer.ffn_1.weight), ('qkv.bias', layer.qkv.bias)):
        assert param.dtype == BFLOAT16 and param.data().dtype == BFLOAT16
        np.testing.assert_array_equal(param.data().astype('float32').asnumpy(),
                                      round_bf16(weights['layers.1.' + name]))


def test_reference_matches_the_model_in_float32(setup):
    """The numpy encoder without rounding is GluonNLP's model: the reference is right."""
    model, tokens, types, valid = setup
    seq, pooled = model(mx.nd.array(tokens), mx.nd.array(types), mx.nd.array(valid))
    ref_seq, ref_pooled = reference(model, tokens, types, valid)
    assert np.abs(seq.asnumpy() - ref_seq).max() < 1e-4
    assert np.abs(pooled.asnumpy() - ref_pooled).max() < 1e-4


def _node_types(encoder, arch):
    """{node name: (op, output dtype)} of the encoder's graph, float32 inputs."""
    names = ['data0', 'data1', 'data2']
    out = encoder(*[mx.sym.var(n) for n in names])
    sym = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    internals = sym.get_internals()
    _, types, _ = internals.infer_type(**{n: np.float32 for n in names})
    dtypes = dict(zip(internals.list_outputs(), types))
    nodes = json.loads(sym.tojson(remove_amp_cast=False))['nodes']
    return {n['name']: (n['op'], dtypes.get(n['name'] + '_output', dtypes.get(n['name'])))
            for n in nodes}, [np.dtype(t) for t in sym.infer_type(
                **{n: np.float32 for n in names})[1]]


@pytest.mark.parametrize('fused', [False, True])
def test_bf16_graph_types(setup, fused):
    """Dense layers (weights and outputs) in bfloat16, everything else float32: checked by
    MXNet's type inference on the graph, which runs no kernel."""
    model, arch = setup[0], setup[0].arch
    if fused and not _fused_available():
        pytest.skip('fused operators cannot be built here')
    encoder = FastEncoder(arch, dtype='bfloat16', fused_ops=fused, prefix='fast_')
    encoder.initialize()
    load_weights(encoder, fast_weights(model))
    encoder.cast_dense()
    nodes, outputs = _node_types(encoder, arch)
    assert all(t == np.dtype(np.float32) for t in outputs)
    dense = {k: v for k, v in nodes.items() if v[0] == 'FullyConnected'}
    layer_dense = {k for k in dense if k != 'fast_pooler_fwd'}
    assert len(layer_dense) == 4 * arch.num_layers
    assert all(dense[k][1] == BFLOAT16 for k in layer_dense)
    assert all(np.dtype(dense[k][1]) == np.float32 for k in set(dense) - layer_dense)  # pooler
    weights = {k: t for k, (op, t) in nodes.items() if op == 'null' and k.endswith('weight')}
    for k, t in weights.items():
        want = BFLOAT16 if k.split('_')[1].isdigit() else np.dtype(np.float32)
        assert np.dtype(t) == want, k
    casts = [k for k, (op, _) in nodes.items() if op == 'amp_cast']
    # Into bf16 before qkv, proj, ffn_1; back after qkv, proj, ffn_2 (GELU output stays bf16).
    assert len(casts) == 6 * arch.num_layers
    for op in ('LayerNorm', 'softmax', '_contrib_interleaved_matmul_selfatt_qk',
               '_contrib_interleaved_matmul_selfatt_valatt', 'bort_add_layer_norm'):
        for name, (kind, t) in nodes.items():
            if kind == op:
                assert np.dtype(t) == np.float32, name
    for param in encoder.collect_params().values():
        dense = param.name.split('_')[1].isdigit() and '_ln_' not in param.name
        want = BFLOAT16 if dense else np.float32
        assert np.dtype(param.data().dtype) == np.dtype(want), param.name


def _fused_available():
    from bort.inference.kernels import load_fused_ops  # pylint: disable=import-outside-toplevel
    return load_fused_ops()


def test_float32_graph_has_no_bf16(setup):
    model = setup[0]
    encoder = FastEncoder(model.arch, prefix='fast_')
    encoder.initialize()
    encoder.cast_dense()  # a no-op in float32
    nodes, _ = _node_types(encoder, model.arch)
    assert not [k for k, (op, t) in nodes.items() if op == 'amp_cast' or t == BFLOAT16]


def test_refused_before_anything_is_built(setup, monkeypatch):
    monkeypatch.setattr(hardware, '_DECISION', CpuSupport(False, False, False, False,
                                                          'float32: CPU lacks bfloat16'))
    with pytest.raises(UnsupportedHardware, match='CPU lacks bfloat16'):
        FastModel.from_model(setup[0], dtype='bfloat16')
    with pytest.raises(ValueError, match='dtype'):
        FastModel.from_model(setup[0], dtype='float16')


@needs_bf16
@pytest.mark.parametrize('backend', ['MKLDNN', None])
def test_bf16_matches_the_rounding_reference(setup, backend):
    """Where bf16 runs: close to numpy with the graph's roundings (differences: float32
    accumulation order, a few one-ulp flips), and within a stated tolerance of float32."""
    model, tokens, types, valid = setup
    fast = FastModel.from_model(model, dtype='bfloat16', backend=backend)
    seq, pooled = (o.asnumpy() for o in fast(tokens, types, valid))
    ref_seq, ref_pooled = reference(model, tokens, types, valid, rnd=round_bf16)
    exact, _ = reference(model, tokens, types, valid)
    to_ref, to_fp32 = np.abs(seq - ref_seq), np.abs(seq - exact)
    assert np.median(to_ref) < 1e-3 and to_ref.max() < 0.05
    assert to_fp32.max() < 0.1
    assert np.abs(pooled - ref_pooled).max() < 0.05
    assert np.all(seq[1, 5:] == 0)
    weights = fast.weights()
    np.testing.assert_array_equal(weights['layers.0.qkv.weight'],
                                  round_bf16(fast_weights(model)['layers.0.qkv.weight']))
