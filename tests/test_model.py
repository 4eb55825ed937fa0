import mxnet as mx
import numpy as np
import pytest

from bort.model import CheckpointMismatchError, build_model, load_model, load_params, save_model


def _inputs(rng, arch, batch=3, length=10):
    tokens = mx.nd.array(rng.randint(0, arch.vocab_size, (batch, length)))
    valid = mx.nd.array([length, 4, 7][:batch])
    return tokens, valid


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize('family', ['roberta', 'bert'])
@pytest.mark.parametrize('use_decoder', [True, False])
def test_hybridized_equals_eager(family, use_decoder, tiny_arch, tiny_bert_arch, rng):
    arch = tiny_arch if family == 'roberta' else tiny_bert_arch
    model = build_model(arch, use_decoder=use_decoder)
    tokens, valid = _inputs(rng, arch)
    eager = _as_list(model(tokens, None, valid))
    shapes = [o.shape for o in eager]
    expected = [(3, 10, 32)] + ([(3, 32)] if arch.use_pooler else []) \
        + ([(3, 10, 99)] if use_decoder else [])
    assert shapes == expected
    model.hybridize(static_alloc=True)
    hybrid = _as_list(model(tokens, None, valid))
    for a, b in zip(eager, hybrid):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-6)


def test_padding_does_not_leak(tiny_arch, rng):
    """A row's valid outputs do not depend on what lies past its valid length."""
    model = build_model(tiny_arch, use_decoder=False)
    tokens, valid = _inputs(rng, tiny_arch)
    other = tokens.copy()
    other[1, 4:] = 5
    a, b = model(tokens, None, valid), model(other, None, valid)
    np.testing.assert_allclose(a[1, :4].asnumpy(), b[1, :4].asnumpy(), atol=1e-6)
    assert float(a[1, 4:].abs().sum().asscalar()) == 0.0


def test_masked_positions_decode_the_same_as_full(tiny_arch, rng):
    model = build_model(tiny_arch)
    tokens, valid = _inputs(rng, tiny_arch)
    positions = mx.nd.array([[0, 3], [1, 2], [5, 6]])
    _, full = model(tokens, None, valid)
    _, picked = model(tokens, None, valid, positions)
    for row in range(3):
        for j, pos in enumerate(positions[row].asnumpy().astype(int)):
            np.testing.assert_allclose(picked[row, j].asnumpy(), full[row, pos].asnumpy(),
                                       atol=1e-5)


def test_save_load_round_trip_released_layout(tmp_path, tiny_arch, rng):
    model = build_model(tiny_arch)
    tokens, valid = _inputs(rng, tiny_arch)
    before = _as_list(model(tokens, None, valid))
    save_model(model, str(tmp_path))
    names = set(mx.nd.load(str(tmp_path / 'model.params')))
    assert {'word_embed.0.weight', 'encoder.position_weight', 'encoder.layer_norm.gamma',
            'encoder.transformer_cells.1.attention_cell.proj_query.weight',
            'encoder.transformer_cells.0.proj.bias', 'encoder.transformer_cells.0.layer_norm.beta',
            'encoder.transformer_cells.0.ffn.ffn_1.weight',
            'encoder.transformer_cells.0.ffn.layer_norm.gamma', 'decoder.3.bias'} <= names
    loaded = load_model(str(tmp_path))
    assert loaded.arch == tiny_arch and loaded.has_decoder
    after = _as_list(loaded(tokens, None, valid))
    for a, b in zip(before, after):
        assert np.array_equal(a.asnumpy(), b.asnumpy())
    encoder_only = load_model(str(tmp_path), use_decoder=False)
    assert np.array_equal(_as_list(encoder_only(tokens, None, valid))[0].asnumpy(),
                          before[0].asnumpy())


def test_released_file_without_tied_alias_loads(tmp_path, tiny_arch):
    """The decoder's output weight is tied to the word embedding: one name in the file is
    enough."""
    model = build_model(tiny_arch)
    save_model(model, str(tmp_path))
    arrays = mx.nd.load(str(tmp_path / 'model.params'))
    del arrays['decoder.3.weight']
    mx.nd.save(str(tmp_path / 'bort.params'), arrays)
    other = build_model(tiny_arch, initialize=False)
    load_params(other, str(tmp_path / 'bort.params'))
    assert np.array_equal(other.decoder[3].weight.data().asnumpy(),
                          model.word_embed[0].weight.data().asnumpy())


def test_wrong_shape_names_parameter_and_shapes(tmp_path, tiny_arch):
    save_model(build_model(tiny_arch.replace(hidden_size=48)), str(tmp_path))
    target = build_model(tiny_arch, initialize=False)
    with pytest.raises(CheckpointMismatchError) as err:
        load_params(target, str(tmp_path / 'model.params'))
    text = str(err.value)
    assert 'encoder.transformer_cells.0.ffn.ffn_1.weight' in text
    assert '(48, 32)' in text and '(64, 32)' in text


def test_missing_and_unexpected_parameters_are_listed(tmp_path, tiny_arch):
    save_model(build_model(tiny_arch.replace(num_layers=1), use_decoder=False), str(tmp_path))
    with pytest.raises(CheckpointMismatchError, match='missing parameter encoder.transformer_cells.1'):
        load_params(build_model(tiny_arch, use_decoder=False, initialize=False),
                    str(tmp_path / 'model.params'))
    with pytest.raises(CheckpointMismatchError, match='unexpected parameter decoder'):
        save_model(build_model(tiny_arch), str(tmp_path / 'full'))
        load_params(build_model(tiny_arch, use_decoder=False, initialize=False),
                    str(tmp_path / 'full' / 'model.params'))


def test_every_random_weight_is_bert_normal(tiny_bert_arch):
    """BERT's initialisation everywhere: weights N(0, 0.02) (query/key/value and the MLM
    transform included: MXNet's default U(−0.07, 0.07) there has std 0.040), biases and
    LayerNorm shifts 0, LayerNorm scales 1. Checked by the Kolmogorov-Smirnov test against
    scipy's normal distribution."""
    from scipy import stats
    from bort.model import param_dict
    mx.random.seed(0)
    model = build_model(tiny_bert_arch.replace(units=64, hidden_size=128), use_decoder=True)
    for name, param in param_dict(model).items():
        values = param.data().asnumpy().ravel()
        if name.endswith(('bias', 'beta')):
            assert not values.any(), name
        elif name.endswith('gamma'):
            np.testing.assert_array_equal(values, 1.0, err_msg=name)
        else:
            assert values.size >= 64, name
            assert stats.kstest(values, 'norm', args=(0, 0.02)).pvalue > 1e-4, name


@pytest.mark.parametrize('place', ['before_norm', 'after_norm'])
@pytest.mark.parametrize('fused', [True, False])
def test_embedding_dropout_sits_where_the_architecture_says(place, fused, tiny_bert_arch, rng,
                                                            monkeypatch):
    """The first layer's input in training, against numpy: after_norm is LayerNorm(word + type
    + position) with some entries zeroed and the rest scaled by 1/(1−p) (Hugging Face's order);
    before_norm (GluonNLP's) normalises the dropped-out sum, so no entry is zero and each row has
    mean 0 and the LayerNorm's scale."""
    from bort.model import BortModel
    monkeypatch.setattr(BortModel, 'fused_kernels', fused)
    p = 0.5
    arch = tiny_bert_arch.replace(dropout=p, embedding_dropout=place)
    model = build_model(arch, use_decoder=False)
    tokens, valid = _inputs(rng, arch)
    captured = []
    model.encoder.transformer_cells[0].register_forward_pre_hook(
        lambda block, args: captured.append(args[0].asnumpy()))
    with mx.autograd.record(train_mode=True):
        model(tokens, mx.nd.zeros_like(tokens), valid)
    got = captured[0].transpose(1, 0, 2)  # (B, L, H): the encoder runs length-major
    weights = {name: prm.data().asnumpy().astype(np.float64)
               for name, prm in model._collect_params_with_prefix().items()}
    ids = tokens.asnumpy().astype(int)
    summed = (weights['word_embed.0.weight'][ids] + weights['token_type_embed.0.weight'][0]
              + weights['encoder.position_weight'][np.arange(ids.shape[1])])
    mean = summed.mean(-1, keepdims=True)
    normed = (summed - mean) / np.sqrt(summed.var(-1, keepdims=True) + arch.layer_norm_eps)
    normed = normed * weights['encoder.layer_norm.gamma'] + weights['encoder.layer_norm.beta']
    zero = got == 0
    if place == 'after_norm':
        assert 0.35 < zero.mean() < 0.65
        np.testing.assert_allclose(got[~zero], normed[~zero] / (1 - p), rtol=1e-4, atol=1e-5)
    else:
        assert not zero.any()
        np.testing.assert_allclose(got.mean(-1), 0, atol=1e-4)
        assert np.abs(got - normed).max() > 0.1  # the noise went through the normalisation
