"""Agora's transformation functions: new text pairs similar to given ones.

A transformation takes examples and a NumPy random state and returns new, *unlabelled*
examples (``label=None``): Agora labels them with its teacher, never with the originals' labels.
Each input example gives ``copies`` new ones. Transformations are looked up by name in
:data:`TRANSFORMS`, whose entries are factories taking keyword options:

* ``delete``: drop a ``fraction`` of the words of each text (at least one, never all);
* ``swap``: swap ``fraction``·n/2 (at least one) random pairs of neighbouring words;
* ``delete_swap``: ``delete`` or ``swap``, chosen at random per new example;
* ``mlm``: masked-LM resampling. A ``fraction`` of the (non-special) tokens of the encoded pair
  is masked and each masked token is replaced by a draw from a pretrained masked-LM's
  distribution at that position (softened by ``temperature``), then the pair is decoded back to
  text. ``mlm_model`` is a project model folder with an MLM decoder and a tokenizer.

Words are whitespace-separated. All randomness comes from the given ``rng``, so a transformation
called again with a freshly seeded state (as Agora does after a resume) gives the same points.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np

from .classifier import encode_pair
from ..batching import pad_batch
from ..model import load_model
from .tasks import Example
from ..tokenizers import load_tokenizer

__all__ = ['Transform', 'TRANSFORMS', 'register_transform', 'make_transform', 'delete_words',
           'swap_words', 'MaskedLMResampler']

log = logging.getLogger(__name__)

#: ``transform(examples, rng) -> new unlabelled examples``.
Transform = Callable[[Sequence[Example], np.random.RandomState], List[Example]]
#: Name -> factory(**options) -> Transform.
TRANSFORMS: Dict[str, Callable[..., Transform]] = {}


def register_transform(name: str):
    """Decorator adding a transformation factory to :data:`TRANSFORMS` under ``name``."""
    def add(factory: Callable[..., Transform]) -> Callable[..., Transform]:
        TRANSFORMS[name] = factory
        return factory
    return add


def make_transform(name: str, **options) -> Transform:
    """The transformation ``name`` with its options (unknown names list the known ones)."""
    if name not in TRANSFORMS:
        raise KeyError(f'unknown transformation {name!r}; known: {", ".join(sorted(TRANSFORMS))}')
    return TRANSFORMS[name](**options)


def delete_words(text: str, fraction: float, rng: np.random.RandomState) -> str:
    """``text`` without ``max(1, round(fraction · n))`` random words (one word is always kept)."""
    words = text.split()
    if len(words) < 2:
        return text
    drop = min(max(1, int(round(fraction * len(words)))), len(words) - 1)
    gone = set(rng.choice(len(words), size=drop, replace=False).tolist())
    return ' '.join(w for i, w in enumerate(words) if i not in gone)


def swap_words(text: str, fraction: float, rng: np.random.RandomState) -> str:
    """``text`` with ``max(1, round(fraction · n / 2))`` random neighbouring pairs swapped."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(max(1, int(round(fraction * len(words) / 2)))):
        i = int(rng.randint(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return ' '.join(words)


def _new_example(ex: Example, n: int, text_a: str, text_b: Optional[str]) -> Example:
    # A new point keeps the group/idx of its source (for castings), but never its label.
    return dataclasses.replace(ex, guid=f'{ex.guid}+t{n}', text_a=text_a, text_b=text_b,
                               label=None, gold=None)


def _word_transform(ops: Sequence[Callable[[str, float, np.random.RandomState], str]],
                    fraction: float, copies: int) -> Transform:
    def transform(examples: Sequence[Example], rng: np.random.RandomState) -> List[Example]:
        out = []
        for ex in examples:
            for n in range(copies):
                op = ops[int(rng.randint(len(ops)))] if len(ops) > 1 else ops[0]
                text_b = None if ex.text_b is None else op(ex.text_b, fraction, rng)
                out.append(_new_example(ex, n, op(ex.text_a, fraction, rng), text_b))
        return out
    return transform


@register_transform('delete')
def _delete(fraction: float = 0.15, copies: int = 1, **_unused) -> Transform:
    return _word_transform([delete_words], fraction, copies)


@register_transform('swap')
def _swap(fraction: float = 0.15, copies: int = 1, **_unused) -> Transform:
    return _word_transform([swap_words], fraction, copies)


@register_transform('delete_swap')
def _delete_swap(fraction: float = 0.15, copies: int = 1, **_unused) -> Transform:
    return _word_transform([delete_words, swap_words], fraction, copies)


class MaskedLMResampler:
    """Resample a fraction of each pair's tokens from a pretrained masked-LM.

    Parameters
    ----------
    mlm_model : str
        Project model folder with an MLM decoder and a tokenizer.
    fraction : float
        Share of the non-special tokens masked and resampled (at least one per pair).
    copies : int
        New examples per input example.
    temperature : float
        Softmax temperature of the draws (1: the model's distribution; → 0: its argmax).
    max_length : int
        Pairs are encoded (and so cut) to this many tokens.
    batch_size : int
        Pairs per forward pass.
    ctx : mx.Context, optional
    """

    def __init__(self, mlm_model: str, fraction: float = 0.15, copies: int = 1,
                 temperature: float = 1.0, max_length: int = 128, batch_size: int = 32,
                 ctx: Optional[mx.Context] = None, **_unused):
        if not mlm_model:
            raise ValueError("the 'mlm' transformation needs a masked-LM model folder")
        self.ctx = ctx or mx.cpu()
        self.model = load_model(mlm_model, ctx=self.ctx)
        if not self.model.has_decoder:
            raise ValueError(f'{mlm_model} has no MLM decoder: the mlm transformation needs one')
        self.tokenizer = load_tokenizer(mlm_model)
        self.fraction, self.copies, self.temperature = fraction, copies, temperature
        self.max_length, self.batch_size = max_length, batch_size
        # Draw only real tokens the tokenizer can write back (the model may have spare rows).
        allowed = np.ones(min(self.model.arch.vocab_size, self.tokenizer.vocab_size), bool)
        allowed[[i for i in self.tokenizer.special_ids if i < len(allowed)]] = False
        self.allowed = allowed

    def _resample(self, pairs: List[List[int]], types: List[List[int]],
                  rng: np.random.RandomState) -> List[List[int]]:
        """Masked positions of each pair replaced by draws; pairs are (ids) lists."""
        specials = self.tokenizer.special_ids
        positions = []
        for ids in pairs:
            real = [p for p, i in enumerate(ids) if i not in specials]
            k = min(len(real), max(1, int(round(self.fraction * len(real)))))
            positions.append(sorted(rng.choice(real, size=k, replace=False).tolist())
                             if real else [])
        width = max(1, max(len(p) for p in positions))
        masked = []
        for ids, pos in zip(pairs, positions):
            ids = list(ids)
            for p in pos:
                ids[p] = self.tokenizer.mask_id
            masked.append(ids)
        inputs, valid = pad_batch(masked, max(len(ids) for ids in pairs), self.tokenizer.pad_id)
        where = np.zeros((len(pairs), width), dtype=np.int32)  # padded with position 0, unused
        for row, pos in enumerate(positions):
            where[row, :len(pos)] = pos
        token_types = None
        if self.model.arch.token_type_vocab_size:
            token_types = mx.nd.array(pad_batch(types, inputs.shape[1], 0)[0], ctx=self.ctx)
        out = self.model(mx.nd.array(inputs, ctx=self.ctx), token_types,
                         mx.nd.array(valid, ctx=self.ctx), mx.nd.array(where, ctx=self.ctx))
        logits = out[-1].asnumpy()[:, :, :len(self.allowed)].astype(np.float64)
        logits = np.where(self.allowed, logits / max(self.temperature, 1e-6), -np.inf)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        result = []
        for row, (ids, pos) in enumerate(zip(pairs, positions)):
            ids = list(ids)
            for col, p in enumerate(pos):
                ids[p] = int(rng.choice(len(self.allowed), p=probs[row, col]))
            result.append(ids)
        return result

    def _text(self, ids: Sequence[int], types: Sequence[int], segment: int) -> str:
        return self.tokenizer.decode([i for i, t in zip(ids, types) if t == segment],
                                     skip_special=True).strip()

    def __call__(self, examples: Sequence[Example], rng: np.random.RandomState) -> List[Example]:
        jobs = [(ex, n) for ex in examples for n in range(self.copies)]
        encoded = [encode_pair(self.tokenizer, ex.text_a, ex.text_b, self.max_length)
                   for ex, _ in jobs]
        out = []
        for start in range(0, len(jobs), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            new_ids = self._resample([ids for ids, _ in chunk], [t for _, t in chunk], rng)
            for (ex, n), ids, (_, types) in zip(jobs[start:start + self.batch_size], new_ids,
                                                chunk):
                text_b = None if ex.text_b is None else self._text(ids, types, 1)
                out.append(_new_example(ex, n, self._text(ids, types, 0), text_b))
        return out


@register_transform('mlm')
def _mlm(**options) -> Transform:
    return MaskedLMResampler(**options)
