"""The fast inference path gives the plain model's outputs; bucketing restores input order."""
import mxnet as mx
import numpy as np
import pytest

from bort.batching import DEFAULT_BUCKETS, bucket_batches, pad_batch
from bort.inference.fast import (PAD_CHANNELS, FastEncoder, FastModel, fast_weights, load_fast,
                                 load_weights, padded_width)
from bort.inference.latency import set_threads
from bort.model import build_model, save_model

TOL = 1e-4


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _plain(model, tokens, valid, types=None):
    return _as_list(model(mx.nd.array(tokens), None if types is None else mx.nd.array(types),
                          mx.nd.array(valid)))


@pytest.fixture(params=['roberta', 'bert'])
def arch(request, tiny_arch, tiny_bert_arch):
    return tiny_arch if request.param == 'roberta' else tiny_bert_arch


@pytest.mark.parametrize('backend', ['MKLDNN', None])
def test_fast_matches_plain_on_padded_batches(arch, rng, backend):
    mx.random.seed(1)
    model = build_model(arch, use_decoder=False)
    model.hybridize()
    fast = FastModel.from_model(model, backend=backend)
    tokens = rng.randint(0, arch.vocab_size, (5, 17))
    valid = np.array([17, 3, 9, 1, 12])
    types = rng.randint(0, 2, tokens.shape) if arch.token_type_vocab_size else None
    expected = _plain(model, tokens, valid, types)
    got = _as_list(fast(tokens, types, valid))
    assert len(got) == len(expected) == (2 if arch.use_pooler else 1)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert np.abs(e.asnumpy() - g.asnumpy()).max() <= TOL
    # Padded positions are zeroed, as GluonNLP's encoder does.
    assert np.all(got[0].asnumpy()[1, 3:] == 0)


def test_unpadded_graph_matches_plain(arch, rng):
    model = build_model(arch, use_decoder=False)
    fast = FastModel.from_model(model)
    tokens = rng.randint(0, arch.vocab_size, (3, 11))
    full = np.full(3, 11)
    expected = _plain(model, tokens, full)
    for got in (_as_list(fast(tokens, valid_length=full)), _as_list(fast(tokens))):
        for e, g in zip(expected, got):
            assert np.abs(e.asnumpy() - g.asnumpy()).max() <= TOL


def test_shapes_change_between_calls(tiny_arch, rng):
    """Static shapes are per input shape: a new bucket length must still be right."""
    model = build_model(tiny_arch, use_decoder=False)
    fast = FastModel.from_model(model)
    for length in (8, 16, 8, 24):
        tokens = rng.randint(0, tiny_arch.vocab_size, (2, length))
        valid = np.array([length, max(1, length - 5)])
        e, g = _plain(model, tokens, valid)[0], _as_list(fast(tokens, valid_length=valid))[0]
        assert np.abs(e.asnumpy() - g.asnumpy()).max() <= TOL


def test_interleaved_qkv_layout(tiny_arch):
    """Rows of the fused weight are [q_0 k_0 v_0 q_1 k_1 v_1 ...] in head-sized blocks."""
    model = build_model(tiny_arch, use_decoder=False)
    weights = fast_weights(model)
    qkv = weights['layers.0.qkv.weight']
    cell = model.encoder.transformer_cells[0].attention_cell
    heads, size = tiny_arch.num_heads, tiny_arch.units // tiny_arch.num_heads
    blocks = qkv.reshape(heads, 3, size, -1)
    for j, name in enumerate(('query_weight', 'key_weight', 'value_weight')):
        expected = getattr(cell, name).data().asnumpy().reshape(heads, size, -1)
        np.testing.assert_array_equal(blocks[:, j], expected)


def test_from_folder(tiny_arch, rng, tmp_path):
    model = build_model(tiny_arch, use_decoder=True)
    save_model(model, str(tmp_path))
    fast = load_fast(str(tmp_path))
    tokens = rng.randint(0, tiny_arch.vocab_size, (2, 6))
    valid = np.array([6, 4])
    expected = _plain(model, tokens, valid)[0]
    got = _as_list(fast(tokens, valid_length=valid))[0]
    assert np.abs(expected.asnumpy() - got.asnumpy()).max() <= TOL


def test_bucket_batches_cover_every_row_once(rng):
    lengths = rng.randint(1, 300, size=103)
    batches = bucket_batches(lengths, batch_size=8)
    seen = np.concatenate([idx for idx, _ in batches])
    assert sorted(seen.tolist()) == list(range(103))
    for idx, padded in batches:
        assert len(idx) <= 8
        assert padded >= lengths[idx].max()
        assert padded in DEFAULT_BUCKETS
        # The smallest bucket that holds the batch (brute force).
        assert padded == min(b for b in DEFAULT_BUCKETS if b >= lengths[idx].max())
    # Sorted by length: batches are monotone.
    maxima = [lengths[idx].max() for idx, _ in batches]
    assert maxima == sorted(maxima)


def test_bucket_batches_without_buckets_and_with_cap():
    lengths = [5, 700, 3, 40]
    batches = bucket_batches(lengths, batch_size=2, buckets=None, max_length=512)
    assert [(sorted(i.tolist()), p) for i, p in batches] == [([0, 2], 5), ([1, 3], 512)]
    with pytest.raises(ValueError):
        bucket_batches(lengths, batch_size=0)


def test_bucketed_outputs_restore_order(tiny_arch, rng):
    """Scatter each bucket's outputs back: equal to running every row alone."""
    model = build_model(tiny_arch, use_decoder=False)
    fast = FastModel.from_model(model)
    rows = [list(rng.randint(0, tiny_arch.vocab_size, size=n)) for n in (7, 2, 19, 5, 11, 3)]
    firsts = np.zeros((len(rows), tiny_arch.units), dtype=np.float32)
    for idx, length in bucket_batches([len(r) for r in rows], batch_size=4, buckets=(4, 8, 16, 32)):
        tokens, valid = pad_batch([rows[i] for i in idx], length, pad_id=1)
        firsts[idx] = _as_list(fast(tokens, valid_length=valid))[0].asnumpy()[:, 0]
    for i, row in enumerate(rows):
        alone = _plain(model, np.array([row]), np.array([len(row)]))[0].asnumpy()[0, 0]
        assert np.abs(alone - firsts[i]).max() <= TOL


def test_padded_width():
    assert [padded_width(w) for w in (768, 1024, 2048, 3072, 1040, 512)] == \
        [768, 1024 + PAD_CHANNELS, 2048 + PAD_CHANNELS, 3072 + PAD_CHANNELS, 1040, 512]


@pytest.fixture
def wide_arch(tiny_bert_arch):
    """Units and FFN width multiples of 1024: the shapes whose dense inputs are padded."""
    return tiny_bert_arch.replace(num_layers=2, num_heads=8, units=1024, hidden_size=2048)


def test_padded_inputs_match_plain(wide_arch, rng):
    """Zero channels appended to 1024-wide dense inputs change nothing but the speed."""
    mx.random.seed(3)
    model = build_model(wide_arch, use_decoder=False)
    model.hybridize()
    padded = FastModel.from_model(model, pad_inputs=True)
    plain_fast = FastModel.from_model(model, pad_inputs=False)
    named = padded.masked._collect_params_with_prefix()  # pylint: disable=protected-access
    wide = 1024 + PAD_CHANNELS
    assert named['layers.0.qkv.weight'].shape == (3 * 1024, wide)
    assert named['layers.0.proj.weight'].shape == (1024, wide)
    assert named['layers.0.ffn_1.weight'].shape == (2048 + PAD_CHANNELS, wide)
    assert named['layers.1.ffn_2.weight'].shape == (1024, 2048 + PAD_CHANNELS)
    # The padding itself is zero: extra input columns and extra FFN units.
    assert not named['layers.0.qkv.weight'].data().asnumpy()[:, 1024:].any()
    assert not named['layers.0.ffn_1.bias'].data().asnumpy()[2048:].any()
    tokens = rng.randint(0, wide_arch.vocab_size, (3, 9))
    types = rng.randint(0, 2, tokens.shape)
    for valid in (np.array([9, 4, 1]), None):
        expected = _plain(model, tokens, np.full(3, 9) if valid is None else valid, types)
        for engine in (padded, plain_fast):
            got = _as_list(engine(tokens, types, valid))
            for e, g in zip(expected, got):
                assert np.abs(e.asnumpy() - g.asnumpy()).max() <= TOL
    # weights() gives back the logical (unpadded) weights.
    reference = fast_weights(model)
    for name, value in padded.weights().items():
        np.testing.assert_array_equal(value, reference[name])


def test_load_weights_names_misfits(wide_arch, tiny_arch):
    encoder = FastEncoder(tiny_arch, pad_inputs=True)
    encoder.initialize()
    weights = fast_weights(build_model(tiny_arch, use_decoder=False))
    load_weights(encoder, weights)  # nothing padded at width 32: loads as is
    weights['layers.0.qkv.weight'] = np.zeros((96, 40), dtype=np.float32)
    with pytest.raises(ValueError, match=r'layers\.0\.qkv\.weight.*\(96, 40\).*\(96, 32\)'):
        load_weights(encoder, weights)
    del weights['layers.0.qkv.weight']
    with pytest.raises(KeyError, match='layers.0.qkv.weight'):
        load_weights(encoder, weights)


def test_pad_batch():
    tokens, valid = pad_batch([[5, 6, 7], [8], [1, 2, 3, 4, 5]], 4, pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]])
    np.testing.assert_array_equal(valid, [3, 1, 4])


def test_set_threads(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    set_threads(1)
    assert mx.nd.ones((2, 2)).sum().asscalar() == 4
    set_threads(2)
