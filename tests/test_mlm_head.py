"""Fitting an MLM head onto a frozen tiny encoder: it learns, it saves, it reloads."""
import json

import mxnet as mx
import numpy as np

from bort.pretrain.mlm_head import (HeadFitConfig, fit_mlm_head, main, masked_features,
                                    pack_sequences)
from bort.model import build_model, load_model, param_dict, save_model
from bort.tokenizers import WordPieceTokenizer

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
WORDS = [f'w{i}' for i in range(60)]


def _toy(tmp_path, tiny_bert_arch, rng):
    """A frozen random encoder and a corpus where each slot of a sentence has 3 words."""
    tokenizer = WordPieceTokenizer(SPECIALS + WORDS, lower=True)
    arch = tiny_bert_arch.replace(vocab_size=tokenizer.vocab_size)
    # The encoder's weights come from MXNet's global generator: seeded, so the test does not
    # depend on which tests ran before it. (Over seeds 0-7, one random tiny encoder, seed 6,
    # blurred neighbouring slots at [MASK] too much for the full-forward check below.)
    mx.random.seed(0)
    encoder = build_model(arch, use_decoder=False)
    folder = tmp_path / 'encoder'
    save_model(encoder, str(folder))
    tokenizer.save(str(folder))
    lines = []
    for _ in range(120):  # 120 documents of 3 sentences; slot j draws from words 3j..3j+2
        for _ in range(3):
            lines.append(' '.join(f'w{3 * j + rng.randint(3)}' for j in range(6)))
        lines.append('')
    corpus = tmp_path / 'toy.txt'
    corpus.write_text('\n'.join(lines))
    return folder, corpus, tokenizer


def test_masked_features_use_bert_masking(tiny_bert_arch, rng):
    """One masking per sequence by the shared implementation: counts, labels and 80/10/10."""
    tokenizer = WordPieceTokenizer(SPECIALS + WORDS)
    encoder = build_model(tiny_bert_arch.replace(vocab_size=tokenizer.vocab_size, max_length=64),
                          use_decoder=False)
    ids = [2] + list(range(5, 65)) + [3]
    config = HeadFitConfig(seq_len=62, encode_batch=50)
    feats, labels, kinds = masked_features(encoder, [ids] * 300, tokenizer, config, rng)
    assert feats.shape == (300 * 9, tiny_bert_arch.units)  # round(0.15 · 60) per sequence
    assert set(labels) <= set(ids[1:-1])  # CLS and SEP never chosen
    shares = np.bincount(kinds, minlength=3) / len(kinds)
    assert abs(shares[0] - 0.8) < 0.03 and abs(shares[1] - 0.1) < 0.03

    def again(seed):
        return masked_features(encoder, [ids] * 4, tokenizer, config,
                               np.random.RandomState(seed))[1]
    np.testing.assert_array_equal(again(7), again(7))
    assert not np.array_equal(again(7), again(8))


def test_fast_engine_gives_the_plain_encoder_features(tiny_bert_arch):
    """The fit encodes on the fast inference path: same masked positions, same features."""
    from bort.inference.fast import FastModel
    tokenizer = WordPieceTokenizer(SPECIALS + WORDS)
    encoder = build_model(tiny_bert_arch.replace(vocab_size=tokenizer.vocab_size, max_length=64),
                          use_decoder=False)
    rows = [[2] + list(range(5, 5 + n)) + [3] for n in (60, 41, 60, 17, 33)]  # padded rows too
    config = HeadFitConfig(seq_len=62, encode_batch=2)
    plain = masked_features(encoder, rows, tokenizer, config, np.random.RandomState(3))
    fast = masked_features(encoder, rows, tokenizer, config, np.random.RandomState(3),
                           engine=FastModel.from_model(encoder))
    np.testing.assert_array_equal(plain[1], fast[1])
    np.testing.assert_array_equal(plain[2], fast[2])
    np.testing.assert_allclose(fast[0], plain[0], atol=1e-4)


def test_pack_sequences_fills_up_to_length():
    tokenizer = WordPieceTokenizer(SPECIALS + WORDS)
    docs = [['w1 w2 w3', 'w4 w5'], ['w6 w7 w8 w9']]
    assert pack_sequences(docs, tokenizer, 8, 10) == [[2, 6, 7, 8, 9, 10, 3],
                                                      [2, 11, 12, 13, 14, 3]]
    assert len(pack_sequences(docs, tokenizer, 8, 1)) == 1


def test_fitted_head_beats_chance_and_reloads(tmp_path, tiny_bert_arch, rng):
    folder, corpus, tokenizer = _toy(tmp_path, tiny_bert_arch, rng)
    out = tmp_path / 'with_head'
    config = HeadFitConfig(steps=150, batch_size=64, learning_rate=1e-2, seq_len=8,
                           max_sequences=360, heldout_fraction=0.2, encode_batch=32)
    report = fit_mlm_head(str(folder), [str(corpus)], str(out), config)
    # Each slot has 3 equally likely words: 1/3 is what position alone gives; chance is 1/18.
    assert report['heldout_accuracy'] > max(0.2, report['unigram_baseline_accuracy'] + 0.1)
    assert report['heldout_accuracy_by_kind']['mask'] > 2 / 18  # twice chance from context
    assert json.loads((out / 'mlm_head.json').read_text())['heldout_accuracy'] == \
        report['heldout_accuracy']
    model = load_model(str(out))
    assert model.has_decoder
    source = load_model(str(folder))
    ours = {k: v.data().asnumpy() for k, v in param_dict(model).items()}
    for name, param in param_dict(source).items():  # the encoder stayed frozen
        assert np.array_equal(ours[name], param.data().asnumpy()), name
    assert model.decoder[3].weight is model.word_embed[0].weight  # still tied
    # Reloaded, the full forward (encoder + head at masked positions) predicts as well.
    seqs = [tokenizer.build_inputs(tokenizer.encode(
        ' '.join(f'w{3 * j + rng.randint(3)}' for j in range(6))))[0] for _ in range(40)]
    tokens = mx.nd.array([[s[0]] + [tokenizer.mask_id if p == 3 else t
                                    for p, t in enumerate(s[1:], 1)] for s in seqs])
    again = load_model(str(out))
    outputs = [m(tokens, None, mx.nd.array([8] * 40), mx.nd.array([[3]] * 40))
               for m in (model, again)]
    logits = outputs[0][-1].asnumpy()
    np.testing.assert_array_equal(logits, outputs[1][-1].asnumpy())
    predicted = logits[:, 0].argmax(-1)
    truth = np.array([s[3] for s in seqs])
    assert np.mean(predicted == truth) > 0.2
    assert set(predicted) <= {5 + 6, 5 + 7, 5 + 8}  # slot 2's words only


def test_cli(tmp_path, tiny_bert_arch, rng):
    folder, corpus, _ = _toy(tmp_path, tiny_bert_arch, rng)
    report = main(['--model', str(folder), '--corpus', str(corpus), '--out', str(tmp_path / 'o'),
                   '--steps', '5', '--max-sequences', '20', '--seq-len', '8'])
    assert report['config']['steps'] == 5 and (tmp_path / 'o' / 'model.params').exists()
