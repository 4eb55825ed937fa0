"""Batches of token sequences: right padding and length bucketing.

Shared by fine-tuning, scoring and the fast inference path: sorting a mixed-length corpus by
length and padding each batch to one of a few sizes keeps padding (wasted compute) and the number
of distinct input shapes (cached graphs, oneDNN primitives) small.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['pad_batch', 'bucket_batches', 'DEFAULT_BUCKETS']

#: Padded lengths a bucketed batch may take.
DEFAULT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def pad_batch(token_lists: Sequence[Sequence[int]], length: int, pad_id: int = 1
              ) -> Tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists (truncating longer ones) to one (batch, length) array.

    Returns
    -------
    tokens : (batch, length) int32
    valid_length : (batch,) int32
    """
    tokens = np.full((len(token_lists), length), pad_id, dtype=np.int32)
    valid = np.zeros(len(token_lists), dtype=np.int32)
    for row, ids in enumerate(token_lists):
        ids = list(ids)[:length]
        tokens[row, :len(ids)] = ids
        valid[row] = len(ids)
    return tokens, valid


def bucket_batches(lengths: Sequence[int], batch_size: int,
                   buckets: Optional[Sequence[int]] = DEFAULT_BUCKETS,
                   max_length: Optional[int] = None) -> List[Tuple[np.ndarray, int]]:
    """Group sequences into batches of similar length.

    Sequences are sorted by length (stable), cut into consecutive batches of ``batch_size`` and
    each batch is padded to the smallest bucket size that holds its longest row (to that length
    itself when ``buckets`` is None). A few bucket sizes keep the number of distinct shapes, and so
    of cached graphs and oneDNN primitives, small.

    Parameters
    ----------
    lengths : sequence of int, length N
    batch_size : int
    buckets : sequence of int or None
    max_length : int, optional
        Longer rows are truncated to this (and it caps the bucket sizes).

    Returns
    -------
    list of (indices, padded_length)
        ``indices`` are positions into the input; scatter each batch's outputs back to them to
        restore the input order.
    """
    if batch_size <= 0:
        raise ValueError('batch_size must be positive')
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    order = np.argsort(lengths, kind='stable')
    sizes = sorted(set(buckets)) if buckets else None
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(int(lengths[idx].max()), 1)
        padded = longest
        if sizes:
            fitting = [b for b in sizes if b >= longest]
            padded = fitting[0] if fitting else longest
        if max_length is not None:
            padded = min(padded, max_length)
        batches.append((idx, padded))
    return batches
