"""Masked-LM and distillation losses.

Used by the search (surrogate error e(ξ)) and by pretraining.

The distillation loss is the cross-entropy between the teacher's and the student's softened
masked-LM distributions, ``-Σ_v softmax(t/T)_v · log_softmax(s/T)_v``, averaged over the
weighted (real) masked positions. The released Bort script differed in two ways, reproduced by
``released_quirks=True`` for comparison only: the student's logits went through softmax
*before* the log-softmax (softmax applied twice), and the per-position divergence was averaged
over the vocabulary axis instead of summed. :func:`topk_soft_cross_entropy` is the same loss
against a teacher kept as its top-k logits (the search's teacher cache).
"""
from __future__ import annotations

from typing import Optional, Tuple

import mxnet as mx
import numpy as np

from .. import kernels
from ..model import BortModel

__all__ = ['soft_cross_entropy', 'topk_soft_cross_entropy', 'masked_lm_loss', 'kd_loss',
           'masked_accuracy']


def soft_cross_entropy(F, student_logits, teacher_logits, weights, temperature: float = 1.0,
                       released_quirks: bool = False):
    """Cross-entropy of the student's softened distribution against the teacher's.

    Parameters
    ----------
    F : mx.nd or mx.sym
    student_logits : (batch_size, num_masked, vocab_size)
    teacher_logits : (batch_size, num_masked, vocab_size)
    weights : (batch_size, num_masked)
        1 for real masked positions, 0 for padding.
    temperature : float
    released_quirks : bool
        Reproduce the released script's loss (softmax applied twice to the student; mean over
        the vocabulary axis). Off by default.

    Returns
    -------
    loss : scalar NDArray
        Mean over the weighted positions (0 when there are none).
    """
    teacher_prob = F.softmax(teacher_logits / temperature, axis=-1)
    student = student_logits / temperature
    if released_quirks:
        student = F.softmax(student, axis=-1)
    log_prob = F.log_softmax(student, axis=-1)
    per_token = teacher_prob * log_prob
    per_position = -(F.mean(per_token, axis=-1) if released_quirks else F.sum(per_token, axis=-1))
    return F.sum(per_position * weights) / F.maximum(F.sum(weights), 1.0)



def topk_soft_cross_entropy(student_logits: mx.nd.NDArray, topk_logits: mx.nd.NDArray,
                            topk_ids: mx.nd.NDArray, temperature: float = 1.0,
                            logsumexp: Optional[mx.nd.NDArray] = None) -> mx.nd.NDArray:
    """Cross-entropy against a teacher kept as its top-k logits (a compressed target).

    The student's distribution ``p = softmax(s / T)`` is over the whole vocabulary. The
    teacher's is rebuilt from its k largest logits ``l``:

    - with ``logsumexp`` (of the teacher's full ``l / T``, per position): the top-k tokens keep
      their exact probabilities ``q_j = exp(l_j / T − lse)`` and the remaining mass
      ``r = 1 − Σ q_j`` is spread evenly over the other V − k tokens, so the loss is
      ``−Σ_j q_j log p_j − r / (V − k) · Σ_{v ∉ top-k} log p_v``;
    - without: ``q = softmax(l / T)`` renormalised over the k tokens (the tail is dropped).

    With k = V both are the full :func:`soft_cross_entropy`. Imperative only (``gather_nd``);
    differentiable in ``student_logits``.

    Parameters
    ----------
    student_logits : (num_positions, vocab_size)
    topk_logits : (num_positions, k) float
        The teacher's k largest logits per position.
    topk_ids : (num_positions, k) int
        Their token ids.
    temperature : float
    logsumexp : (num_positions,) float, optional
        ``log Σ_v exp(l_v / T)`` over the teacher's whole vocabulary.

    Returns
    -------
    loss : scalar NDArray
        Mean over the positions (0 when there are none).
    """
    num, k = topk_ids.shape
    vocab = student_logits.shape[-1]
    if _fused(mx.nd, student_logits, None, released_quirks=False):
        # One operator over the vocabulary; the target's k probabilities and tail as below.
        if logsumexp is None:
            probs = mx.nd.softmax(topk_logits.astype('float32') / temperature, axis=-1)
            tail = mx.nd.zeros((num,), ctx=student_logits.context)
        else:
            probs = mx.nd.exp(topk_logits.astype('float32') / temperature
                              - logsumexp.reshape((num, 1)))
            tail = mx.nd.relu(1.0 - probs.sum(axis=-1)) / (vocab - k) if vocab > k else \
                mx.nd.zeros((num,), ctx=student_logits.context)
        return kernels.sparse_soft_cross_entropy(student_logits, topk_ids, probs, tail,
                                                 temperature).sum() / max(num, 1)
    log_prob = mx.nd.log_softmax(student_logits / temperature, axis=-1)
    rows = mx.nd.arange(num, ctx=topk_ids.context).reshape((num, 1)).broadcast_to((num, k))
    picked = mx.nd.gather_nd(log_prob, mx.nd.stack(rows, topk_ids.astype('float32')))
    if logsumexp is None:
        teacher_prob = mx.nd.softmax(topk_logits / temperature, axis=-1)
        return -(teacher_prob * picked).sum() / max(num, 1)
    teacher_prob = mx.nd.exp(topk_logits / temperature - logsumexp.reshape((num, 1)))
    per_position = -(teacher_prob * picked).sum(axis=-1)
    if vocab > k:
        rest = mx.nd.relu(1.0 - teacher_prob.sum(axis=-1))
        tail = log_prob.sum(axis=-1) - picked.sum(axis=-1)
        per_position = per_position - rest / (vocab - k) * tail
    return per_position.sum() / max(num, 1)

def masked_lm_loss(F, logits, labels, weights):
    """Cross-entropy of the masked-LM logits against the original tokens.

    Parameters
    ----------
    logits : (batch_size, num_masked, vocab_size)
    labels : (batch_size, num_masked) int
    weights : (batch_size, num_masked)

    Returns
    -------
    scalar NDArray: mean over the weighted positions.
    """
    log_prob = F.log_softmax(logits, axis=-1)
    nll = -F.pick(log_prob, labels, axis=-1)
    return F.sum(nll * weights) / F.maximum(F.sum(weights), 1.0)


def kd_loss(F, student_logits, teacher_logits, labels, weights, mlm_weight: float = 0.1,
            kd_weight: float = 0.5, temperature: float = 2.0, released_quirks: bool = False,
            hits: bool = False):
    """The pretraining objective: ``mlm_weight · MLM + kd_weight · T² · soft cross-entropy``.

    The T² factor keeps the distillation gradients' scale independent of the temperature
    (Hinton et al.). ``kd_weight = 0`` is the self-supervised baseline (the teacher is unused).
    Imperative float32 CPU arrays go through one fused operator
    (:func:`bort.kernels.vocab_losses`; the same values to float32 rounding).

    With ``hits``, a fourth value: per position 1 where the argmax prediction is right, from
    the fused operator's own pass (:func:`bort.kernels.vocab_losses`), or None where the
    operator does not run (:func:`masked_accuracy` then takes the argmax).

    Returns
    -------
    (total, mlm, kd) : scalar NDArrays
    """
    if kd_weight == 0:
        teacher_logits = None
    hit = None
    if _fused(F, student_logits, teacher_logits, released_quirks):
        nll, soft_ce, hit = kernels.vocab_losses(F, student_logits, teacher_logits, labels,
                                                 temperature, hits=True)
        count = F.maximum(F.sum(weights), 1.0)
        mlm = F.sum(nll * weights) / count
        kd = F.sum(soft_ce * weights) / count
    else:
        mlm = masked_lm_loss(F, student_logits, labels, weights)
        if teacher_logits is None:
            kd = F.zeros_like(mlm)
        else:
            kd = soft_cross_entropy(F, student_logits, teacher_logits, weights, temperature,
                                    released_quirks)
    total = mlm_weight * mlm + kd_weight * temperature ** 2 * kd
    return (total, mlm, kd, hit) if hits else (total, mlm, kd)


def _fused(F, student_logits, teacher_logits, released_quirks: bool) -> bool:
    """Whether :func:`kd_loss` runs as :func:`bort.kernels.vocab_losses`: imperative float32
    CPU arrays, the project's fused operators on (``BortModel.fused_kernels``), not the
    released script's loss."""
    if F is not mx.nd or released_quirks or not BortModel.fused_kernels:
        return False
    arrays = [student_logits] + ([teacher_logits] if teacher_logits is not None else [])
    return all(a.dtype == np.float32 and a.context.device_type == 'cpu' for a in arrays) \
        and kernels.train_ops_usable()


def masked_accuracy(logits, labels, weights, hits=None) -> Tuple[float, float]:
    """(correct, count) of argmax predictions at the weighted positions (numpy floats).

    ``hits`` (1 where the prediction is right, as :func:`kd_loss` returns them) spares the
    argmax over the vocabulary."""
    weights = weights.asnumpy() if hasattr(weights, 'asnumpy') else weights
    if hits is not None:
        right = hits.asnumpy() if hasattr(hits, 'asnumpy') else hits
    else:
        pred = (logits.argmax(axis=-1).asnumpy() if hasattr(logits, 'asnumpy')
                else logits.argmax(-1))
        right = pred == (labels.asnumpy() if hasattr(labels, 'asnumpy') else labels)
    return float((right * weights).sum()), float(weights.sum())
