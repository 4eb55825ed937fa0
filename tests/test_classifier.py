"""The fine-tuning head, pair encoding, losses and fine-tuned folders, against numpy references."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

import toy_glue
from bort.tokenizers import ByteBPETokenizer, bytes_to_unicode
from bort.finetune.classifier import (HeadConfig, TaskClassifier, build_classifier, encode_pair,
                                      load_classifier, make_batch, predict_scores,
                                      read_head_config, save_classifier, task_loss)
from bort.model import build_model, save_model


@pytest.fixture
def wordpiece():
    return toy_glue.tokenizer()


@pytest.fixture
def pretrained(tmp_path):
    return toy_glue.pretrained_folder(str(tmp_path / 'pretrained'))


def _truncate_reference(len_a, len_b, budget):
    """Brute force over every split (kept_a, kept_b) that fits, choosing by the rule's outcome:
    keep as many tokens as fit, then the longer kept segment as short as possible (only the
    longer one is ever cut), and on a tie segment b is the one cut (BERT's rule)."""
    splits = [(a, b) for a in range(len_a + 1) for b in range(len_b + 1) if a + b <= budget]
    return min(splits, key=lambda s: (-(s[0] + s[1]), max(s), -s[0]))


def test_wordpiece_pair_layout(wordpiece):
    ids, types = encode_pair(wordpiece, 'the cat', 'a dog .', max_length=32)
    tokens = wordpiece.convert_ids_to_tokens(ids)
    assert tokens == ['[CLS]', 'the', 'cat', '[SEP]', 'a', 'dog', '.', '[SEP]']
    assert types == [0, 0, 0, 0, 1, 1, 1, 1]
    single, single_types = encode_pair(wordpiece, 'the cat', None, max_length=32)
    assert wordpiece.convert_ids_to_tokens(single) == ['[CLS]', 'the', 'cat', '[SEP]']
    assert single_types == [0, 0, 0, 0]


def test_roberta_pair_layout():
    chars = list(bytes_to_unicode().values())
    bpe = ByteBPETokenizer(chars, merges=[])
    ids, types = encode_pair(bpe, 'ab', 'c', max_length=16)
    tokens = bpe.convert_ids_to_tokens(ids)
    assert tokens == ['<s>', 'a', 'b', '</s>', '</s>', 'c', '</s>']
    assert types == [0, 0, 0, 0, 1, 1, 1]


def test_truncate_reference_by_hand():
    assert _truncate_reference(10, 3, 6) == (3, 3)
    assert _truncate_reference(20, 20, 9) == (5, 4)
    assert _truncate_reference(2, 9, 6) == (2, 4)
    assert _truncate_reference(2, 2, 6) == (2, 2)


@pytest.mark.parametrize('len_a,len_b,max_length', [(10, 3, 9), (3, 10, 9), (6, 6, 9),
                                                    (2, 2, 9), (7, 1, 6), (20, 20, 12),
                                                    (9, 9, 10), (1, 30, 9), (15, 12, 20)])
def test_truncation_longest_first(wordpiece, len_a, len_b, max_length):
    words_a = [toy_glue.FILLER[i % len(toy_glue.FILLER)] for i in range(len_a)]
    words_b = [toy_glue.FILLER[-1 - i % len(toy_glue.FILLER)] for i in range(len_b)]
    ids, _ = encode_pair(wordpiece, ' '.join(words_a), ' '.join(words_b), max_length)
    kept_a, kept_b = _truncate_reference(len_a, len_b, max_length - 3)
    # each segment loses its last tokens: the kept ones are its beginning
    assert wordpiece.convert_ids_to_tokens(ids) == \
        ['[CLS]'] + words_a[:kept_a] + ['[SEP]'] + words_b[:kept_b] + ['[SEP]']
    assert len(ids) <= max_length


def test_truncation_leaves_room_or_fails(wordpiece):
    ids, _ = encode_pair(wordpiece, 'the cat sat on the mat', None, max_length=4)
    assert wordpiece.convert_ids_to_tokens(ids) == ['[CLS]', 'the', 'cat', '[SEP]']
    with pytest.raises(ValueError, match='no room'):
        encode_pair(wordpiece, 'a', 'b', max_length=4)


def test_auto_head_follows_the_paper():
    assert HeadConfig.resolve('CoLA').kind == 'two_layer'
    assert HeadConfig.resolve('RTE').kind == 'linear'
    assert HeadConfig.resolve('STS-B').num_classes == 1
    assert HeadConfig.resolve('MNLI-m', 'released').kind == 'released'
    with pytest.raises(ValueError, match='unknown head'):
        HeadConfig(task='RTE', num_classes=2, kind='deep')


def _head_arrays(model):
    return [(d.weight.data().asnumpy(), d.bias.data().asnumpy())
            for d in model.head.layers if isinstance(d, mx.gluon.nn.Dense)]


@pytest.mark.parametrize('kind', ['linear', 'two_layer', 'released'])
def test_head_against_numpy(pretrained, kind):
    config = HeadConfig(task='RTE', num_classes=2, kind=kind, init_range=0.3)
    model = build_classifier(pretrained, config, seed=1)
    inputs = mx.nd.array(np.random.RandomState(0).randint(5, 38, size=(3, 7)))
    valid = mx.nd.array([7, 5, 3])
    first = model.backbone(inputs, None, valid)[:, 0, :].asnumpy()
    x = first.astype(np.float64)
    layers = _head_arrays(model)
    assert len(layers) == (1 if kind == 'linear' else 2)
    for n, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if n == 0 and len(layers) == 2 and kind == 'released':
            x = np.tanh(x)
    np.testing.assert_allclose(model(inputs, None, valid).asnumpy(), x, rtol=1e-4, atol=1e-5)


def test_uniform_init(pretrained):
    model = build_classifier(pretrained, HeadConfig('RTE', 2, 'released', init_range=0.5),
                             seed=0)
    (w1, b1), (w2, b2) = _head_arrays(model)
    weights = np.concatenate([w1.ravel(), w2.ravel()])
    assert weights.min() >= -0.5 and weights.max() <= 0.5
    assert abs(weights.std() - 0.5 / np.sqrt(3)) < 0.02  # the std of U(-r, r)
    assert not b1.any() and not b2.any()


def test_pooler_architectures_read_the_pooler(tmp_path):
    folder = toy_glue.pretrained_folder(str(tmp_path / 'bert'), token_type_vocab_size=2,
                                        use_pooler=True)
    model = build_classifier(folder, HeadConfig('RTE', 2))
    inputs, types = mx.nd.ones((2, 5)) * 7, mx.nd.array([[0, 0, 1, 1, 1]] * 2)
    _, pooled = model.backbone(inputs, types, mx.nd.array([5, 4]))
    weight, bias = _head_arrays(model)[0]
    expected = pooled.asnumpy() @ weight.T + bias
    np.testing.assert_allclose(model(inputs, types, mx.nd.array([5, 4])).asnumpy(), expected,
                               rtol=1e-4, atol=1e-5)


def test_losses_against_numpy():
    scores = np.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
    labels = np.array([0, 1, 1])
    ce = task_loss('RTE')(mx.nd.array(scores), mx.nd.array(labels)).asnumpy()
    log_softmax = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ce, -log_softmax[np.arange(3), labels], rtol=1e-4, atol=1e-6)
    predicted, gold = np.array([[1.5], [4.0], [0.0]]), np.array([2.0, 3.0, 0.5])
    se = task_loss('STS-B')(mx.nd.array(predicted), mx.nd.array(gold)).asnumpy()
    np.testing.assert_allclose(se, (predicted[:, 0] - gold) ** 2, rtol=1e-6)


def test_predict_scores_restores_order(pretrained, wordpiece):
    model = build_classifier(pretrained, HeadConfig('RTE', 2), seed=0)
    rng = np.random.RandomState(3)
    encoded = [encode_pair(wordpiece, *toy_glue.example(rng, i % 2), 32) for i in range(11)]
    batched = predict_scores(model, encoded, wordpiece.pad_id, batch_size=4)
    one_by_one = np.concatenate([
        model(*make_batch(encoded, [i], len(encoded[i][0]), wordpiece.pad_id, mx.cpu(),
                          token_types=False)).asnumpy() for i in range(11)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)


def test_folder_round_trip(pretrained, wordpiece, tmp_path):
    model = build_classifier(pretrained, HeadConfig('CoLA', 2, 'two_layer', max_length=24),
                             seed=0)
    folder = save_classifier(model, str(tmp_path / 'ft'), wordpiece)
    assert sorted(os.listdir(folder)) == ['arch.json', 'classifier.json', 'model.params',
                                          'tokenizer.json', 'vocab.txt']
    loaded = load_classifier(folder)
    assert loaded.head_config == model.head_config
    inputs = mx.nd.array([[2, 9, 10, 3]])
    np.testing.assert_allclose(loaded(inputs).asnumpy(), model(inputs).asnumpy(), rtol=1e-6)
    save_classifier(loaded, folder)  # replacing an existing folder works
    with pytest.raises(FileNotFoundError, match='classifier.json'):
        load_classifier(pretrained)


def test_backbone_with_decoder_is_refused(tmp_path):
    backbone = build_model(toy_glue.tiny_arch(), use_decoder=True)
    with pytest.raises(ValueError, match='decoder'):
        TaskClassifier(backbone, HeadConfig('RTE', 2))
    save_model(backbone, str(tmp_path / 'm'))  # build_classifier drops the decoder instead
    assert not build_classifier(str(tmp_path / 'm'), HeadConfig('RTE', 2)).backbone.has_decoder


def test_head_config_init_is_checked_and_old_folders_read_as_uniform(tmp_path):
    with pytest.raises(ValueError, match='initialisation'):
        HeadConfig(task='RTE', num_classes=2, init='xavier')
    # classifier.json written before the choice existed: those heads were drawn uniformly.
    (tmp_path / 'classifier.json').write_text(json.dumps(
        {'task': 'RTE', 'num_classes': 2, 'kind': 'linear', 'dropout': 0.1, 'init_range': 0.5,
         'max_length': 64}))
    assert read_head_config(str(tmp_path)).init == 'uniform'
