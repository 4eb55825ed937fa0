"""The teacher side of distillation: a frozen masked-LM model, and the vocabulary checks.

A teacher is any :class:`~bort.model.BortModel` with an MLM head (it may be much larger than the
student: only its output distribution over the vocabulary matters). It runs without gradients
and in inference mode (no dropout). Teacher and student must share the vocabulary: same size, and,
when both sides name their tokenizer, the same tokens in the same order.

Typical use (also by the search, which scores every candidate against the same teacher)::

    teacher = Teacher.load(folder, vocab_size=meta['vocab_size'], vocab_sha1=meta['vocab_sha1'])
    nd = batch.as_nd(ctx)                       # an MLMBatch from bort.pretrain.stream
    t_logits = teacher.logits(nd)               # (batch, num_masked, vocab), no gradient
    with mx.autograd.record():
        s_logits = mlm_logits(student, nd)
        total, mlm, kd = kd_loss(mx.nd, s_logits, t_logits, nd['labels'], nd['weights'])
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import mxnet as mx
import numpy as np

from ..errors import UserError
from ..model import BortModel, load_model

__all__ = ['Teacher', 'VocabularyMismatchError', 'mlm_logits', 'fast_mlm_logits',
           'check_vocab_size']

log = logging.getLogger(__name__)


class VocabularyMismatchError(UserError, ValueError):
    """Teacher, student and data do not share one vocabulary."""


def check_vocab_size(what: str, found: int, expected: int, source: str) -> None:
    """Raise :class:`VocabularyMismatchError` unless ``found == expected``."""
    if found != expected:
        raise VocabularyMismatchError(
            f'{what} has a vocabulary of {found} tokens but the data ({source}) uses {expected}: '
            f'distillation compares distributions over the same vocabulary, so the teacher, '
            f'the student and the tokenizer of the shards must agree')


def mlm_logits(model: BortModel, batch: Dict[str, mx.nd.NDArray]) -> mx.nd.NDArray:
    """The masked-LM logits of ``model`` at the batch's masked positions.

    Parameters
    ----------
    model : BortModel
        With a decoder.
    batch : dict
        ``MLMBatch.as_nd()``: ``input_ids, segment_ids (batch, seq_len)``, ``valid_length
        (batch,)``, ``positions (batch, num_masked)``.

    Returns
    -------
    (batch_size, num_masked, vocab_size) NDArray
    """
    # Token types are passed only to models that embed them (a hybridized graph rejects unused
    # inputs); valid_length follows the model's dtype (float16 on the GPU path).
    types = batch['segment_ids'] if model.arch.token_type_vocab_size else None
    dtype = model.word_embed[0].weight.dtype
    out = model(batch['input_ids'], types, batch['valid_length'].astype(dtype, copy=False),
                batch['positions'])
    return out[-1] if isinstance(out, (list, tuple)) else out


def fast_mlm_logits(fast, decoder: mx.gluon.Block,
                    batch: Dict[str, mx.nd.NDArray]) -> mx.nd.NDArray:
    """MLM logits at the masked positions from a fast inference encoder and a model's MLM head.

    Only the masked positions are gathered and decoded, as :class:`~bort.model.BortModel` does.

    Parameters
    ----------
    fast : bort.inference.fast.FastModel
        The encoder (inference only: no dropout, no gradient).
    decoder : Block
        The model's MLM head: ``(rows, units) -> (rows, vocab_size)``.
    batch : dict
        As :func:`mlm_logits`.

    Returns
    -------
    (batch_size, num_masked, vocab_size) float32 NDArray
    """
    inputs, positions = batch['input_ids'], batch['positions']
    types = batch.get('segment_ids') if fast.arch.token_type_vocab_size else None
    out = fast(inputs, valid_length=batch['valid_length'], token_types=types)
    seq = out[0] if isinstance(out, (list, tuple)) else out               # (B, L, H)
    size, length, units = seq.shape
    rows = mx.nd.arange(size, ctx=seq.context).reshape((-1, 1)) * length
    index = mx.nd.broadcast_add(positions.astype('float32'), rows).reshape((-1,))
    hidden = mx.nd.take(seq.reshape((-1, units)), index)                  # (B*M, H)
    return decoder(hidden).reshape((size, positions.shape[1], -1))


class Teacher:
    """A frozen masked-LM model.

    Parameters
    ----------
    model : BortModel
        With an MLM head; its parameters get ``grad_req='null'``.
    hybridize : bool
    fast : bool
        Run the encoder through :class:`bort.inference.fast.FastModel` (see :meth:`logits`) on
        the CPU in float32. Off by default: measured on 2 cores (alternating, one process) at
        training batch sizes it gained nothing over the plain graph, whose attention masking is
        now as cheap (:class:`bort.model.BortModel`): teacher <6, 12, 384, 1536> at 16 x 64,
        315 ms plain, 332 ms fast; <12, 12, 768, 3072> at 8 x 128, 3.65 s and 3.77 s; and it
        holds a second copy of the weights plus oneDNN's reordered copies (+0.8 GB for the
        BERT-base teacher). It pays at small batches (see :mod:`bort.inference.fast`).
    """

    def __init__(self, model: BortModel, hybridize: bool = True, fast: bool = False):
        if not model.has_decoder:
            raise ValueError('the teacher has no masked-LM head (decoder): distillation needs '
                             'its output distribution')
        model.collect_params().setattr('grad_req', 'null')
        if hybridize:
            model.hybridize(static_alloc=True)
        self.model = model
        self.fast = fast
        self._fast = None

    @property
    def vocab_size(self) -> int:
        return self.model.arch.vocab_size

    @classmethod
    def load(cls, folder: str, vocab_size: int, vocab_sha1: Optional[str] = None,
             ctx: Optional[mx.Context] = None, hybridize: bool = True) -> 'Teacher':
        """A teacher from a model folder (``arch.json`` + ``model.params`` [+ tokenizer]).

        Parameters
        ----------
        folder : str
        vocab_size : int
            The data's vocabulary size; a different teacher vocabulary is an error.
        vocab_sha1 : str, optional
            The data tokenizer's fingerprint (:func:`bort.pretrain.prepare.vocab_fingerprint`);
            checked against the teacher folder's tokenizer when it has one.

        Raises
        ------
        VocabularyMismatchError
        """
        model = load_model(folder, ctx=ctx)
        check_vocab_size(f'the teacher {folder}', model.arch.vocab_size, vocab_size,
                         'meta.json')
        if vocab_sha1:
            cls._check_tokens(folder, vocab_sha1)
        log.info('teacher %s: %s, %d layers, width %d', folder, model.arch.label,
                 model.arch.num_layers, model.arch.units)
        return cls(model, hybridize=hybridize)

    @staticmethod
    def _check_tokens(folder: str, vocab_sha1: str) -> None:
        # pylint: disable=import-outside-toplevel
        from .shards import vocab_fingerprint
        from ..tokenizers import load_tokenizer
        try:
            tokenizer = load_tokenizer(folder)
        except (FileNotFoundError, ValueError, OSError):
            log.info('the teacher folder %s has no tokenizer: only the vocabulary size is checked',
                     folder)
            return
        if vocab_fingerprint(tokenizer) != vocab_sha1:
            raise VocabularyMismatchError(
                f'the teacher {folder} and the data have vocabularies of the same size but '
                f'different tokens (the tokenizer saved with the teacher differs from the one '
                f'the shards were made with): prepare the data with the teacher\'s tokenizer')

    def logits(self, batch: Dict[str, mx.nd.NDArray]) -> mx.nd.NDArray:
        """Teacher logits at the masked positions, outside autograd, as float32.

        With ``fast`` (CPU, float32) the encoder runs through the fast inference graph
        (:class:`bort.inference.fast.FastModel`), built on the first call from the teacher's
        weights (frozen, so built once), and only the masked positions go through the MLM
        head: the same logits up to float32 rounding (``tests/test_train_step.py``).

        Returns
        -------
        (batch_size, num_masked, vocab_size) NDArray
        """
        with mx.autograd.pause(train_mode=False):
            fast = self._fast_model()
            if fast is None:
                return mlm_logits(self.model, batch).astype('float32', copy=False)
            return fast_mlm_logits(fast, self.model.decoder, batch)

    def _fast_model(self):
        """The fast encoder, or None where the plain graph is used (not asked, GPU, float16)."""
        if not self.fast:
            return None
        weight = self.model.word_embed[0].weight
        if np.dtype(weight.dtype) != np.float32 or weight.list_ctx()[0].device_type != 'cpu':
            return None
        if self._fast is None:
            # pylint: disable=import-outside-toplevel
            from ..inference.fast import FastModel
            self._fast = FastModel.from_model(self.model, ctx=weight.list_ctx()[0])
        return self._fast
