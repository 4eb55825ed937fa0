"""Checkpoint conversion against transformers: same outputs on padded batches, exact round trips."""
import json
import os
import shutil

import mxnet as mx
import numpy as np
import pytest

from bort.arch import Architecture
from bort.interop.convert import export_hf, import_gluon, import_hf, main, model_arrays
from bort.interop.hf import UnsupportedCheckpointError
from bort.model import CheckpointMismatchError, build_model, load_model, param_dict, save_model
from bort.tokenizers import load_tokenizer

torch = pytest.importorskip('torch', reason='the optional extra (pip install .[hf]) is not '
                            'installed: torch is needed to compare with transformers')
transformers = pytest.importorskip('transformers', reason='the optional extra (pip install .[hf]) '
                                                          'is not installed')

TOL = 1e-4
VALID = [11, 7, 3]  # valid lengths per row of the padded batch
SEQ = 11
BERT_WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(94)]


def _randomise_torch(model, seed=0):
    """Non-trivial values everywhere: LayerNorm gains near 1, every bias non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(noise + 1.0 if name.endswith(('LayerNorm.weight', 'layer_norm.weight'))
                    else noise)


def _randomise_gluon(model, seed=0):
    rng = np.random.RandomState(seed)
    for name, p in param_dict(model).items():
        noise = rng.normal(0, 0.1, p.shape).astype(np.float32)
        p.set_data(mx.nd.array(noise + 1.0 if name.endswith('gamma') else noise))


def _batch(vocab_size, pad_id, token_types):
    rng = np.random.RandomState(1)
    ids = np.full((len(VALID), SEQ), pad_id, np.int64)
    types = np.zeros((len(VALID), SEQ), np.int64)
    for row, n in enumerate(VALID):
        ids[row, :n] = rng.randint(5, vocab_size, n)
        if token_types:
            types[row, n // 2:n] = 1
    mask = (np.arange(SEQ)[None, :] < np.array(VALID)[:, None]).astype(np.int64)
    return ids, types, mask


def _ours(model, ids, types):
    """Outputs of our model as numpy: sequence, pooled (or None), logits (or None)."""
    arch = model.arch
    out = model(mx.nd.array(ids), mx.nd.array(types) if arch.token_type_vocab_size else None,
                mx.nd.array(VALID))
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    seq = out.pop(0).asnumpy()
    pooled = out.pop(0).asnumpy() if arch.use_pooler else None
    logits = out.pop(0).asnumpy() if model.has_decoder else None
    return seq, pooled, logits


def _theirs(model, ids, types, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), output_hidden_states=True)
    seq = out.hidden_states[-1]
    base = getattr(model, model.base_model_prefix, model)
    with torch.no_grad():
        pooled = base.pooler(seq).numpy() if getattr(base, 'pooler', None) is not None else None
    seq = seq.numpy()
    logits = out.logits.numpy() if hasattr(out, 'logits') else getattr(
        out, 'prediction_logits', None)
    return seq, pooled, None if logits is None else np.asarray(logits)


def _max_diff(a, b):
    """Max |a - b| over the valid positions of each row (padded outputs are not compared)."""
    return max(float(np.abs(a[r, :n] - b[r, :n]).max()) for r, n in enumerate(VALID))


def _bert_tokenizer_files(folder):
    with open(os.path.join(folder, 'vocab.txt'), 'w') as f:
        f.writelines(w + '\n' for w in BERT_WORDS)


def _roberta_tokenizer_files(folder):
    tokens = ['<s>', '<pad>', '</s>', '<unk>'] + list('abcdefghij') + ['Ġ', 'Ġa', 'ab', '<mask>']
    with open(os.path.join(folder, 'vocab.json'), 'w') as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(folder, 'merges.txt'), 'w') as f:
        f.write('#version: 0.2\nĠ a\na b\n')


HF_CASES = {
    # name: (model class, family, config overrides)
    'bert_mlm': ('BertForMaskedLM', 'bert', dict(type_vocab_size=2)),
    'bert_pooler': ('BertModel', 'bert', dict(type_vocab_size=3, num_hidden_layers=1)),
    'bert_pretraining': ('BertForPreTraining', 'bert', dict(layer_norm_eps=1e-5)),
    'roberta_mlm': ('RobertaForMaskedLM', 'roberta', dict(type_vocab_size=1)),
    'roberta_pooler': ('RobertaModel', 'roberta', dict(type_vocab_size=1, num_attention_heads=8)),
}


def _hf_checkpoint(tmp_path, case):
    cls_name, family, overrides = HF_CASES[case]
    settings = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=40, layer_norm_eps=1e-12,
                    hidden_act='gelu')
    if family == 'roberta':
        settings.update(pad_token_id=1, max_position_embeddings=42, layer_norm_eps=1e-5)
    settings.update(overrides)
    config_cls = transformers.BertConfig if family == 'bert' else transformers.RobertaConfig
    model = getattr(transformers, cls_name)(config_cls(**settings)).eval()
    _randomise_torch(model)
    if hasattr(model, 'tie_weights'):
        model.tie_weights()
    src = tmp_path / case
    model.save_pretrained(src)
    (_bert_tokenizer_files if family == 'bert' else _roberta_tokenizer_files)(src)
    return model, src, family


@pytest.mark.parametrize('case', sorted(HF_CASES))
def test_import_matches_transformers(tmp_path, case):
    hf_model, src, family = _hf_checkpoint(tmp_path, case)
    ours = import_hf(str(src), str(tmp_path / 'ours'))
    ours = load_model(str(tmp_path / 'ours'))  # what a user gets back from the folder
    pad = 1 if family == 'roberta' else 0
    ids, types, mask = _batch(99, pad, token_types=family == 'bert')
    seq, pooled, logits = _ours(ours, ids, types)
    ref_seq, ref_pooled, ref_logits = _theirs(hf_model, ids, types, mask)
    diffs = {'hidden': _max_diff(seq, ref_seq)}
    if ref_pooled is not None:
        assert ours.arch.use_pooler
        diffs['pooled'] = float(np.abs(pooled - ref_pooled).max())
    else:
        assert not ours.arch.use_pooler
    assert ours.has_decoder == (ref_logits is not None)
    assert ours.arch.embedding_dropout == 'after_norm'  # Hugging Face's order, kept in arch.json
    if ref_logits is not None:
        diffs['logits'] = _max_diff(logits, ref_logits)
    print(case, diffs)
    assert max(diffs.values()) <= TOL, diffs
    tok = load_tokenizer(str(tmp_path / 'ours'))
    assert tok.kind == ('wordpiece' if family == 'bert' else 'byte_bpe')
    if family == 'roberta':
        assert ours.arch.max_length == 40  # 42 rows minus the padding offset of 2


EXPORT_CASES = {
    'bert_like': Architecture(2, 4, 32, 37, vocab_size=99, max_length=40, dropout=0.0,
                              layer_norm_eps=1e-12, token_type_vocab_size=2, use_pooler=True),
    'bort_like': Architecture(3, 2, 32, 24, vocab_size=99, max_length=40, dropout=0.0),
    'one_type_no_head': Architecture(1, 8, 32, 64, vocab_size=99, max_length=16,
                                     token_type_vocab_size=1, use_pooler=True),
}


def _gluon_folder(tmp_path, case, use_decoder=True):
    arch = EXPORT_CASES[case]
    model = build_model(arch, use_decoder=use_decoder)
    _randomise_gluon(model)
    folder = tmp_path / f'{case}_gluon'
    save_model(model, str(folder))
    _bert_tokenizer_files(folder)
    return model, folder


@pytest.mark.parametrize('case,use_decoder', [('bert_like', True), ('bort_like', True),
                                              ('one_type_no_head', False)])
def test_export_matches_transformers_and_round_trips(tmp_path, case, use_decoder):
    model, folder = _gluon_folder(tmp_path, case, use_decoder)
    out = tmp_path / f'{case}_hf'
    export_hf(str(folder), str(out))
    arch = model.arch
    types_on = arch.token_type_vocab_size > 1
    ids, types, mask = _batch(99, 0, token_types=types_on)
    seq, pooled, logits = _ours(model, ids, types)
    auto = transformers.AutoModelForMaskedLM if use_decoder else transformers.AutoModel
    hf_model = auto.from_pretrained(str(out)).eval()
    ref_seq, ref_pooled, ref_logits = _theirs(hf_model, ids, types, mask)
    diffs = {'hidden': _max_diff(seq, ref_seq)}
    if use_decoder:
        diffs['logits'] = _max_diff(logits, ref_logits)
    if arch.use_pooler:
        base = ref_pooled if ref_pooled is not None else _theirs(
            transformers.AutoModel.from_pretrained(str(out)).eval(), ids, types, mask)[1]
        diffs['pooled'] = float(np.abs(pooled - base).max())
    print(case, diffs)
    assert max(diffs.values()) <= TOL, diffs
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.encode('w3 w17', add_special_tokens=False) == [8, 22]
    # Gluon -> HF -> Gluon: the same architecture and bit-identical weights.
    back = import_hf(str(out), str(tmp_path / 'back'))
    assert back.arch.replace(name='') == arch.replace(name='')
    before, after = model_arrays(model), model_arrays(back)
    assert sorted(before) == sorted(after)
    for name in before:
        assert np.array_equal(before[name], after[name]), name


def test_missing_and_extra_tensors_are_listed(tmp_path):
    from safetensors.numpy import load_file, save_file
    _, src, _ = _hf_checkpoint(tmp_path, 'bert_mlm')
    tensors = load_file(str(src / 'model.safetensors'))
    missing = 'bert.encoder.layer.1.attention.self.key.bias'
    del tensors[missing]
    tensors['bert.encoder.layer.0.adapter.weight'] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(src / 'model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(CheckpointMismatchError) as err:
        import_hf(str(src), str(tmp_path / 'out'))
    assert f'missing tensor {missing}' in str(err.value)
    assert 'unexpected tensor bert.encoder.layer.0.adapter.weight' in str(err.value)


def test_unsupported_family_and_missing_files(tmp_path):
    src = tmp_path / 'gpt2'
    src.mkdir()
    (src / 'config.json').write_text(json.dumps({'model_type': 'gpt2'}))
    with pytest.raises(UnsupportedCheckpointError, match='gpt2'):
        import_hf(str(src), str(tmp_path / 'out'))
    (src / 'config.json').write_text(json.dumps({'model_type': 'bert', 'hidden_act': 'gelu_new'}))
    with pytest.raises(UnsupportedCheckpointError, match='gelu_new'):
        import_hf(str(src), str(tmp_path / 'out'))
    with pytest.raises(FileNotFoundError, match='config.json'):
        import_hf(str(tmp_path / 'nowhere'), str(tmp_path / 'out'))


def test_import_gluon_zoo_params(tmp_path):
    """A zoo-named .params file: heads read from the name, NSP head dropped, vocab JSON read."""
    model, folder = _gluon_folder(tmp_path, 'bert_like')
    arrays = {k: v.data() for k, v in param_dict(model).items()}
    arrays['classifier.weight'] = mx.nd.zeros((2, 32))
    path = str(tmp_path / 'bert_2_32_4_toy_uncased.params')
    mx.nd.save(path, arrays)
    vocab = tmp_path / 'toy_uncased.vocab'
    vocab.write_text(json.dumps({'idx_to_token': BERT_WORDS, 'unknown_token': '[UNK]',
                                 'identifiers_to_tokens': {
                                     'padding_token': '[PAD]', 'cls_token': '[CLS]',
                                     'sep_token': '[SEP]', 'mask_token': '[MASK]'}}))
    out = tmp_path / 'imported'
    main(['import', path, str(out), '--vocab', str(vocab)])
    back = load_model(str(out))
    # Dropout is not in the weights: the zoo's 0.1 is assumed.
    assert back.arch.replace(name='') == model.arch.replace(name='', dropout=0.1)
    for name, value in model_arrays(model).items():
        assert np.array_equal(value, model_arrays(back)[name]), name
    tok = load_tokenizer(str(out))
    assert (tok.kind, tok.cls_id, tok.mask_id, tok.lower) == ('wordpiece', 2, 4, True)
    shutil.rmtree(out)
    with pytest.raises(ValueError, match='num_heads'):
        import_gluon(str(folder / 'model.params'), str(out))
