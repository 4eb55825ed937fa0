"""The search batches: a fixed set of masked-LM batches every candidate trains and is scored on.

Every candidate sees the same training batches in the same order and is scored on the same
held-out batches, so the errors are comparable and the teacher's outputs on them can be computed
once (:mod:`bort.search.targets`). Each batch is masked once (BERT's 80/10/10, settings from
:func:`bort.pretrain.masking.masking_for`), with a random state drawn from the seed: static
masking within a search, which is what makes the cache valid.

Documents are shuffled with the seed and packed into ``CLS sentences SEP`` sequences of at most
``seq_len`` tokens (:func:`bort.pretrain.mlm_head.pack_sequences`); the first sequences are held
out, the next ones train. A corpus too small for the requested batches is cycled, with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from ..errors import DataFormatError
from ..pretrain.masking import MaskingConfig
from ..pretrain.mlm_head import pack_sequences, read_documents
from ..pretrain.stream import MLMBatch, mask_batch
from ..tokenizers import Tokenizer
from .trust import unigram_log_probs

__all__ = ['SearchData', 'make_search_data', 'corpus_sequences', 'original_tokens']

log = logging.getLogger(__name__)


@dataclass
class SearchData:
    """Fixed training and held-out batches.

    Attributes
    ----------
    train : list of MLMBatch
        Step ``k`` of every candidate uses ``train[k % len(train)]``.
    heldout : list of MLMBatch
        The batches e(ξ) is measured on.
    vocab_size : int
    """

    train: List[MLMBatch]
    heldout: List[MLMBatch]
    vocab_size: int
    _unigram: Dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def for_step(self, step: int) -> MLMBatch:
        return self.train[step % len(self.train)]

    def trained_on(self, steps: int) -> List[MLMBatch]:
        """The distinct training batches a ``steps``-step candidate sees."""
        return self.train[:min(steps, len(self.train))]

    def unigram_log_probs(self, steps: int) -> np.ndarray:
        """(vocab_size,) float64 log q of the unigram of the tokens a ``steps``-step candidate
        trains on (add-0.5 counts; :func:`bort.search.trust.unigram_log_probs`): the "learned
        nothing but frequencies" prediction. Only those batches count, so a search with the
        fidelity check (more batches, for the longer runs) gives its s-step candidates the
        same unigram as one without. Computed once per ``steps`` and kept."""
        if steps not in self._unigram:
            self._unigram[steps] = unigram_log_probs(
                [original_tokens(b) for b in self.trained_on(steps)], self.vocab_size)
        return self._unigram[steps]

    def summary(self) -> dict:
        tokens = sum(b.num_tokens for b in self.train)
        return {'train_batches': len(self.train), 'heldout_batches': len(self.heldout),
                'train_tokens': tokens,
                'train_masked': sum(b.num_masked for b in self.train),
                'heldout_masked': sum(b.num_masked for b in self.heldout)}


def corpus_sequences(files: Sequence[str], tokenizer: Tokenizer, seq_len: int, count: int,
                     seed: int) -> List[List[int]]:
    """Up to ``count`` packed token sequences from text files, documents shuffled with ``seed``.
    """
    docs = []
    for path in files:  # one at a time, so a file that is not text is named
        try:
            docs.extend(read_documents([path]))
        except UnicodeDecodeError as err:
            raise DataFormatError(f'not UTF-8 text (byte {err.object[err.start]:#04x} at offset '
                                  f'{err.start}); convert it, e.g. iconv -f latin1 -t utf-8',
                                  path=path) from None
    if not docs:
        raise ValueError(f'the corpus {list(files)} holds no text')
    order = np.random.RandomState(seed).permutation(len(docs))
    return pack_sequences([docs[i] for i in order], tokenizer, seq_len, count)


def _fixed_shape(batch: MLMBatch, seq_len: int, num_masked: int, pad_id: int) -> MLMBatch:
    """Pad a batch to (batch_size, seq_len) tokens and (batch_size, num_masked) predictions.

    One shape for every search batch: a hybridized candidate then plans its memory once.
    """
    def pad(array, width, fill):
        return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=fill)
    return MLMBatch(pad(batch.input_ids, seq_len, pad_id), pad(batch.segment_ids, seq_len, 0),
                    batch.valid_length, pad(batch.positions, num_masked, 0),
                    pad(batch.labels, num_masked, 0), pad(batch.weights, num_masked, 0))


def make_search_data(sequences: Sequence[Sequence[int]], masking: MaskingConfig,
                     batch_size: int, train_batches: int, heldout_batches: int, seed: int,
                     pad_id: int, seq_len: int) -> SearchData:
    """Cut token sequences into held-out then training batches, each masked once.

    Parameters
    ----------
    sequences : sequence of list of int
        ``CLS ... SEP`` token ids, at most the search's sequence length each.
    masking : MaskingConfig
    batch_size, train_batches, heldout_batches : int
    seed : int
        Seeds the masking.
    pad_id : int
    seq_len : int
        Every batch is padded to this length (and to ``masking.max_predictions`` predictions).

    Returns
    -------
    SearchData
    """
    needed = batch_size * (train_batches + heldout_batches)
    if not sequences:
        raise ValueError('no token sequences to build search batches from')
    if len(sequences) < needed:
        log.warning('the corpus gives %d sequences but the search needs %d: sequences repeat '
                    '(%.1f passes)', len(sequences), needed, needed / len(sequences))
    rng = np.random.RandomState(seed)
    batches: List[MLMBatch] = []
    for b in range(train_batches + heldout_batches):
        rows = [sequences[(b * batch_size + r) % len(sequences)] for r in range(batch_size)]
        width = max(len(r) for r in rows)
        ids = np.full((batch_size, width), pad_id, dtype=np.int32)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
        lengths = np.asarray([len(r) for r in rows], dtype=np.int32)
        batch = mask_batch(ids, lengths, masking, rng, pad_id=pad_id, pad_multiple=1)
        batches.append(_fixed_shape(batch, seq_len, masking.max_predictions, pad_id))
    return SearchData(train=batches[heldout_batches:], heldout=batches[:heldout_batches],
                      vocab_size=masking.vocab_size)


def original_tokens(batch: MLMBatch) -> np.ndarray:
    """The unmasked token ids of a batch's sequences, without padding and without the ``CLS``
    and final ``SEP`` of each row (what a unigram baseline is estimated from)."""
    ids = batch.input_ids.copy()
    rows = np.repeat(np.arange(ids.shape[0]), batch.positions.shape[1])
    real = batch.weights.reshape(-1) > 0
    ids[rows[real], batch.positions.reshape(-1)[real]] = batch.labels.reshape(-1)[real]
    keep = [ids[r, 1:max(int(n) - 1, 1)] for r, n in enumerate(batch.valid_length)]
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int32)
