"""The optimiser side of training: one learning-rate schedule, BERT-Adam, gradient clipping.

Every training loop of the project (search candidates, pretraining, fine-tuning) builds its
trainer with :func:`make_trainer` and sets the rate from :func:`learning_rate` each step.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional

import mxnet as mx
from gluonnlp.optimizer import BERTAdam

from . import kernels
from .distributed import Comm

__all__ = ['learning_rate', 'SCHEDULES', 'OPTIMIZERS', 'make_trainer', 'clip_global_norm',
           'global_norm', 'optimizer_step', 'no_decay', 'NORM_CHUNK', 'FusedBERTAdam', 'AdamW',
           'FusedAdam', 'zero_grads']

#: What :func:`make_trainer` builds: ``adamw`` (Adam with bias correction and decoupled weight
#: decay, as PyTorch's ``AdamW``), ``bertadam`` (the same without bias correction, as BERT and
#: the released Bort scripts), ``adam`` (MXNet's Adam: bias-corrected, weight decay added to
#: the gradient), ``sgd``.
OPTIMIZERS = ('adamw', 'bertadam', 'adam', 'sgd')

SCHEDULES = ('linear', 'noam', 'constant')


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_ratio: float = 0.0,
                  decay: str = 'linear') -> float:
    """The learning rate after ``step`` optimizer steps (``step`` counts from 0).

    All schedules warm up linearly over ``round(warmup_ratio · total_steps)`` steps, reaching
    ``base_lr`` at the end of the warm-up, then:

    - ``linear``: decay linearly to 0 at ``total_steps`` (the released Bort scripts);
    - ``noam``: decay as the inverse square root of the step (Vaswani et al.), continuous at the
      end of the warm-up: ``base_lr · sqrt(warmup / step)``;
    - ``constant``: stay at ``base_lr``.

    Parameters
    ----------
    step : int
        Optimizer steps already taken; the rate returned is the one for step ``step + 1``.
    total_steps : int
    base_lr : float
        The peak rate.
    warmup_ratio : float
        Fraction of ``total_steps`` spent warming up, in [0, 1].
    decay : {'linear', 'noam', 'constant'}
    """
    if decay not in SCHEDULES:
        raise ValueError(f'unknown schedule {decay!r}; choose from {SCHEDULES}')
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(f'warmup_ratio must be in [0, 1], got {warmup_ratio}')
    total_steps = max(int(total_steps), 1)
    warmup = int(round(warmup_ratio * total_steps))
    current = step + 1
    if current <= warmup:
        return base_lr * current / warmup
    if decay == 'linear':
        span = max(total_steps - warmup, 1)
        return base_lr * max(0.0, (total_steps - current) / span)
    if decay == 'noam':
        return base_lr * math.sqrt(max(warmup, 1) / current)
    return base_lr


def no_decay(name: str) -> bool:
    """Parameters exempt from weight decay: LayerNorm scales/shifts and biases."""
    return name.endswith(('gamma', 'beta', 'bias'))


@mx.optimizer.Optimizer.register
class FusedBERTAdam(BERTAdam):
    """GluonNLP's BERT-Adam, every parameter updated by one operator (:mod:`bort.kernels`).

    The same update, element for element, as ``BERTAdam`` (MXNet's ``multi_adamw_update``
    in groups of 4 parameters, ~6 ns an element on 2 cores; the fused pass ~2 ns). Where the
    operator is unavailable, or for float16 and GPU parameters, it is ``BERTAdam``.
    """

    #: MXNet's multi-tensor update takes at most this many parameters a call.
    FALLBACK_GROUP = 50

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._group = self.aggregate_num
        # One call with every parameter: Gluon's updater hands them over in groups of this.
        self.aggregate_num = 1 << 20

    def _update_impl(self, indices, weight, grad, state, multi_precision=False):
        if isinstance(indices, (tuple, list)) and not multi_precision:
            means, variances = (list(s) for s in zip(*state))
            if kernels.adamw_ready(list(weight) + list(grad) + means + variances):
                self._update_count(indices)
                if not isinstance(self.rescale_grad, mx.nd.NDArray):  # as BERTAdam does
                    self.rescale_grad = mx.nd.full(shape=(1,), val=self.rescale_grad,
                                                   ctx=weight[0].context)
                kernels.adamw_update(weight, grad, means, variances, self.rescale_grad,
                                     self._get_lrs(indices), self._get_wds(indices), self.beta1,
                                     self.beta2, self.epsilon, self.clip_gradient)
                return
        if not isinstance(indices, (tuple, list)):
            super()._update_impl(indices, weight, grad, state, multi_precision)
            return
        group = min(self._group, self.FALLBACK_GROUP)
        for start in range(0, len(indices), group):
            end = start + group
            super()._update_impl(indices[start:end], weight[start:end], grad[start:end],
                                 state[start:end], multi_precision)


@mx.optimizer.Optimizer.register
class AdamW(FusedBERTAdam):
    """Adam with bias correction and decoupled weight decay: PyTorch's ``AdamW``.

    At the t-th update of a parameter (its count, 1 on the first)::

        m ← β1·m + (1−β1)·g        v ← β2·v + (1−β2)·g²
        w ← w − lr·wd·w − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)

    BERT-Adam (:class:`FusedBERTAdam`) is the same without the two corrections; its first
    updates are then several times larger than the rate says: the ratio m/√v it applies is
    (1−β1^t)/√(1−β2^t) times Adam's, 3.2× at t = 1, 6.5× at t = 10, 3.2× at t = 100, 1.3× at
    t = 1,000 (β 0.9, 0.999). Over the long warm-ups BERT used (10,000 steps) that hardly
    matters; over runs of a few hundred or thousand steps it is the whole warm-up.

    The update is BERT-Adam's operator with per-step constants: rate
    ``lr·√(1−β2^t)/(1−β1^t)``, epsilon ``ε·√(1−β2^t)`` and weight decay scaled back by the
    inverse of the rate's factor, which is the formula above exactly (all parameters of one
    update share t).
    """

    #: ε is added to √v̂ (PyTorch); :class:`FusedAdam` adds it to √v (MXNet's Adam).
    epsilon_on_corrected = True

    def _update_impl(self, indices, weight, grad, state, multi_precision=False):
        listed = isinstance(indices, (tuple, list))
        first = indices[0] if listed else indices
        # The count this update will have (every parameter of a run advances together).
        t = self._index_update_count.get(first, self.begin_num_update) + 1
        factor = math.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t)
        lr, wd, epsilon = self.lr, self.wd, self.epsilon
        scheduled = self.lr_scheduler
        try:
            self.lr_scheduler = None
            self.lr = (scheduled(self.num_update) if scheduled is not None else lr) * factor
            self.wd = wd / factor
            if self.epsilon_on_corrected:
                self.epsilon = epsilon * math.sqrt(1.0 - self.beta2 ** t)
            super()._update_impl(indices, weight, grad, state, multi_precision)
        finally:
            self.lr, self.wd, self.epsilon, self.lr_scheduler = lr, wd, epsilon, scheduled


@mx.optimizer.Optimizer.register
class FusedAdam(AdamW):
    """MXNet's ``Adam`` without weight decay, every parameter updated by one operator.

    MXNet's Adam applies ``w ← w − lr·√(1−β2^t)/(1−β1^t) · m / (√v + ε)`` one parameter at a
    time (``adam_update``: 34 ms of a 260 ms search-candidate step of <4, 4, 128, 512> on one
    core, 74 calls); without weight decay that is :class:`AdamW`'s fused update with ε left
    on √v. :func:`make_trainer` uses it for ``adam`` when the weight decay is 0 (MXNet's
    coupled decay differs from the decoupled one the operator applies).
    """

    epsilon_on_corrected = False


def make_trainer(params: mx.gluon.ParameterDict, comm: Comm, optimizer: str = 'adamw',
                 lr: float = 1e-4, weight_decay: float = 0.01, epsilon: float = 1e-6,
                 momentum: float = 0.0, multi_precision: bool = False,
                 beta2: float = 0.999) -> mx.gluon.Trainer:
    """A trainer over ``params`` with gradients averaged across workers.

    Parameters
    ----------
    params : ParameterDict
        Trainable parameters (``grad_req != 'null'``).
    comm : Comm
    optimizer : {'adamw', 'bertadam', 'adam', 'sgd'}
        ``adamw`` is :class:`AdamW` (PyTorch's AdamW); ``bertadam`` is GluonNLP's Adam with
        decoupled weight decay and no bias correction, as BERT and the released Bort scripts
        (run as :class:`FusedBERTAdam`); ``adam`` is MXNet's Adam (weight decay added to the
        gradient); ``sgd`` is what the paper's search used.
    lr : float
        Initial rate; loops overwrite it each step with :func:`learning_rate`.
    weight_decay : float
        Not applied to LayerNorm parameters and biases (their ``wd_mult`` is set to 0).
    epsilon : float
        Adam's epsilon.
    momentum : float
        SGD momentum.
    multi_precision : bool
        Keep float32 master weights for float16 parameters (GPU mixed precision).
    beta2 : float
        Adam's second-moment decay (0.999 as BERT; RoBERTa's 0.98 damps the spikes of short
        runs at high rates).
    """
    for name, param in params.items():
        if no_decay(name):
            param.wd_mult = 0.0
    options = {'learning_rate': lr, 'wd': weight_decay, 'multi_precision': multi_precision}
    if optimizer not in OPTIMIZERS:
        raise ValueError(f'unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}')
    if optimizer == 'sgd':
        options['momentum'] = momentum
    else:
        options['epsilon'] = epsilon
        options['beta2'] = beta2
        # bertadam: the same update as GluonNLP's BERTAdam, one operator (FusedBERTAdam);
        # adam without weight decay: MXNet's Adam, one operator (FusedAdam)
        fused = {'bertadam': 'fusedbertadam', 'adam': 'fusedadam' if weight_decay == 0 else 'adam'}
        optimizer = fused.get(optimizer, optimizer)
    return comm.trainer(params, optimizer, options)


#: Elements per piece of the fused sum of squares: ``multi_sum_sq`` accumulates each input
#: serially in float32 (relative error 2e-2 on a 30,522 x 384 embedding gradient in one piece,
#: 1e-6 in pieces of 2^14), so large gradients go in as views of this many elements.
NORM_CHUNK = 1 << 14


def _norm_pieces(grads: List[mx.nd.NDArray]) -> List[mx.nd.NDArray]:
    """Views (no copies) of at most :data:`NORM_CHUNK` elements covering ``grads``."""
    pieces = []
    for g in grads:
        flat = g.reshape((-1,))
        size = flat.shape[0]
        pieces.extend(flat[i:min(i + NORM_CHUNK, size)] for i in range(0, size, NORM_CHUNK))
    return pieces


def global_norm(grads: List[mx.nd.NDArray], cache: Optional[object] = None) -> mx.nd.NDArray:
    """The global L2 norm of ``grads`` as one fused reduction.

    The plain ``sqrt(Σ (g ** 2).sum())`` runs two operators and a float32 copy per gradient
    (measured: 240 ms a step for a MiniLM-sized model on 2 cores); this reads each gradient once:
    :func:`bort.kernels.global_norm` (float32 CPU gradients, double accumulation, ~10 ms for
    23 M values), else ``mx.nd.multi_sum_sq`` over slices (~60 ms; serial within each slice).

    Parameters
    ----------
    grads : list of NDArray
        Any shapes, float32 or float16.
    cache : object, optional
        An object (the trainer) on which the list of views is kept between calls while the
        gradient arrays stay the same (they do: gradients are updated in place).

    Returns
    -------
    (1,) float32 NDArray
        ``inf``/``nan`` when a gradient is not finite.
    """
    fused = kernels.global_norm(grads)
    if fused is not None:
        return fused
    pieces = None
    if cache is not None:
        kept = getattr(cache, '_bort_norm_pieces', None)
        if kept is not None and len(kept[0]) == len(grads) and all(
                a is b for a, b in zip(kept[0], grads)):
            pieces = kept[1]
    if pieces is None:
        pieces = _norm_pieces(grads)
        if cache is not None:
            cache._bort_norm_pieces = (list(grads), pieces)  # pylint: disable=protected-access
    squares = mx.nd.multi_sum_sq(*pieces, num_arrays=len(pieces))
    return mx.nd.sqrt(mx.nd.sum(squares))


def _grads(params: Iterable[mx.gluon.Parameter], ctx: mx.Context = None) -> List[mx.nd.NDArray]:
    return [p.grad(ctx) if ctx is not None else p.list_grad()[0]
            for p in params if p.grad_req != 'null']


def zero_grads(params: Iterable[mx.gluon.Parameter]) -> None:
    """Zero every gradient of ``params`` (accumulated with ``grad_req='add'``) in one operator
    (``reset_arrays``) instead of one ``zeros_like`` a parameter."""
    grads = [g for p in params if p.grad_req != 'null' for g in p.list_grad()]
    if grads:
        mx.nd.reset_arrays(*grads, num_arrays=len(grads))


def clip_global_norm(params: Iterable[mx.gluon.Parameter], max_norm: float,
                     ctx: mx.Context = None) -> float:
    """Rescale the gradients so that their global L2 norm is at most ``max_norm``.

    Returns
    -------
    float
        The norm before clipping (``inf``/``nan`` when a gradient is not finite; the gradients
        are then left untouched so the caller can stop with a clear message).
    """
    grads = _grads(params, ctx)
    if not grads:
        return 0.0
    total = float(global_norm(grads).asscalar())
    if math.isfinite(total) and max_norm > 0 and total > max_norm:
        scale = max_norm / total
        for g in grads:
            g *= scale
    return total


def optimizer_step(trainer: mx.gluon.Trainer, params: Iterable[mx.gluon.Parameter],
                   max_norm: float = 0.0, scale: float = 1.0) -> float:
    """Average gradients over workers, clip their global norm, update the weights.

    The loops of this project backpropagate a loss that is already a mean over the worker's
    batch, so the update divides by ``scale`` (1 by default; the number of accumulated
    micro-batches with gradient accumulation). Clipping sees the worker-averaged gradient, the
    same one every worker applies, so all workers stay identical.

    The clipping factor is not applied to the gradients but folded into the optimizer's
    ``rescale_grad``, which every MXNet optimizer multiplies the gradient by inside its (fused,
    multi-tensor) update: the same update as scaling the gradients first, without a pass over
    them. The norm is one fused reduction (:func:`global_norm`) and one read to the host
    (needed to skip a non-finite update).

    Returns
    -------
    float
        The global gradient norm before clipping; not finite means the update was skipped.
    """
    trainer.allreduce_grads()
    # After allreduce the gradients are the workers' sum when Horovod averages inside the
    # update (CPU/Gloo builds, see Comm.trainer): the norm of that sum is workers times the
    # norm of the average.
    workers = getattr(trainer, 'grad_sum_workers', 1)
    scale *= workers
    grads = _grads(params)
    if not grads:
        return 0.0
    norm = float(global_norm(grads, cache=trainer).asscalar()) / scale
    if not math.isfinite(norm):
        return norm
    clip = max_norm / norm if 0 < max_norm < norm else 1.0
    trainer.update(scale / workers / clip)
    return norm
