"""Training batches for masked-LM pretraining: dynamic masking over length-bucketed shards.

The data order is defined per *data part*: part ``p`` of ``P`` reads the shard files
``files[p::P]``, one at a time. Each epoch it shuffles its files; within a file it sorts the rows
by length (ties broken at random), cuts them into chunks of ``batch_size`` consecutive rows (so a
chunk is a length bucket), shuffles the chunks, and masks each chunk afresh (80/10/10), with a
random state drawn from ``(seed, part, epoch, file, chunk)``; the masking differs every epoch.

A worker of rank ``r`` among ``N`` owns the parts ``r·P/N ... (r+1)·P/N - 1`` and its micro-batch
is the concatenation of one chunk of each. With ``P`` fixed (default: the number of workers), one
process with ``N`` times the batch sees exactly the union of what ``N`` workers see, and the
data position (``epoch, file, chunk`` per part) is all a resume needs.

:func:`mask_batch` builds one :class:`MLMBatch` from token ids with
:func:`bort.pretrain.masking.mask_tokens`; it is the piece other loops (the search) reuse. The
masking settings come from :func:`bort.pretrain.masking.masking_for`.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import mxnet as mx
import numpy as np

from ..errors import ConfigError, DataFormatError
from .masking import MaskingConfig, mask_tokens
from .shards import original_tokens, read_shard

__all__ = ['MLMBatch', 'mask_batch', 'PartStream', 'BatchStream', 'list_shards',
           'fixed_batches']

log = logging.getLogger(__name__)


@dataclass
class MLMBatch:
    """One masked-LM batch (numpy). Padding rows/columns carry ``weights == 0``.

    Attributes
    ----------
    input_ids : (batch_size, seq_len) int32
        Tokens after masking.
    segment_ids : (batch_size, seq_len) int32
    valid_length : (batch_size,) int32
    positions : (batch_size, num_masked) int32
        Masked positions, padded with 0.
    labels : (batch_size, num_masked) int32
        Original tokens at those positions.
    weights : (batch_size, num_masked) float32
        1 for a real prediction, 0 for padding.
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    valid_length: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.valid_length.sum())

    @property
    def num_masked(self) -> int:
        return int(self.weights.sum())

    def __len__(self) -> int:
        return len(self.valid_length)

    def as_nd(self, ctx: Optional[mx.Context] = None) -> Dict[str, mx.nd.NDArray]:
        """The arrays on ``ctx`` (ids as float32, MXNet's embedding input type)."""
        ctx = ctx or mx.cpu()
        return {'input_ids': mx.nd.array(self.input_ids, ctx=ctx),
                'segment_ids': mx.nd.array(self.segment_ids, ctx=ctx),
                'valid_length': mx.nd.array(self.valid_length, ctx=ctx),
                'positions': mx.nd.array(self.positions, ctx=ctx),
                'labels': mx.nd.array(self.labels, ctx=ctx),
                'weights': mx.nd.array(self.weights, ctx=ctx)}

    @staticmethod
    def concat(batches: Sequence['MLMBatch'], pad_id: int = 0) -> 'MLMBatch':
        """Rows of several batches in one, padded to the widest."""
        if len(batches) == 1:
            return batches[0]

        def stack(name, fill):
            arrays = [getattr(b, name) for b in batches]
            width = max(a.shape[1] for a in arrays)
            return np.concatenate([_fit_width(a, width, fill) for a in arrays])

        return MLMBatch(stack('input_ids', pad_id), stack('segment_ids', 0),
                        np.concatenate([b.valid_length for b in batches]),
                        stack('positions', 0), stack('labels', 0), stack('weights', 0))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fit_width(array: np.ndarray, width: int, fill: int) -> np.ndarray:
    if array.shape[1] >= width:
        return array[:, :width]
    return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=fill)


def mask_batch(token_ids: np.ndarray, valid_length: np.ndarray, masking: MaskingConfig,
               rng: np.random.RandomState, segment_ids: Optional[np.ndarray] = None,
               pad_id: int = 0, pad_multiple: int = 8) -> MLMBatch:
    """Draw a masking of ``token_ids`` and cut the padding to what the batch needs.

    Widths are rounded up to a multiple of ``pad_multiple`` (sequence and masked positions):
    a hybridized model then meets few distinct shapes, each of which costs a graph set-up.

    Parameters
    ----------
    token_ids : (batch_size, seq_len) int
        Original tokens, padded.
    valid_length : (batch_size,) int
    masking : MaskingConfig
    rng : np.random.RandomState
    segment_ids : (batch_size, seq_len) int, optional
        Zeros when omitted.
    pad_id : int
    pad_multiple : int
    """
    width = _round_up(int(valid_length.max()), pad_multiple)
    token_ids = _fit_width(token_ids, width, pad_id)
    masked, positions, labels, weights = mask_tokens(token_ids, valid_length, masking, rng)
    num_masked = _round_up(max(int(weights.sum(axis=1).max()), 1), pad_multiple)
    segments = (np.zeros_like(token_ids) if segment_ids is None
                else _fit_width(segment_ids, width, 0))
    return MLMBatch(masked.astype(np.int32), segments.astype(np.int32),
                    valid_length.astype(np.int32), _fit_width(positions, num_masked, 0),
                    _fit_width(labels, num_masked, 0), _fit_width(weights, num_masked, 0))


def list_shards(path: str, split: str = 'train') -> List[str]:
    """Shard files of ``split`` in a prepared folder, or those a glob pattern / file names."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, f'{split}-*.npz')))
    else:
        files = sorted(glob.glob(path))
    if not files:
        raise DataFormatError(f'no {split} shards at {path}')
    return files


def _rng(*key: int) -> np.random.RandomState:
    return np.random.RandomState(np.random.SeedSequence(list(key)).generate_state(4))


class PartStream:
    """The endless batch sequence of one data part (see the module docstring).

    Parameters
    ----------
    files : list of str
        This part's shard files.
    part : int
        The part's index (enters the random keys).
    batch_size : int
        Rows per batch (the last chunk of a file may be smaller).
    masking : MaskingConfig
    seed : int
    position : dict, optional
        ``{'epoch', 'file', 'chunk'}`` to continue from (as returned by :attr:`position`).
    pad_id : int
    """

    def __init__(self, files: Sequence[str], part: int, batch_size: int,
                 masking: MaskingConfig, seed: int = 0, position: Optional[Dict] = None,
                 pad_id: int = 0):
        if not files:
            raise DataFormatError(f'data part {part} has no shard file: prepare at least as '
                                  f'many shards as data parts')
        self.files, self.part, self.batch_size = list(files), part, batch_size
        self.masking, self.seed, self.pad_id = masking, seed, pad_id
        pos = position or {}
        self.epoch, self.file, self.chunk = pos.get('epoch', 0), pos.get('file', 0), \
            pos.get('chunk', 0)
        self._loaded = None  # (epoch, file) -> tokens, lengths, chunks

    @property
    def position(self) -> Dict[str, int]:
        """Where the next batch comes from."""
        return {'epoch': self.epoch, 'file': self.file, 'chunk': self.chunk}

    def _load(self):
        key = (self.epoch, self.file)
        if self._loaded is None or self._loaded[0] != key:
            order = _rng(self.seed, self.part, self.epoch).permutation(len(self.files))
            arrays = read_shard(self.files[order[self.file]])
            tokens, lengths = original_tokens(arrays), arrays['valid_lengths']
            rng = _rng(self.seed, self.part, self.epoch, self.file)
            rows = np.lexsort((rng.random_sample(len(lengths)), lengths))
            chunks = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
            self._loaded = (key, tokens, lengths, chunks)
        return self._loaded[1:]

    def __iter__(self) -> Iterator[MLMBatch]:
        return self

    def __next__(self) -> MLMBatch:
        tokens, lengths, chunks = self._load()
        rows = chunks[self.chunk]
        rng = _rng(self.seed, self.part, self.epoch, self.file, self.chunk, 1)
        batch = mask_batch(tokens[rows], lengths[rows], self.masking, rng, pad_id=self.pad_id)
        self.chunk += 1
        if self.chunk == len(chunks):
            self.chunk, self.file = 0, self.file + 1
            if self.file == len(self.files):
                self.file, self.epoch = 0, self.epoch + 1
        return batch


class BatchStream:
    """A worker's micro-batches: one chunk from each of its data parts, concatenated.

    Parameters
    ----------
    files : list of str
        All training shards (every worker lists the same).
    rank, size : int
        This worker among ``size``.
    batch_size : int
        Rows per micro-batch of this worker.
    num_parts : int
        ``P``; 0 means ``size``. Must be a multiple of ``size`` and divide into ``batch_size``.
    masking : MaskingConfig
    seed : int
    positions : dict, optional
        Part index (as str or int) -> position, from a checkpoint.
    pad_id : int
    """

    def __init__(self, files: Sequence[str], rank: int, size: int, batch_size: int,
                 num_parts: int, masking: MaskingConfig, seed: int = 0,
                 positions: Optional[Dict] = None, pad_id: int = 0):
        num_parts = num_parts or size
        if num_parts % size:
            raise ConfigError(f'--data_parts ({num_parts}) must be a multiple of the number of '
                              f'workers ({size})')
        per_worker = num_parts // size
        if batch_size % per_worker:
            raise ConfigError(f'--batch_size {batch_size} does not split over the {per_worker} '
                              f'data parts of each worker (--data_parts {num_parts})')
        if len(files) < num_parts:
            raise DataFormatError(f'{len(files)} shard files for {num_parts} data parts: '
                                  f'prepare the data with at least {num_parts} shards (more '
                                  f'preparation workers or fewer shard_rows)')
        positions = {int(k): v for k, v in (positions or {}).items()}
        mine = range(rank * per_worker, (rank + 1) * per_worker)
        if positions and set(positions) != set(range(num_parts)):
            log.warning('the saved data position has parts %s, this run %d: the data order '
                        'restarts for the parts it lacks (keep data_parts fixed across resumes)',
                        sorted(positions), num_parts)
        self.pad_id = pad_id
        self.parts = [PartStream(files[p::num_parts], p, batch_size // per_worker, masking, seed,
                                 positions.get(p), pad_id) for p in mine]

    @property
    def positions(self) -> Dict[int, Dict[str, int]]:
        return {p.part: p.position for p in self.parts}

    def __iter__(self) -> Iterator[MLMBatch]:
        return self

    def __next__(self) -> MLMBatch:
        return MLMBatch.concat([next(p) for p in self.parts], self.pad_id)


def fixed_batches(files: Sequence[str], batch_size: int, masking: MaskingConfig,
                  max_batches: int = 0, seed: int = 12345, pad_id: int = 0) -> List[MLMBatch]:
    """Held-out batches with one fixed masking, for comparable evaluations over a run.

    Files in order, rows in length order, at most ``max_batches`` (0: all).
    """
    out: List[MLMBatch] = []
    rng = np.random.RandomState(seed)
    for path in files:
        arrays = read_shard(path)
        tokens, lengths = original_tokens(arrays), arrays['valid_lengths']
        for start in range(0, len(lengths), batch_size):
            rows = slice(start, start + batch_size)
            out.append(mask_batch(tokens[rows], lengths[rows], masking, rng, pad_id=pad_id))
            if max_batches and len(out) >= max_batches:
                return out
    return out
