"""The maximum point T's masked-LM outputs on the search batches.

The teacher itself comes from :func:`bort.pretrain.default_teacher.resolve_teacher`.

:class:`TeacherTargets` gives each candidate's trainer the teacher's distribution for a batch.
With the cache (the default) the teacher runs once per batch, before any candidate trains; the
outputs go to ``--out/teacher_cache/<key>/`` (one ``.npz`` per batch, written atomically, shared
out by rank so workers compute disjoint batches) and every candidate, every worker and every
resumed run reads them back. Without the cache the teacher runs inside every training step and
every evaluation, as a plain distillation loop would.

Storage (measured by :meth:`TeacherTargets.memory`): the training targets as the teacher's top-k
logits (float16), their ids (int32) and the log-normaliser of the full distribution (float32),
``6k + 4`` bytes per masked position instead of ``2V`` for the full float16 distribution; the
loss keeps the top-k probabilities exact and spreads the rest of the mass evenly
(:func:`bort.pretrain.losses.topk_soft_cross_entropy`). The held-out targets are always kept in
full (float16), so e(ξ) is the exact cross-entropy.

The default k = 1024 (``--cache_topk``) suits a flat teacher such as MiniLM; README.md gives the
measured cache sizes and errors for several k. A peakier teacher needs a smaller k.
"""
from __future__ import annotations

import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np

from ..errors import DataFormatError
from ..pretrain.losses import soft_cross_entropy, topk_soft_cross_entropy
from ..distributed import Comm
from ..pretrain.teacher import Teacher
from ..pretrain.stream import MLMBatch
from .data import SearchData

__all__ = ['TeacherTargets', 'real_rows']

log = logging.getLogger(__name__)


def real_rows(batch: MLMBatch) -> np.ndarray:
    """Flat indices of the real masked positions of a batch, into ``(batch·num_masked)`` rows."""
    return np.flatnonzero(batch.weights.reshape(-1) > 0)


def _teacher_rows(teacher: Teacher, batch: MLMBatch, ctx: mx.Context) -> np.ndarray:
    """The teacher's logits at the real masked positions: ``(num_real, vocab_size)`` float32."""
    logits = teacher.logits(batch.as_nd(ctx))
    return logits.reshape((-1, logits.shape[-1])).asnumpy()[real_rows(batch)]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _topk(logits: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The k largest logits per row (float16) and their ids (int32), largest first."""
    k = min(k, logits.shape[1])
    ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(logits, ids, axis=1)
    order = np.argsort(-values, axis=1, kind='stable')
    return (np.take_along_axis(values, order, 1).astype(np.float16),
            np.take_along_axis(ids, order, 1).astype(np.int32))


def _save_npz(path: str, **arrays) -> None:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _read_npz(path: str) -> Dict[str, np.ndarray]:
    """The arrays of a teacher-cache file; a damaged one is named (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        raise DataFormatError(f'{path}: damaged teacher-cache file (truncated, e.g. by a crash '
                              f'or a full disk); delete it and run again to recompute it') \
            from None


@dataclass
class _Target:
    """One batch's teacher distribution at its real masked positions."""

    rows: np.ndarray                     # (num_real,) flat indices into batch·num_masked
    logits: Optional[np.ndarray] = None  # (num_real, V) full
    topk_logits: Optional[np.ndarray] = None  # (num_real, k)
    topk_ids: Optional[np.ndarray] = None     # (num_real, k)
    logsumexp: Optional[np.ndarray] = None    # (num_real,) of the full logits / T

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.logits, self.topk_logits, self.topk_ids,
                                      self.logsumexp) if a is not None)


class TeacherTargets:
    """The teacher's masked-LM distribution on the search batches, cached or computed online.

    Parameters
    ----------
    teacher : Teacher
        The frozen maximum point (a counter of its forward calls is kept in ``calls``).
    data : SearchData
    ctx : mx.Context
    folder : str, optional
        The cache folder; None computes the outputs at every use (no cache).
    topk : int
        Training targets as top-k logits (1024, as ``SearchConfig.cache_topk``); 0 keeps the
        full distribution.
    tail : bool
        With top-k targets, spread the mass outside the k tokens evenly over the others
        (default); False renormalises over the k.
    temperature : float
        The loss's temperature (the cached log-normaliser is taken at it).
    """

    def __init__(self, teacher: Teacher, data: SearchData, ctx: mx.Context,
                 folder: Optional[str] = None, topk: int = 1024, tail: bool = True,
                 temperature: float = 1.0):
        self.teacher = teacher
        self.data = data
        self.ctx = ctx
        self.folder = folder
        self.topk = topk
        self.tail = tail
        self.temperature = temperature
        self.calls = 0
        self._train: List[_Target] = []
        self._heldout: List[_Target] = []

    @property
    def cached(self) -> bool:
        return self.folder is not None

    def _forward(self, batch: MLMBatch) -> np.ndarray:
        self.calls += 1
        return _teacher_rows(self.teacher, batch, self.ctx)

    def _files(self) -> List[Tuple[str, MLMBatch, bool]]:
        items = [(f'heldout-{i:05d}.npz', b, True) for i, b in enumerate(self.data.heldout)]
        items += [(f'train-{i:05d}.npz', b, False) for i, b in enumerate(self.data.train)]
        return [(os.path.join(self.folder, name), batch, full) for name, batch, full in items]

    def build(self, comm: Comm, progress=None) -> int:
        """Compute the missing cache files, shared out by rank; then load them all (collective).

        Returns
        -------
        int
            Teacher forward passes this worker ran.
        """
        if not self.cached:
            return 0
        if comm.is_root:
            os.makedirs(self.folder, exist_ok=True)
        comm.barrier()
        files = self._files()
        missing = [i for i, (path, _, _) in enumerate(files) if not os.path.exists(path)]
        # Every worker must list the same missing files before any is written: a worker that
        # looked after another had written one would shard a shorter list, and a file would
        # fall to nobody.
        comm.barrier()
        mine = comm.shard(missing)
        before = self.calls
        for index in (progress(mine, desc='teacher cache', unit='batch') if progress else mine):
            path, batch, full = files[index]
            logits = self._forward(batch)
            if full or not self.topk:
                _save_npz(path, logits=logits.astype(np.float16))
            else:
                values, ids = _topk(logits, self.topk)
                _save_npz(path, topk_logits=values, topk_ids=ids,
                          logsumexp=_logsumexp(logits / self.temperature).astype(np.float32))
        comm.barrier()
        for path, batch, full in files:
            target = _Target(real_rows(batch), **_read_npz(path))
            (self._heldout if full else self._train).append(target)
        if missing:
            log.info('teacher cache: %d of %d batches computed (%d on this worker)',
                     len(missing), len(files), self.calls - before)
        else:
            log.info('teacher cache: all %d batches read from %s', len(files), self.folder)
        return self.calls - before

    def memory(self) -> Dict[str, float]:
        """Sizes in MB of the cached targets, and what full float16 training targets would take.
        """
        vocab = self.data.vocab_size
        train_pos = sum(b.num_masked for b in self.data.train)
        stats = {'train_positions': train_pos,
                 'heldout_positions': sum(b.num_masked for b in self.data.heldout),
                 'train_full_float16_mb': train_pos * vocab * 2 / 2 ** 20,
                 'topk': self.topk if self.cached else 0}
        if self.cached:
            stats['train_mb'] = sum(t.nbytes() for t in self._train) / 2 ** 20
            stats['heldout_mb'] = sum(t.nbytes() for t in self._heldout) / 2 ** 20
            stats['disk_mb'] = sum(os.path.getsize(p) for p, _, _ in self._files()) / 2 ** 20
        return stats

    # -- losses -------------------------------------------------------------------------------
    def train_loss(self, index: int, student_logits: mx.nd.NDArray) -> mx.nd.NDArray:
        """Distillation loss of training batch ``index`` (inside autograd).

        Parameters
        ----------
        student_logits : (batch_size, num_masked, vocab_size)
        """
        temperature = self.temperature
        batch = self.data.train[index]
        flat = student_logits.reshape((-1, student_logits.shape[-1]))
        if self.cached:
            target = self._train[index]
            # Every position real (flatnonzero of all rows): no copy, nor its backward scatter.
            if len(target.rows) == flat.shape[0]:
                student = flat
            else:
                student = mx.nd.take(flat, mx.nd.array(target.rows, ctx=self.ctx))
            if target.topk_ids is not None:
                lse = mx.nd.array(target.logsumexp, ctx=self.ctx) if self.tail else None
                return topk_soft_cross_entropy(
                    student, mx.nd.array(target.topk_logits, ctx=self.ctx),
                    mx.nd.array(target.topk_ids, ctx=self.ctx, dtype='int32'), temperature,
                    logsumexp=lse)
            teacher = mx.nd.array(target.logits, ctx=self.ctx)
        else:
            with mx.autograd.pause():
                teacher = mx.nd.array(self._forward(batch), ctx=self.ctx)
            student = mx.nd.take(flat, mx.nd.array(real_rows(batch), ctx=self.ctx))
        ones = mx.nd.ones((student.shape[0],), ctx=self.ctx)
        return soft_cross_entropy(mx.nd, student, teacher, ones, temperature)

    def heldout_entropy(self) -> float:
        """The teacher's own entropy (nats) per held-out masked position, at the temperature:
        the floor of any candidate's cross-entropy."""
        total, count = 0.0, 0
        for index, batch in enumerate(self.data.heldout):
            logits = (self._heldout[index].logits.astype(np.float64) if self.cached
                      else self._forward(batch).astype(np.float64)) / self.temperature
            log_q = logits - _logsumexp(logits)[:, None]
            total += float(-(np.exp(log_q) * log_q).sum())
            count += len(log_q)
        return total / max(count, 1)

    def heldout_cross_entropy_of(self, log_q: np.ndarray) -> float:
        """Cross-entropy (nats per held-out masked position) of one fixed distribution q against
        the teacher's, at the temperature: e of a model that outputs q everywhere (a baseline).

        Parameters
        ----------
        log_q : (vocab_size,) float
            Log-probabilities of q (normalised).
        """
        total, count = 0.0, 0
        for index, batch in enumerate(self.data.heldout):
            logits = (self._heldout[index].logits.astype(np.float64) if self.cached
                      else self._forward(batch).astype(np.float64)) / self.temperature
            p = np.exp(logits - _logsumexp(logits)[:, None])
            total += float(-(p @ np.asarray(log_q, dtype=np.float64)).sum())
            count += len(p)
        return total / max(count, 1)

    def heldout_mean_log_probs(self) -> np.ndarray:
        """log of the teacher's distribution averaged over the held-out masked positions (at
        the temperature): the one fixed distribution with the lowest cross-entropy against the
        teacher on those positions, i.e. the floor of any model that ignores the context."""
        total, count = None, 0
        for index, batch in enumerate(self.data.heldout):
            logits = (self._heldout[index].logits.astype(np.float64) if self.cached
                      else self._forward(batch).astype(np.float64)) / self.temperature
            p = np.exp(logits - _logsumexp(logits)[:, None]).sum(axis=0)
            total = p if total is None else total + p
            count += len(logits)
        return np.log(np.maximum(total / max(count, 1), 1e-30))

    def heldout_error(self, index: int, student_logits: mx.nd.NDArray) -> Tuple[float, int]:
        """(sum of per-position cross-entropies, positions) on held-out batch ``index``,
        against the teacher's full distribution."""
        batch = self.data.heldout[index]
        if self.cached:
            teacher = self._heldout[index].logits.astype(np.float32)
        else:
            teacher = self._forward(batch)
        rows = real_rows(batch)
        flat = student_logits.reshape((-1, student_logits.shape[-1]))
        student = mx.nd.take(flat, mx.nd.array(rows, ctx=self.ctx))
        ones = mx.nd.ones((len(rows),), ctx=self.ctx)
        mean = soft_cross_entropy(mx.nd, student, mx.nd.array(teacher, ctx=self.ctx), ones,
                                  self.temperature)
        return float(mean.asscalar()) * len(rows), len(rows)
