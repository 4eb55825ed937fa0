"""What one fine-tuning run trains on: the training split as configured, and each epoch's batches.

:func:`epoch_batches` cuts an epoch into batches in one of two ways (``FinetuneConfig.batching``):
shuffled, as a shuffled ``DataLoader`` does, or length-bucketed as the released scripts did.
Both are drawn from the seed and the epoch alone, so every worker and every resumed run cuts
the same batches.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from ..batching import bucket_batches
from ..checkpoint import step_seed
from .config import BATCHING, FinetuneConfig
from .readers import read_examples
from .tasks import Example

__all__ = ['load_split', 'epoch_batches', 'train_labels', 'CHUNK_BATCHES', 'PAD_MULTIPLE']

#: Batches per length-sorted chunk of an epoch (bigger: less padding, less randomness).
CHUNK_BATCHES = 50
#: Shuffled batches are padded to their longest row rounded up to a multiple of this: at most
#: 16 shapes up to length 128 (each shape's graph is cached), 10 % more tokens than padding
#: to the longest row itself on the first 1,000 SST-2 rows (the buckets of 16: 21 %).
PAD_MULTIPLE = 8


def load_split(config: FinetuneConfig, split: str) -> List[Example]:
    """Read ``split`` of the configured task (training data balanced and subsampled as set)."""
    train = split == 'train'
    examples = read_examples(config.task, config.data_dir, split,
                             balance=train and config.balance, seed=config.seed)
    if train and 0 < config.max_train_examples < len(examples):
        keep = np.random.RandomState(config.seed).choice(len(examples), config.max_train_examples,
                                                         replace=False)
        examples = [examples[i] for i in sorted(keep)]
    return examples


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  batching: str = 'shuffled') -> List[Tuple[np.ndarray, int]]:
    """The batches of one epoch, identical on every worker.

    Parameters
    ----------
    lengths : sequence of int
        Encoded length of each training example.
    batch_size : int
    seed, epoch : int
        The epoch's order is drawn from both.
    batching : {'shuffled', 'bucketed'}
        ``shuffled``: consecutive ``batch_size`` rows of a random permutation, as a shuffled
        ``DataLoader`` (the last batch short). ``bucketed`` (the released recipe): the
        permutation cut into chunks of :data:`CHUNK_BATCHES` batches, each chunk sorted by
        length and cut into batches, the batches shuffled; less padding, but each batch holds
        rows of one length, which are not a random sample (short SST-2 phrases together).

    Returns
    -------
    list of (indices, padded_length)
        ``ceil(N / batch_size)`` batches. Shuffled ones are padded to a multiple of
        :data:`PAD_MULTIPLE`, bucketed ones to the smallest bucket size that holds their
        longest row (:func:`bort.batching.bucket_batches`): a few distinct shapes, whose
        graphs are cached.
    """
    if batching not in BATCHING:
        raise ValueError(f'unknown batching {batching!r}; choose from {BATCHING}')
    rng = np.random.RandomState(step_seed(seed, epoch))
    order = rng.permutation(len(lengths))
    if batching == 'shuffled':
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            longest = max(int(lengths[i]) for i in rows)
            batches.append((rows, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE))
        return batches
    batches = []
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        for rows, padded in bucket_batches([lengths[i] for i in part], batch_size):
            batches.append((part[rows], padded))
    return [batches[i] for i in rng.permutation(len(batches))]


def train_labels(examples: Sequence[Example]) -> np.ndarray:
    """The training labels as the losses take them: (N,) float32 (class indices and
    regression scores alike)."""
    if any(ex.label is None for ex in examples):
        raise ValueError('training examples must be labelled')
    return np.asarray([ex.label for ex in examples], dtype=np.float32)
