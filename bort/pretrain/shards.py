"""Pretraining shards: GluonNLP's npz layout, read and written, and a data folder's metadata.

A shard holds the keys ``input_ids, segment_ids, masked_lm_positions, masked_lm_ids,
masked_lm_weights, next_sentence_labels, valid_lengths``. This project writes them as padded
2-D arrays (loadable without pickle), rows sorted by length, with one static BERT masking applied
(so GluonNLP's own trainer can read them); :func:`original_tokens` undoes that masking for
dynamic masking. GluonNLP's writer stores ragged object arrays: :func:`read_shard` reads those
too when ``allow_pickle=True`` (only for files you trust).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from typing import Dict, Sequence, Tuple

import numpy as np

from ..errors import DataFormatError, read_json
from .masking import MaskingConfig, mask_tokens

__all__ = ['SHARD_KEYS', 'META_FILE', 'META_FORMAT', 'write_shard', 'check_shard',
           'check_shards', 'read_shard', 'original_tokens', 'read_meta', 'vocab_fingerprint',
           'unigram_log_probs', 'shard_unigram']

SHARD_KEYS = ('input_ids', 'segment_ids', 'masked_lm_positions', 'masked_lm_ids',
              'masked_lm_weights', 'next_sentence_labels', 'valid_lengths')
META_FILE = 'meta.json'
META_FORMAT = 'bort-pretrain-shards'


def write_shard(path: str, token_ids: np.ndarray, valid_lengths: np.ndarray,
                masking: MaskingConfig, rng: np.random.RandomState) -> None:
    """Write sequences as a GluonNLP-layout shard (rows sorted by length, one static masking).

    Parameters
    ----------
    path : str
    token_ids : (num_rows, seq_len) int
        Original tokens, padded.
    valid_lengths : (num_rows,) int
    masking : MaskingConfig
        The stored static masking (``masked_lm_*`` arrays of width ``max_predictions``).
    rng : np.random.RandomState
    """
    order = np.argsort(valid_lengths, kind='stable')
    token_ids, valid_lengths = token_ids[order], valid_lengths[order]
    masked, positions, labels, weights = mask_tokens(token_ids, valid_lengths, masking, rng)
    arrays = {'input_ids': masked.astype(np.int32),
              'segment_ids': np.zeros_like(token_ids, dtype=np.int32),
              'masked_lm_positions': positions, 'masked_lm_ids': labels,
              'masked_lm_weights': weights,
              'next_sentence_labels': np.zeros(len(token_ids), dtype=np.int32),
              'valid_lengths': valid_lengths.astype(np.int32)}
    tmp = path + '.tmp.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _pad_ragged(values: np.ndarray, dtype) -> np.ndarray:
    width = max((len(v) for v in values), default=0)
    out = np.zeros((len(values), width), dtype=dtype)
    for i, v in enumerate(values):
        out[i, :len(v)] = v
    return out


def read_shard(path: str, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
    """The seven arrays of a shard, as padded 2-D arrays (1-D for the per-row ones).

    ``allow_pickle`` admits GluonNLP's ragged object arrays (only for files you trust).
    """
    try:
        with np.load(path, allow_pickle=allow_pickle) as data:
            missing = [k for k in SHARD_KEYS if k not in data.files]
            if missing:
                raise DataFormatError(f'{path}: not a pretraining shard, keys {missing} missing')
            arrays = {k: data[k] for k in SHARD_KEYS}
    except ValueError as err:
        if 'allow_pickle' in str(err):
            raise DataFormatError(f'{path}: stores ragged object arrays (GluonNLP\'s writer); '
                                  f'read it with allow_pickle=True if you trust the file') from None
        raise DataFormatError(f'{path}: unreadable shard ({err})') from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataFormatError(f'{path}: unreadable shard, truncated or damaged ({err})') \
            from None
    for key, value in arrays.items():
        if value.dtype == object:
            arrays[key] = _pad_ragged(value, np.float32 if key.endswith('weights') else np.int32)
    rows = len(arrays['valid_lengths'])
    if any(len(v) != rows for v in arrays.values()):
        raise DataFormatError(f'{path}: arrays disagree on the number of rows')
    return arrays


def _array_header(archive: zipfile.ZipFile, member: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype of one ``.npy`` member, from its header (the data is not decompressed)."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return tuple(shape), dtype


def check_shard(path: str) -> int:
    """Check that a shard can be read, without reading its data: the archive opens (a truncated
    file loses its index), every key is there, and the shapes agree.

    Returns
    -------
    int
        The number of rows.

    Raises
    ------
    DataFormatError
        Naming the file and what is wrong.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n[:-len('.npy')]: n for n in archive.namelist() if n.endswith('.npy')}
            missing = [k for k in SHARD_KEYS if k not in members]
            if missing:
                raise DataFormatError(f'not a pretraining shard, keys {missing} missing', path)
            headers = {k: _array_header(archive, members[k]) for k in SHARD_KEYS}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        if isinstance(err, DataFormatError):
            raise
        if isinstance(err, FileNotFoundError):
            raise DataFormatError('shard file not found', path) from None
        raise DataFormatError(f'unreadable shard, truncated or damaged ({err})', path) from None
    rows = {k: shape[0] if shape else -1 for k, (shape, _) in headers.items()}
    if len(set(rows.values())) != 1:
        raise DataFormatError(f'arrays disagree on the number of rows ({rows})', path)
    ragged = any(dtype == object for _, dtype in headers.values())
    if not ragged:  # GluonNLP's ragged object arrays are 1-D; this project's are 2-D
        two_d = ('input_ids', 'segment_ids', 'masked_lm_positions', 'masked_lm_ids',
                 'masked_lm_weights')
        flat = [k for k in two_d if len(headers[k][0]) != 2]
        if flat or headers['input_ids'][0] != headers['segment_ids'][0]:
            raise DataFormatError('array shapes do not form a shard (input_ids and segment_ids '
                                  f'(rows, length), masked_lm_* (rows, width)): '
                                  f'{ {k: s for k, (s, _) in headers.items()} }', path)
    count = rows['valid_lengths']
    if count == 0:
        raise DataFormatError('empty shard (no sequence)', path)
    return count


def check_shards(paths: Sequence[str]) -> int:
    """:func:`check_shard` on every file (before training starts, so that a damaged shard is
    found at once rather than when the stream reaches it); the total number of rows."""
    return sum(check_shard(p) for p in paths)


def original_tokens(arrays: Dict[str, np.ndarray]) -> np.ndarray:
    """The unmasked tokens of a shard: ``input_ids`` with the stored masking undone.

    Returns
    -------
    (num_rows, seq_len) int32
    """
    tokens = arrays['input_ids'].astype(np.int32, copy=True)
    rows, cols = np.nonzero(arrays['masked_lm_weights'] > 0)
    tokens[rows, arrays['masked_lm_positions'][rows, cols]] = arrays['masked_lm_ids'][rows, cols]
    return tokens


def unigram_log_probs(token_batches: Sequence[np.ndarray], vocab_size: int,
                      smoothing: float = 0.5) -> np.ndarray:
    """log q of the unigram distribution of the training tokens (add-``smoothing`` counts).

    The "learned nothing but frequencies" baseline: a model that outputs q at every masked
    position has cross-entropy −Σ_v p_T(v) log q(v) against the teacher.

    Parameters
    ----------
    token_batches : sequence of int arrays
        Token ids (any shape; padding and special tokens removed by the caller).
    vocab_size : int
    smoothing : float
        Added to every count (every token keeps a finite log-probability).

    Returns
    -------
    (vocab_size,) float64
    """
    counts = np.full(vocab_size, smoothing, dtype=np.float64)
    for ids in token_batches:
        counts += np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=vocab_size)[
            :vocab_size]
    return np.log(counts / counts.sum())


def shard_unigram(paths: Sequence[str], vocab_size: int, special_ids: Sequence[int]
                  ) -> np.ndarray:
    """(vocab_size,) float64 log-frequencies of the real tokens of training shards.

    Every row's tokens up to its valid length, the stored masking undone
    (:func:`original_tokens`), special tokens (CLS, SEP, padding) left out: what a masked
    position holds, as :func:`unigram_log_probs` counts it.
    """
    batches = []
    for path in paths:
        arrays = read_shard(path)
        tokens = original_tokens(arrays)
        keep = np.arange(tokens.shape[1])[None, :] < arrays['valid_lengths'][:, None]
        ids = tokens[keep]
        batches.append(ids[~np.isin(ids, np.asarray(special_ids))])
    return unigram_log_probs(batches, vocab_size)


#: The integer fields of meta.json the training loops read.
_META_INTS = ('vocab_size', 'cls_id', 'sep_id', 'pad_id', 'mask_id')


def read_meta(folder: str) -> Dict:
    """The ``meta.json`` of a prepared data folder.

    Raises
    ------
    DataFormatError
        The file is damaged (not JSON, not this format, a field missing), naming it.
    """
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: is {folder} a folder written by '
                                f'`python -m bort.pretrain.prepare`?')
    meta = read_json(path, what=f'{META_FILE} of prepared data')
    if meta.get('format') != META_FORMAT:
        raise DataFormatError(f'{path}: not a {META_FORMAT} file')
    wrong = [key for key in _META_INTS if not isinstance(meta.get(key), int)
             or isinstance(meta[key], bool)]
    if not isinstance(meta.get('tokenizer'), str):
        wrong.append('tokenizer')
    if wrong:
        raise DataFormatError(f'{path}: damaged ({", ".join(wrong)} missing or of the wrong '
                              f'type); prepare the data again')
    return meta


def vocab_fingerprint(tokenizer) -> str:
    """SHA-1 of the vocabulary in id order: equal sizes are not enough to share a vocabulary."""
    return hashlib.sha1('\n'.join(tokenizer.tokens).encode('utf-8')).hexdigest()
