"""Agora's transformation functions: word deletion and swaps, masked-LM resampling."""
import collections

import numpy as np
import pytest

import toy_glue
from bort.arch import Architecture
from bort.model import build_model, save_model
from bort.finetune.tasks import Example
from bort.finetune.transforms import TRANSFORMS, delete_words, make_transform, swap_words

EXAMPLES = [Example('d-0', 'the cat sat on the mat .', 'a dog ran yes .', 1, idx=0),
            Example('d-1', 'old man', None, 0, idx=1)]


def test_registry():
    assert {'delete', 'swap', 'delete_swap', 'mlm'} <= set(TRANSFORMS)
    with pytest.raises(KeyError, match='known'):
        make_transform('shuffle_everything')


def test_delete_words():
    rng = np.random.RandomState(0)
    for n in range(1, 12):
        words = [f'w{i}' for i in range(n)]
        out = delete_words(' '.join(words), 0.3, rng).split()
        expected = n if n == 1 else n - min(max(1, round(0.3 * n)), n - 1)
        assert len(out) == expected
        assert out == [w for w in words if w in out]  # order kept, nothing new


def test_swap_words_keeps_the_words():
    rng = np.random.RandomState(0)
    text = 'the cat sat on the mat and ate a fish'
    out = swap_words(text, 0.4, rng)
    assert collections.Counter(out.split()) == collections.Counter(text.split())
    assert out != text
    assert swap_words('alone', 0.4, rng) == 'alone'


@pytest.mark.parametrize('name', ['delete', 'swap', 'delete_swap'])
def test_word_transforms_are_unlabelled_and_reproducible(name):
    transform = make_transform(name, fraction=0.3, copies=3)
    out = transform(EXAMPLES, np.random.RandomState(5))
    assert len(out) == 6 and all(ex.label is None for ex in out)
    assert [ex.guid for ex in out[:3]] == ['d-0+t0', 'd-0+t1', 'd-0+t2']
    assert out[3].text_b is None and out[0].idx == 0
    assert out == transform(EXAMPLES, np.random.RandomState(5))


def test_mlm_resampling(tmp_path):
    folder = toy_glue.pretrained_folder(str(tmp_path / 'mlm'))
    transform = make_transform('mlm', mlm_model=folder, fraction=0.25, copies=2, max_length=32)
    out = transform(EXAMPLES, np.random.RandomState(0))
    assert len(out) == 4 and all(ex.label is None for ex in out)
    assert out == transform(EXAMPLES, np.random.RandomState(0))
    tokenizer = toy_glue.tokenizer()
    specials = {tokenizer.specials[r] for r in ('cls', 'sep', 'pad', 'mask', 'unk')}
    for new, old in zip(out, [EXAMPLES[0]] * 2 + [EXAMPLES[1]] * 2):
        before = tokenizer.tokenize(old.text_a) + tokenizer.tokenize(old.text_b or '')
        after = tokenizer.tokenize(new.text_a) + tokenizer.tokenize(new.text_b or '')
        assert len(after) == len(before)  # one draw per masked token, segments kept apart
        changed = sum(a != b for a, b in zip(after, before))
        assert changed <= max(1, round(0.25 * len(before)))
        assert not set(after) & specials  # only real tokens are drawn
        assert (new.text_b is None) == (old.text_b is None)


def test_mlm_needs_a_decoder(tmp_path):
    arch = Architecture(num_layers=1, num_heads=2, units=8, hidden_size=16, vocab_size=99,
                        max_length=16)
    save_model(build_model(arch, use_decoder=False), str(tmp_path / 'enc'))
    toy_glue.tokenizer().save(str(tmp_path / 'enc'))
    with pytest.raises(ValueError, match='decoder'):
        make_transform('mlm', mlm_model=str(tmp_path / 'enc'))
    with pytest.raises(ValueError, match='model folder'):
        make_transform('mlm', mlm_model='')
