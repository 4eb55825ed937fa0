"""Tokenizers from tiny files made in tmp_path, checked against transformers where installed."""
import json
import os

import pytest

from bort.tokenizers import (BERT_SPECIALS, ByteBPETokenizer, SentencePieceTokenizer,
                             gpt2_tokenizer, train_sentencepiece)
from bort.tokenizers import WordPieceTokenizer, bytes_to_unicode, load_tokenizer

TEXTS = ["Hello world! It's a test.", "Café naïve  résumé, 2024-01-02\tand\nnew lines ",
         "  leading spaces and trailing  ", "unknown ZQX glyphs 中文 😀", "don't we'll I'd"]

BPE_MERGES = [('Ġ', 't'), ('h', 'e'), ('Ġt', 'he'), ('l', 'l'), ('e', 'll'), ('Ġ', 'w'),
              ('o', 'r'), ('Ġw', 'or'), ('Ġwor', 'l'), ('Ġworl', 'd'), ('H', 'ell'),
              ('Hell', 'o'), ('Ġ', 'a'), ('i', 'n'), ('Ġ', 's')]


def _bpe_files(folder):
    """A RoBERTa-layout vocabulary: specials first, all 256 byte symbols, then the merges."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = ['<s>', '<pad>', '</s>', '<unk>'] + byte_symbols + [a + b for a, b in BPE_MERGES]
    tokens.append('<mask>')
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in BPE_MERGES))
    return tokens


WORDPIECE = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'hello', 'world', '!', "'", 's',
             'a', 'test', '.', 'it', 'cafe', 'caf', '##e', 'na', '##ive', 'res', '##ume', ',',
             '-', '2024', '01', '02', 'and', 'new', 'lines', 'un', '##known', 'z', '##q', '##x',
             'g', '##ly', '##ph', 'don', 't', 'we', 'll', 'i', 'd', 'leading', 'spaces',
             'trailing', 'Hello', 'Caf', 'é', '中', 'résumé']


def _wordpiece_file(folder):
    path = os.path.join(folder, 'vocab.txt')
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(t + '\n' for t in WORDPIECE)
    return path


def test_byte_bpe_round_trip_and_specials(tmp_path):
    tokens = _bpe_files(tmp_path)
    tok = ByteBPETokenizer.from_files(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'))
    assert tok.vocab_size == len(tokens)
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == \
        (0, 1, 2, 3, len(tokens) - 1)
    assert tok.tokenize('Hello the world') == ['Hello', 'Ġthe', 'Ġworld']
    for text in TEXTS:  # byte-level: every text survives, nothing is unknown
        assert tok.decode(tok.encode(text)) == text
        assert tok.unk_id not in tok.encode(text)
    # <mask> written in text is one token and takes the space before it (RoBERTa's lstrip).
    assert tok.tokenize('the <mask> world') == ['t', 'he', '<mask>', 'Ġworld']
    ids, types = tok.build_inputs([10, 11], [12])
    assert ids == [0, 10, 11, 2, 2, 12, 2] and types == [0, 0, 0, 0, 1, 1, 1]


def test_wordpiece_basic_tokenisation(tmp_path):
    uncased = WordPieceTokenizer.from_file(_wordpiece_file(tmp_path), lower=True)
    assert uncased.tokenize("Hello, World! Café") == ['hello', ',', 'world', '!', 'cafe']
    # Greedy longest match first; a word with an unmatched tail is one [UNK].
    assert uncased.tokenize('naive resume unknown unknownzqx') == \
        ['na', '##ive', 'res', '##ume', 'un', '##known', '[UNK]']
    assert uncased.tokenize('glyphs') == ['[UNK]']  # no piece for the tail: the whole word
    assert uncased.tokenize('[MASK] hello') == ['[MASK]', 'hello']
    cased = WordPieceTokenizer.from_file(str(tmp_path / 'vocab.txt'), lower=False)
    assert cased.tokenize('Hello Café 中文') == ['Hello', '[UNK]', '中', '[UNK]']
    assert (cased.cls_id, cased.sep_id, cased.pad_id, cased.mask_id, cased.unk_id) == \
        (2, 3, 0, 4, 1)
    assert uncased.decode(uncased.encode('unknown test')) == 'unknown test'


def test_save_and_load_every_kind(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    _bpe_files(src)
    _wordpiece_file(src)
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(TEXTS * 20 + ['The cat sat on the mat.'] * 20))
    spm_path = train_sentencepiece([str(corpus)], 60, str(tmp_path / 'spm'))
    made = {
        'byte_bpe': ByteBPETokenizer.from_files(str(src / 'vocab.json'), str(src / 'merges.txt')),
        'wordpiece': WordPieceTokenizer.from_file(str(src / 'vocab.txt'), lower=False),
        'sentencepiece': SentencePieceTokenizer(spm_path),
    }
    for kind, tok in made.items():
        folder = tmp_path / kind
        tok.save(str(folder))
        with open(folder / 'tokenizer.json') as f:
            assert json.load(f)['kind'] == kind
        back = load_tokenizer(str(folder))
        assert type(back) is type(tok)
        for text in TEXTS:
            assert back.encode(text) == tok.encode(text)
        assert [getattr(back, f'{r}_id') for r in ('cls', 'sep', 'pad', 'mask', 'unk')] == \
            [getattr(tok, f'{r}_id') for r in ('cls', 'sep', 'pad', 'mask', 'unk')]
    assert load_tokenizer(str(src)).kind == 'byte_bpe'  # a plain HF folder


def test_sentencepiece_specials_and_round_trip(tmp_path):
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n'.join(['the cat sat on the mat', 'a dog ran in the park'] * 50))
    tok = SentencePieceTokenizer(train_sentencepiece([str(corpus)], 40, str(tmp_path / 'm')))
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.decode(tok.encode('the cat ran')) == 'the cat ran'
    assert tok.mask_id in tok.encode('the <mask> sat')


def test_missing_files_are_named(tmp_path):
    vocab, merges = str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt')
    with pytest.raises(FileNotFoundError, match=f'vocabulary JSON not found: looked for {vocab}'):
        ByteBPETokenizer.from_files(vocab, merges)
    (tmp_path / 'vocab.json').write_text('{"a": 0}')
    with pytest.raises(FileNotFoundError, match=f'merges file not found: looked for {merges}'):
        ByteBPETokenizer.from_files(vocab, merges)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'vocab.txt')):
        WordPieceTokenizer.from_file(str(tmp_path / 'vocab.txt'))
    with pytest.raises(FileNotFoundError, match='looked for'):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='sentencepiece'):
        SentencePieceTokenizer(str(tmp_path / 'x.model'))


def test_gluon_vocab_json(tmp_path):
    """GluonNLP's Vocab.to_json layout: tokens in id order, specials named."""
    _bpe_files(tmp_path)
    with open(tmp_path / 'vocab.json', encoding='utf-8') as f:
        order = sorted(json.load(f).items(), key=lambda kv: kv[1])
    gluon = {'idx_to_token': [t for t, _ in order], 'unknown_token': '<unk>',
             'identifiers_to_tokens': {'padding_token': '<pad>', 'bos_token': '<s>',
                                       'eos_token': '</s>', 'mask_token': '<mask>'}}
    (tmp_path / 'gluon.vocab').write_text(json.dumps(gluon))
    tok = ByteBPETokenizer.from_files(str(tmp_path / 'gluon.vocab'), str(tmp_path / 'merges.txt'))
    ref = ByteBPETokenizer.from_files(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'))
    assert [tok.encode(t) for t in TEXTS] == [ref.encode(t) for t in TEXTS]
    wp = WordPieceTokenizer.from_file(_wordpiece_file(tmp_path))
    (tmp_path / 'bert.vocab').write_text(json.dumps({
        'idx_to_token': WORDPIECE, 'unknown_token': '[UNK]', 'identifiers_to_tokens': {
            f'{"padding" if r == "pad" else r}_token': t for r, t in BERT_SPECIALS.items()
            if r != 'unk'}}))
    wp2 = WordPieceTokenizer.from_file(str(tmp_path / 'bert.vocab'))
    assert [wp.encode(t) for t in TEXTS] == [wp2.encode(t) for t in TEXTS]


# -- against transformers ----------------------------------------------------------------------
def test_byte_bpe_matches_transformers(tmp_path):
    transformers = pytest.importorskip('transformers', reason='transformers not installed: the '
                                                              'optional extra (pip install .[hf])')
    tokens = _bpe_files(tmp_path)
    ours = ByteBPETokenizer.from_files(str(tmp_path / 'vocab.json'), str(tmp_path / 'merges.txt'))
    mask = transformers.AddedToken('<mask>', lstrip=True, rstrip=False)  # as roberta-base has it
    theirs = transformers.RobertaTokenizer(vocab={t: i for i, t in enumerate(tokens)},
                                           merges=BPE_MERGES, mask_token=mask)
    for text in TEXTS + ['the <mask> world', 'Hello<mask>']:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    pair = ours.build_inputs(ours.encode(TEXTS[0]), ours.encode(TEXTS[1]))[0]
    assert pair == theirs.encode(TEXTS[0], TEXTS[1])


def test_gpt2_files_match_transformers():
    transformers = pytest.importorskip('transformers', reason='transformers not installed: the '
                                                              'optional extra (pip install .[hf])')
    try:
        ours = gpt2_tokenizer()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    theirs = transformers.RobertaTokenizer(vocab=dict(ours.token_to_id),
                                           merges=[tuple(m) for m in ours.merges])
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    assert ours.vocab_size == 50257 + 5


@pytest.mark.parametrize('lower', [True, False])
def test_wordpiece_matches_transformers(tmp_path, lower):
    transformers = pytest.importorskip('transformers', reason='transformers not installed: the '
                                                              'optional extra (pip install .[hf])')
    ours = WordPieceTokenizer.from_file(_wordpiece_file(tmp_path), lower=lower)
    # transformers 5: BertTokenizer(vocab_file=...) maps everything to [UNK]; pass vocab=.
    theirs = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(WORDPIECE)},
                                        do_lower_case=lower)
    for text in TEXTS + ['[MASK] Hello [SEP]', 'x' * 120, 'Zero\u200bwidth \x00 control']:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
    pair = ours.build_inputs(ours.encode(TEXTS[0]), ours.encode(TEXTS[3]))
    assert pair[0] == theirs.encode(TEXTS[0], TEXTS[3])
    assert pair[1] == theirs(TEXTS[0], TEXTS[3])['token_type_ids']
