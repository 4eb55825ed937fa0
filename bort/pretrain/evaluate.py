"""Evaluation and reporting of pretraining runs: held-out masked-LM accuracy, log records,
the training-curve plot, and a digest to check that workers hold the same weights."""
from __future__ import annotations

import hashlib
import logging
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np

from .losses import kd_loss, masked_accuracy
from .teacher import Teacher, mlm_logits
from ..log import MetricsLog
from ..model import BortModel
from .stream import MLMBatch

__all__ = ['evaluate', 'TeacherCache', 'params_digest', 'window_record', 'plot_curves',
           'most_frequent_rate', 'warn_if_constant', 'CONSTANT_MARGIN']

log = logging.getLogger(__name__)

#: Accuracy within this of the most-frequent-token rate counts as "still predicting one token".
CONSTANT_MARGIN = 0.005

#: Bytes of teacher logits a :class:`TeacherCache` keeps at most (batches past it are recomputed
#: at every evaluation). The miniature's held-out set, 60 batches × 32 sequences of 64 slots
#: (≈ 6,700 real masked positions × 30,522 logits), takes 0.8 GB.
TEACHER_CACHE_BYTES = 4 << 30


class TeacherCache:
    """The teacher's logits on fixed held-out batches, kept from one evaluation to the next.

    The teacher is frozen and the held-out batches are fixed, so its logits are the same at every
    evaluation of a run: they are computed at the first and read back afterwards, and the
    distillation cross-entropy of the later evaluations costs no teacher forward pass (in the
    miniature's distilled runs the teacher was ≈ 20 s of each evaluation). Only the rows of real
    masked positions (weight > 0) are kept, as float32; the padded rows are read back as zeros,
    which the weighted losses multiply by 0, so every figure equals the uncached one exactly
    (``tests/test_pretrain.py``). Batches past ``max_bytes`` are recomputed each time.

    Parameters
    ----------
    teacher : Teacher
    max_bytes : int
        Bytes of logits kept at most.
    """

    def __init__(self, teacher: Teacher, max_bytes: int = TEACHER_CACHE_BYTES):
        self.teacher, self.max_bytes = teacher, max_bytes
        self._rows: Dict[int, np.ndarray] = {}
        self._bytes = 0
        self.forward_passes = 0

    def logits(self, index: int, batch: MLMBatch, nd: Dict[str, mx.nd.NDArray]) -> mx.nd.NDArray:
        """The teacher's logits for held-out batch ``index``.

        Returns
        -------
        (batch_size, num_masked, vocab_size) NDArray
            float32; zeros at the padded positions (weight 0) when read from the cache.
        """
        keep = batch.weights > 0
        rows = self._rows.get(index)
        if rows is not None:
            full = np.zeros(keep.shape + rows.shape[-1:], dtype=np.float32)
            full[keep] = rows
            return mx.nd.array(full, ctx=nd['input_ids'].context, dtype='float32')
        out = self.teacher.logits(nd)
        self.forward_passes += 1
        size = int(keep.sum()) * out.shape[-1] * 4  # float32 rows; copied to the host only if kept
        if self._bytes + size <= self.max_bytes:
            self._rows[index] = out.asnumpy()[keep]
            self._bytes += size
        return out


def params_digest(model: mx.gluon.Block) -> str:
    """SHA-1 of every parameter's bytes (in name order): equal digests, equal weights."""
    digest = hashlib.sha1()
    for name, param in sorted(model.collect_params().items()):
        digest.update(name.encode())
        digest.update(param.data().asnumpy().tobytes())
    return digest.hexdigest()


def evaluate(student: BortModel, batches: List[MLMBatch], ctx: mx.Context,
             teacher: Optional[Teacher] = None, temperature: float = 2.0,
             cache: Optional[TeacherCache] = None) -> Dict[str, float]:
    """Masked-LM accuracy (top-1 and top-5) and cross-entropy on fixed held-out batches, and the
    distillation cross-entropy against the teacher when there is one; token-weighted means.

    Parameters
    ----------
    cache : TeacherCache, optional
        The teacher's logits on these ``batches`` kept between calls (its teacher is used;
        ``teacher`` may then be None). Without one, ``teacher`` runs on every batch.

    Returns
    -------
    dict
        ``eval_mlm_acc, eval_mlm_top5, eval_mlm_loss, eval_masked`` (positions scored)
        [, ``eval_kd_ce``].
    """
    sums = np.zeros(5)  # correct, count, top-5 hits, MLM loss sum, KD loss sum
    if cache is None and teacher is not None:
        cache = TeacherCache(teacher, max_bytes=0)  # keeps nothing: the teacher runs every time
    for index, batch in enumerate(batches):
        nd = batch.as_nd(ctx)
        logits = mlm_logits(student, nd).astype('float32', copy=False)
        t_logits = cache.logits(index, batch, nd) if cache is not None else None
        _, mlm, kd = kd_loss(mx.nd, logits, t_logits, nd['labels'], nd['weights'],
                             kd_weight=0.0 if cache is None else 1.0, temperature=temperature)
        correct, count = masked_accuracy(logits, batch.labels, batch.weights)
        top = mx.nd.topk(logits, k=min(5, logits.shape[-1]), axis=-1).asnumpy()
        top5 = float(((top == batch.labels[..., None]).any(-1) * batch.weights).sum())
        sums += [correct, count, top5, mlm.asscalar() * count, kd.asscalar() * count]
    count = max(sums[1], 1.0)
    out = {'eval_mlm_acc': sums[0] / count, 'eval_mlm_top5': sums[2] / count,
           'eval_mlm_loss': sums[3] / count, 'eval_masked': int(sums[1])}
    if cache is not None:
        out['eval_kd_ce'] = sums[4] / count
    return out


def most_frequent_rate(batches: List[MLMBatch]) -> float:
    """The held-out accuracy of always predicting the most frequent masked token of
    ``batches`` (what a student that has learnt nothing but frequencies reaches)."""
    labels = np.concatenate([b.labels[b.weights > 0].ravel() for b in batches]).astype(np.int64)
    if not len(labels):
        return 0.0
    return float(np.bincount(labels).max() / len(labels))


def warn_if_constant(accuracy: float, rate: float) -> bool:
    """Warn (one line) when the held-out accuracy is at the most-frequent-token rate.

    Returns
    -------
    bool
        Whether it warned.
    """
    if accuracy > rate + CONSTANT_MARGIN:
        return False
    log.warning('held-out MLM accuracy %.4f is at the most-frequent-token rate (%.4f): the '
                'student still predicts the most frequent tokens, nothing learnt from context. '
                'Train longer (--max_minutes; README "What a time budget buys"), or check --lr '
                'and the teacher', accuracy, rate)
    return True


def window_record(window: np.ndarray, seconds: float, step: int, lr: float,
                  norm: float) -> Dict[str, float]:
    """The log record of a logging window from the sums of :func:`bort.pretrain.
    accumulate_gradients` (all workers) over its steps and its wall-clock seconds; logged."""
    count = max(window[4], 1.0)
    record = {'step': step, 'mlm_loss': window[0] / count, 'kd_loss': window[1] / count,
              'loss': window[2] / count, 'mlm_acc': window[3] / count, 'lr': lr,
              'grad_norm': norm, 'tokens_per_s': window[5] / max(seconds, 1e-9),
              'teacher_share': window[6] / max(seconds, 1e-9)}
    log.info('step %d: mlm %.4f kd %.4f acc %.4f lr %.2e |g| %.3f %.0f tok/s teacher %.0f%%',
             step, record['mlm_loss'], record['kd_loss'], record['mlm_acc'], lr, norm,
             record['tokens_per_s'], 100 * record['teacher_share'])
    return record


def plot_curves(metrics_path: str, out_path: str) -> str:
    """Training losses and MLM accuracies (train and held-out) against steps, as a PNG.

    After a resume the steps between the checkpoint and the crash appear twice in the metrics
    file; the last record of each step is the one plotted.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    records = [r for r in MetricsLog(metrics_path).read() if not r.get('final')]
    train = sorted({r['step']: r for r in records if 'mlm_loss' in r}.values(),
                   key=lambda r: r['step'])
    evals = sorted({r['step']: r for r in records if 'eval_mlm_acc' in r}.values(),
                   key=lambda r: r['step'])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ('mlm_loss', 'kd_loss'):
        ax_loss.plot([r['step'] for r in train], [r[key] for r in train], label=key)
    ax_loss.set_xlabel('step')
    ax_loss.set_title('training losses')
    ax_loss.legend()
    ax_acc.plot([r['step'] for r in train], [r['mlm_acc'] for r in train], label='train')
    ax_acc.plot([r['step'] for r in evals], [r['eval_mlm_acc'] for r in evals], 'o-',
                label='held-out')
    ax_acc.set_xlabel('step')
    ax_acc.set_title('masked-LM accuracy')
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
