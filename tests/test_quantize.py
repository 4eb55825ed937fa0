"""INT8 quantization: outputs close to float32, argmax kept, a deployable artefact.

Tolerance (random-weight tiny model, width 32): on real positions, the largest absolute error of
the sequence outputs is at most 3 % of their largest magnitude (measured ~0.5-1 %), the logits of
a random 3-class linear head likewise, and the argmax of those logits agrees on >= 90 % of rows.
"""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from bort.inference.fast import FastModel
from bort.inference.kernels import OP_ADD_LAYER_NORM, load_fused_ops
from bort.model import build_model
from bort.inference.quantize import QuantizeConfig, compare_outputs, quantize_encoder
from bort.inference.quantized import CONFIG_FILE, PARAMS_FILE, SYMBOL_FILE, QuantizedModel

REL_TOL = 0.03
ARGMAX_AGREEMENT = 0.9


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.fixture(scope='module')
def setup():
    from bort.arch import Architecture
    arch = Architecture(num_layers=2, num_heads=4, units=32, hidden_size=64, vocab_size=99,
                        max_length=40, dropout=0.0)
    mx.random.seed(0)
    model = build_model(arch, use_decoder=False)
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, arch.vocab_size, (48, 20))
    valid = rng.randint(3, 21, 48)
    return model, tokens, valid, rng.normal(size=(arch.units, 3))


@pytest.mark.parametrize('fused', [False, None])
@pytest.mark.parametrize('mode', ['naive', 'percentile', 'none'])
def test_int8_close_to_float32(setup, mode, fused):
    """With MXNet's LayerNorm and residual '+', and with the fused operator when it loads."""
    model, tokens, valid, head = setup
    qmodel = quantize_encoder(model, tokens[:16], valid[:16],
                              config=QuantizeConfig(calib_mode=mode, fused_ops=fused))
    assert qmodel.info['fused_ops'] == (fused is None and load_fused_ops())
    ref = _first(FastModel.from_model(model)(tokens[16:], valid_length=valid[16:])).asnumpy()
    out = _first(qmodel(tokens[16:], valid_length=valid[16:])).asnumpy()
    seq = compare_outputs(ref, out, valid[16:])
    assert seq['rel_max'] <= REL_TOL
    logits = compare_outputs(ref[:, 0] @ head, out[:, 0] @ head)
    assert logits['rel_max'] <= REL_TOL
    assert logits['argmax_agreement'] >= ARGMAX_AGREEMENT
    # Padding is still masked: zeros beyond each valid length.
    assert np.all(out[0, valid[16]:] == 0)


def test_artefact_round_trip(setup, tmp_path):
    model, tokens, valid, _ = setup
    qmodel = quantize_encoder(model, tokens[:8], valid[:8], config=QuantizeConfig())
    folder = qmodel.save(str(tmp_path / 'int8'))  # before any forward pass: must still work
    before = _first(qmodel(tokens[8:16], valid_length=valid[8:16])).asnumpy()
    for name in (SYMBOL_FILE, PARAMS_FILE, 'arch.json', CONFIG_FILE):
        assert os.path.exists(os.path.join(folder, name))
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        info = json.load(f)
    assert info['calib_mode'] == 'naive' and info['calib_rows'] == 8
    loaded = QuantizedModel.load(folder)
    assert loaded.arch == model.arch.replace(dropout=0.0)
    after = _first(loaded(tokens[8:16], valid_length=valid[8:16])).asnumpy()
    np.testing.assert_allclose(after, before, atol=1e-6)
    graph = json.load(open(os.path.join(folder, SYMBOL_FILE)))
    ops = {node['op'] for node in graph['nodes']}
    assert '_sg_mkldnn_fully_connected' in ops and '_contrib_quantize_v2' in ops
    assert (OP_ADD_LAYER_NORM in ops) == info['fused_ops'] == load_fused_ops()


def test_pooler_and_token_types(tiny_bert_arch, rng, tmp_path):
    """BortModel's call order (tokens, token types, lengths), also after a save and load."""
    mx.random.seed(0)
    model = build_model(tiny_bert_arch, use_decoder=False)
    tokens = rng.randint(0, tiny_bert_arch.vocab_size, (16, 12))
    types = rng.randint(0, 2, tokens.shape)
    valid = rng.randint(2, 13, 16)
    qmodel = quantize_encoder(model, tokens, valid, types)
    seq, pooled = qmodel(tokens, types, valid)
    ref_seq, ref_pooled = FastModel.from_model(model)(tokens, types, valid)
    assert pooled.shape == (16, tiny_bert_arch.units)
    assert compare_outputs(ref_pooled, pooled)['rel_max'] <= REL_TOL
    assert compare_outputs(ref_seq, seq, valid)['rel_max'] <= REL_TOL
    loaded = QuantizedModel.load(qmodel.save(str(tmp_path / 'int8')))
    assert loaded.graph_inputs == ['inputs', 'token_types', 'valid_length']
    again, _ = loaded(tokens, types, valid)
    np.testing.assert_allclose(again.asnumpy(), seq.asnumpy(), atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError):
        QuantizeConfig(calib_mode='minmax')
    with pytest.raises(ValueError):
        QuantizeConfig(calib_mode='none', granularity='channel-wise')
    assert QuantizeConfig(calib_mode='none').granularity == 'tensor-wise'
    assert QuantizeConfig().granularity == 'channel-wise'
    with pytest.raises(ValueError):
        QuantizeConfig(percentile=20)


def test_load_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        QuantizedModel.load(str(tmp_path))


def test_compare_outputs_against_numpy(rng):
    ref = rng.normal(size=(6, 4))
    out = ref + rng.normal(scale=0.01, size=ref.shape)
    out[2] = ref[2][::-1]
    got = compare_outputs(ref, out)
    assert got['max_abs'] == pytest.approx(np.abs(ref - out).max())
    assert got['mean_abs'] == pytest.approx(np.abs(ref - out).mean())
    assert got['argmax_agreement'] == pytest.approx(np.mean(ref.argmax(1) == out.argmax(1)))
    cos = [r @ o / np.linalg.norm(r) / np.linalg.norm(o) for r, o in zip(ref, out)]
    assert got['cosine'] == pytest.approx(np.mean(cos))
    seq = rng.normal(size=(2, 5, 3))
    other = seq.copy()
    other[0, 4] += 10  # beyond valid length 3: ignored
    masked = compare_outputs(seq, other, np.array([3, 5]))
    assert masked['max_abs'] == 0 and 'argmax_agreement' not in masked
    with pytest.raises(ValueError):
        compare_outputs(ref, ref[:2])


def test_command_writes_a_loadable_artefact(tmp_path):
    import toy_glue
    from bort.inference.quantize import main
    folder = toy_glue.pretrained_folder(str(tmp_path / 'pretrained'))
    rng = np.random.RandomState(0)
    text = tmp_path / 'calib.txt'
    text.write_text('\n'.join('\t'.join(toy_glue.example(rng, i % 2)) for i in range(24)) + '\n')
    info = main(['--model', folder, '--calib-text', str(text), '--out', str(tmp_path / 'q'),
                 '--calib-rows', '16', '--eval-rows', '8', '--max-length', '24'])
    held_out = info['agreement_on_held_out_lines']
    assert held_out['rows'] == 8 and held_out['rel_max'] <= REL_TOL
    loaded = QuantizedModel.load(str(tmp_path / 'q'))
    assert loaded.info['calib_rows'] == 16
    assert _first(loaded(np.array([[2, 9, 10, 3]]))).shape == (1, 4, 32)
    # A finished artefact is not replaced unless asked.
    argv = ['--model', folder, '--calib-text', str(text), '--out', str(tmp_path / 'q'),
            '--calib-rows', '8', '--eval-rows', '0', '--max-length', '24']
    with pytest.raises(FileExistsError, match='--overwrite'):
        main(argv)
    assert main(argv + ['--overwrite'])['calib_rows'] == 8
