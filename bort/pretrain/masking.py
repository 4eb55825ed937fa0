"""BERT's masking for the masked-LM objective (the 80/10/10 rule): the project's one implementation.

:func:`masking_for` builds the :class:`MaskingConfig` of a vocabulary and :func:`mask_tokens` draws
a masking of a batch with it. Everything that masks uses these two: the static masking stored in
shards (:mod:`bort.pretrain.shards`), the dynamic masking of pretraining batches, re-drawn every
epoch (:mod:`bort.pretrain.stream`), the search's fixed batches (:mod:`bort.search.data`) and the
MLM-head fitting (:mod:`bort.pretrain.mlm_head`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ['MaskingConfig', 'masking_for', 'mask_tokens']


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


def masking_for(vocab: Union[Mapping[str, int], Any], ratio: float = 0.15,
                max_predictions: Optional[int] = None, seq_len: Optional[int] = None
                ) -> MaskingConfig:
    """BERT masking over a vocabulary; CLS, SEP and padding are never masked.

    Parameters
    ----------
    vocab : Tokenizer or mapping
        Anything with ``mask_id, vocab_size, cls_id, sep_id, pad_id``: a tokenizer (attributes)
        or a data folder's ``meta.json`` (keys).
    ratio : float
        Share of a sequence's real tokens chosen for prediction.
    max_predictions : int, optional
        Cap on the chosen positions per sequence. Default: ``ceil(seq_len · ratio)`` when
        ``seq_len`` is given (the cap never binds), else BERT's 76.
    seq_len : int, optional
        The longest sequence that will be masked.
    """
    def get(name: str) -> int:
        return int(vocab[name] if isinstance(vocab, Mapping) else getattr(vocab, name))

    if max_predictions is None:
        max_predictions = (max(1, math.ceil(seq_len * ratio)) if seq_len
                           else MaskingConfig.max_predictions)
    return MaskingConfig(mask_id=get('mask_id'), vocab_size=get('vocab_size'),
                         special_ids=(get('cls_id'), get('sep_id'), get('pad_id')),
                         ratio=ratio, max_predictions=max_predictions)


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
