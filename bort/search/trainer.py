"""The surrogate error e(ξ): train a candidate from scratch for s steps, score it on held-out data.

One fixed hyperparameter set for every candidate (the paper: SGD, one batch size, learning rate,
clipping constant and warm-up proportion), the learning-rate schedule of :mod:`bort.optim`, and
the distillation objective of :mod:`bort.pretrain.losses` against the teacher's masked-LM distribution
(:class:`~bort.search.teacher.TeacherTargets`). A candidate trains on one worker; its
initialisation and dropout are seeded from the search seed and its tuple, so the result does not
depend on which worker trains it, nor on the order.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import math
import time
from typing import Callable, Dict, Optional

import mxnet as mx

from ..arch import Architecture
from ..distributed import Comm
from ..extraction import extract_student
from ..pretrain.teacher import mlm_logits
from ..layers import set_compute_dtype
from ..model import build_model, output_bias
from ..optim import learning_rate, make_trainer, optimizer_step
from .config import SearchConfig
from .targets import TeacherTargets

__all__ = ['candidate_seed', 'candidate_step', 'train_candidate']

log = logging.getLogger(__name__)


def candidate_seed(seed: int, arch: Architecture) -> int:
    """A seed of its own for each candidate, from the search seed and the tuple."""
    text = f'{seed}:' + ','.join(map(str, arch.tuple))
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % (2 ** 31 - 1)


def candidate_step(model, trainer: mx.gluon.Trainer, params, targets: TeacherTargets,
                   index: int, batch: Dict[str, mx.nd.NDArray], clip: float):
    """One optimizer step of a candidate on training batch ``index`` of the targets.

    Parameters
    ----------
    model : BortModel
        With a decoder.
    trainer : Trainer
    params : list of Parameter
        The trainable parameters.
    targets : TeacherTargets
    index : int
    batch : dict
        ``targets.data.train[index].as_nd(ctx)``.
    clip : float
        Global gradient-norm clip (0: none).

    Returns
    -------
    (loss, norm) : scalar NDArray, float
        The distillation loss of the batch and the gradient norm before clipping (not finite:
        the update was skipped).
    """
    with mx.autograd.record():
        loss = targets.train_loss(index, mlm_logits(model, batch))
    loss.backward()
    return loss, optimizer_step(trainer, params, clip)


def train_candidate(arch: Architecture, targets: TeacherTargets, config: SearchConfig,
                    ctx: Optional[mx.Context] = None,
                    progress: Optional[Callable] = None, teacher=None) -> Dict:
    """Train ``arch`` for ``config.steps`` steps (from scratch, or extracted from ``teacher``
    with ``config.init`` 'teacher') and measure its surrogate error.

    Parameters
    ----------
    arch : Architecture
        The candidate (with the teacher's vocabulary; no pooler).
    targets : TeacherTargets
        The teacher's outputs on the search batches (``targets.data``).
    config : SearchConfig
        The fixed hyperparameter set: ``steps, optimizer, lr, momentum, weight_decay, clip,
        warmup_ratio, schedule`` (the temperature is the targets').
    ctx : mx.Context, optional
    progress : callable, optional
        ``progress(iterable, **tqdm_kwargs)`` for a bar over the steps.
    teacher : BortModel, optional
        The teacher model, needed with ``config.init`` 'teacher'.

    Returns
    -------
    dict
        ``cross_entropy`` (mean per held-out masked position against the teacher's full
        distribution; NaN if training diverged),
        ``train_loss`` (mean over the last 10 % of steps), ``diverged``, ``train_seconds``,
        ``seed``.
    """
    ctx = ctx or mx.cpu()
    seed = candidate_seed(config.seed, arch)
    mx.random.seed(seed)
    start = time.time()
    if config.init == 'teacher':
        if teacher is None:
            raise ValueError("init 'teacher' needs the teacher model")
        model = extract_student(teacher, arch, ctx=ctx)
    else:
        model = build_model(arch, use_decoder=True, ctx=ctx)
    if config.decoder_bias == 'unigram' and config.init == 'scratch':
        log_q = targets.data.unigram_log_probs(config.steps)  # of the batches it trains on
        output_bias(model).set_data(mx.nd.array(log_q, ctx=ctx))
    set_compute_dtype(model, config.dtype)
    model.hybridize(static_alloc=True)
    params = [p for p in model.collect_params().values() if p.grad_req != 'null']
    # A candidate trains alone on its worker: a local (size-1) communicator, no gradient averaging.
    trainer = make_trainer(model.collect_params(), Comm(ctx=ctx), optimizer=config.optimizer,
                           lr=config.lr, weight_decay=config.weight_decay,
                           momentum=config.momentum)
    steps = range(config.steps)
    if progress is not None:
        steps = progress(steps, desc='<' + ', '.join(map(str, arch.tuple)) + '>', unit='step',
                         leave=False)
    tail, tail_from, diverged = [], int(config.steps * 0.9), False
    data = targets.data
    for step in steps:
        trainer.set_learning_rate(learning_rate(step, config.steps, config.lr,
                                                config.warmup_ratio, config.schedule))
        index = step % len(data.train)
        loss, norm = candidate_step(model, trainer, params, targets, index,
                                    data.train[index].as_nd(ctx), config.clip)
        value = float(loss.asscalar())
        if not (math.isfinite(value) and math.isfinite(norm)):
            log.warning('candidate <%s> diverged at step %d (loss %s, gradient norm %s)',
                        ', '.join(map(str, arch.tuple)), step, value, norm)
            diverged = True
            break
        if step >= tail_from:
            tail.append(value)
        if progress is not None and hasattr(steps, 'set_postfix'):
            steps.set_postfix(loss=f'{value:.3f}', refresh=False)
    if hasattr(steps, 'close'):
        steps.close()
    cross_entropy = float('nan')
    if not diverged:
        total, count = 0.0, 0
        for index, held in enumerate(data.heldout):
            # Inference mode (no autograd): dropout off.
            logits = mlm_logits(model, held.as_nd(ctx))
            part, n = targets.heldout_error(index, logits)
            total, count = total + part, count + n
        cross_entropy = total / max(count, 1)
    del model, trainer, params
    gc.collect()  # free the candidate's weights and memory plan before the next one
    return {'cross_entropy': cross_entropy,
            'train_loss': sum(tail) / len(tail) if tail else float('nan'), 'diverged': diverged, 'train_seconds': round(time.time() - start, 3), 'seed': seed}
