"""Data preparation: packing, shards in GluonNLP's layout, worker counts, reports and errors."""
import collections
import glob
import json
import logging
import os

import numpy as np
import pytest

from bort.pretrain.masking import MaskingConfig
from bort.errors import DataFormatError
from bort.pretrain.prepare import (SHARD_KEYS, PrepConfig, document_sequences, iter_documents, main,
                                   original_tokens, prepare_pretraining_data, read_meta, read_shard,
                                   write_shard)
from pretrain_helpers import tiny_tokenizer, write_corpus


def _rows(folder, split='train'):
    out = []
    for path in sorted(glob.glob(os.path.join(folder, f'{split}-*.npz'))):
        arrays = read_shard(path)
        tokens = original_tokens(arrays)
        out += [tuple(t[:n]) for t, n in zip(tokens, arrays['valid_lengths'])]
    return out


def test_document_sequences_pack_whole_sentences():
    rng = np.random.RandomState(0)
    sentences = [[1] * 3, [2] * 4, [3] * 2, [4] * 9, [5] * 1]
    seqs = list(document_sequences(sentences, 8, 0.0, rng))
    assert seqs == [[1, 1, 1, 2, 2, 2, 2], [3, 3], [4] * 8, [4, 5]]
    short = list(document_sequences(sentences * 20, 8, 1.0, np.random.RandomState(1)))
    assert [t for s in short for t in s] == [t for s in sentences * 20 for t in s]
    assert all(len(s) <= 8 for s in short) and min(len(s) for s in short) < 7


def test_iter_documents_streams_blank_line_separated(tmp_path):
    path = tmp_path / 'a.txt'
    path.write_text('One.\nTwo.\n\n\nThree.\n  \nFour.\nFive.\n')
    assert list(iter_documents(str(path))) == [['One.', 'Two.'], ['Three.'], ['Four.', 'Five.']]


def test_shard_round_trip_restores_tokens(tmp_path, rng):
    tokens = rng.randint(5, 50, (7, 12)).astype(np.int32)
    lengths = rng.randint(3, 13, 7).astype(np.int32)
    for r, n in enumerate(lengths):
        tokens[r, n:] = 0
    masking = MaskingConfig(mask_id=4, vocab_size=50, special_ids=(0,), max_predictions=4)
    path = str(tmp_path / 'shard.npz')
    write_shard(path, tokens, lengths, masking, rng)
    arrays = read_shard(path)
    assert set(SHARD_KEYS) <= set(arrays)
    order = np.argsort(lengths, kind='stable')
    np.testing.assert_array_equal(arrays['valid_lengths'], lengths[order])
    np.testing.assert_array_equal(original_tokens(arrays), tokens[order])
    assert arrays['input_ids'].dtype == np.int32
    assert arrays['masked_lm_weights'].dtype == np.float32
    assert (arrays['input_ids'] == 4).any(), 'the stored static masking is applied'
    with np.load(path, allow_pickle=False) as raw:  # no pickled objects in our files
        assert raw['input_ids'].ndim == 2


def test_gluonnlp_ragged_shards_need_allow_pickle(tmp_path):
    path = str(tmp_path / 'gluon.npz')

    def ragged(*rows):
        return np.array([np.array(r) for r in rows], dtype=object)

    np.savez(path, input_ids=ragged([2, 4, 3], [2, 7, 8, 3]), segment_ids=ragged([0] * 3, [0] * 4),
             masked_lm_positions=ragged([1], [2]), masked_lm_ids=ragged([6], [9]),
             masked_lm_weights=ragged([1.0], [1.0]), next_sentence_labels=np.zeros(2),
             valid_lengths=np.array([3, 4]))
    with pytest.raises(DataFormatError, match='allow_pickle'):
        read_shard(path)
    arrays = read_shard(path, allow_pickle=True)
    np.testing.assert_array_equal(original_tokens(arrays), [[2, 6, 3, 0], [2, 7, 9, 3]])


def test_prepare_counts_tokens_and_round_trips(tmp_path):
    tok = tiny_tokenizer()
    paths = write_corpus(str(tmp_path / 'text'), files=2, docs=25)
    meta = prepare_pretraining_data(paths, tok, str(tmp_path / 'out'), PrepConfig(
        max_seq_length=20, num_workers=2, shard_rows=20, eval_fraction=0.2))
    expected = collections.Counter()
    for path in paths:
        for doc in iter_documents(path):
            for sentence in doc:
                expected.update(tok.encode(sentence))
    assert meta['tokens'] == sum(expected.values())
    assert meta['unknown'] == 0 and meta['unk_ratio'] == 0.0
    rows = _rows(str(tmp_path / 'out')) + _rows(str(tmp_path / 'out'), 'eval')
    assert all(r[0] == tok.cls_id and r[-1] == tok.sep_id and len(r) <= 20 for r in rows)
    assert collections.Counter(t for r in rows for t in r[1:-1]) == expected
    assert meta['sequences']['eval'] > 0
    names = [f['file'] for f in meta['shards']['train']]
    assert len(names) >= 2 and {n[:9] for n in names} == {'train-000', 'train-001'}
    for name in names:
        lengths = read_shard(str(tmp_path / 'out' / name))['valid_lengths']
        assert np.all(np.diff(lengths) >= 0), 'rows are sorted by length (buckets)'
    assert read_meta(str(tmp_path / 'out'))['vocab_size'] == tok.vocab_size
    assert os.path.isfile(tmp_path / 'out' / 'tokenizer' / 'tokenizer.json')


def test_worker_count_does_not_change_the_sequences(tmp_path):
    tok = tiny_tokenizer()
    paths = write_corpus(str(tmp_path / 'text'), files=1, docs=40)
    results = []
    for workers in (1, 3):
        out = str(tmp_path / f'out{workers}')
        prepare_pretraining_data(paths, tok, out, PrepConfig(
            max_seq_length=16, short_seq_prob=0.0, num_workers=workers, eval_fraction=0.25))
        results.append((sorted(_rows(out)), sorted(_rows(out, 'eval'))))
        assert len(glob.glob(os.path.join(out, 'train-*.npz'))) == workers
    assert results[0] == results[1]


def test_unknown_ratio_is_reported_with_a_warning(tmp_path, caplog):
    tok = tiny_tokenizer()
    path = tmp_path / 'text.txt'
    path.write_text('the cat sat on the mat .\nthe zebra quokka sat .\n')
    with caplog.at_level(logging.WARNING):
        meta = prepare_pretraining_data([str(path)], tok, str(tmp_path / 'out'),
                                        PrepConfig(max_seq_length=16))
    assert meta['unknown'] == 2 and meta['tokens'] == 12
    assert meta['unk_ratio'] == pytest.approx(2 / 12)
    assert any('unknown' in r.message for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize('content, match', [
    (b'', 'empty input file'),
    (b'\n\n  \n', 'no text'),
    (b'fine line\n\xff\xfe bad bytes\n', r'bad\.txt:2: not UTF-8'),
    (b'abc\x00def\n', 'NUL byte'),
])
def test_malformed_input_names_the_file(tmp_path, content, match):
    good = tmp_path / 'good.txt'
    good.write_text('the cat sat .\n')
    bad = tmp_path / 'bad.txt'
    bad.write_bytes(content)
    with pytest.raises(DataFormatError, match=match) as err:
        prepare_pretraining_data([str(good), str(bad)], tiny_tokenizer(), str(tmp_path / 'o'),
                                 PrepConfig(num_workers=2))
    assert 'bad.txt' in str(err.value)


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match='nothere.txt'):
        prepare_pretraining_data([str(tmp_path / 'nothere.txt')], tiny_tokenizer(),
                                 str(tmp_path / 'o'))


def test_command_line(tmp_path):
    tok = tiny_tokenizer()
    tok.save(str(tmp_path / 'tok'))
    write_corpus(str(tmp_path / 'text'), files=2, docs=5)
    meta = main([str(tmp_path / 'text'), '--tokenizer', str(tmp_path / 'tok'),
                 '--output', str(tmp_path / 'out'), '--max-seq-length', '32',
                 '--num-workers', '2'])
    assert meta['config']['max_seq_length'] == 32
    with open(tmp_path / 'out' / 'meta.json') as f:
        assert json.load(f)['sequences']['train'] > 0
