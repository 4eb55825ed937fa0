"""Dynamic masking for the masked-LM objective (BERT's 80/10/10 rule), re-drawn every epoch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ['MaskingConfig', 'mask_tokens']


@dataclass(frozen=True)
class MaskingConfig:
    """BERT's masking: choose ``ratio`` of the real tokens; replace 80 % of them by the mask
    token, 10 % by a random token, keep 10 %; at most ``max_predictions`` per sequence."""

    mask_id: int
    vocab_size: int
    special_ids: Tuple[int, ...] = ()
    ratio: float = 0.15
    max_predictions: int = 76
    mask_prob: float = 0.8
    random_prob: float = 0.1


def mask_tokens(input_ids: np.ndarray, valid_length: np.ndarray, config: MaskingConfig,
                rng: np.random.RandomState):
    """Draw a fresh masking of a batch (dynamic masking: call it again every epoch).

    Parameters
    ----------
    input_ids : (batch_size, seq_len) int
    valid_length : (batch_size,) int
    config : MaskingConfig
    rng : np.random.RandomState

    Returns
    -------
    masked_ids : (batch_size, seq_len) int
        The input with the chosen positions replaced.
    positions : (batch_size, max_predictions) int
        Chosen positions, padded with 0.
    labels : (batch_size, max_predictions) int
        The original tokens there, padded with 0.
    weights : (batch_size, max_predictions) float32
        1 for real predictions, 0 for padding.
    """
    batch, _ = input_ids.shape
    max_pred = config.max_predictions
    masked = input_ids.copy()
    positions = np.zeros((batch, max_pred), dtype=np.int32)
    labels = np.zeros((batch, max_pred), dtype=np.int32)
    weights = np.zeros((batch, max_pred), dtype=np.float32)
    special = np.asarray(config.special_ids, dtype=input_ids.dtype)
    for row in range(batch):
        length = int(valid_length[row])
        candidates = np.arange(length)
        candidates = candidates[~np.isin(input_ids[row, :length], special)]
        if candidates.size == 0:
            continue
        count = min(max_pred, max(1, int(round(candidates.size * config.ratio))))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        draw = rng.random_sample(count)
        randoms = rng.randint(0, config.vocab_size, size=count)
        originals = input_ids[row, chosen]
        replaced = np.where(draw < config.mask_prob, config.mask_id,
                            np.where(draw < config.mask_prob + config.random_prob, randoms,
                                     originals))
        masked[row, chosen] = replaced
        positions[row, :count] = chosen
        labels[row, :count] = originals
        weights[row, :count] = 1.0
    return masked, positions, labels, weights
