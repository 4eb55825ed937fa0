"""Candidate evaluation shared by every strategy: costs, training, storage, workers.

A strategy (:mod:`bort.search.strategies`) decides *which* architectures to evaluate; the
:class:`CandidateEvaluator` does the rest, identically for all strategies:

1. p and i of each candidate, on rank 0 (a measured i must not compete with training for the
   cores), broadcast to the other workers;
2. the candidates without a stored result are spread over the workers, largest first to the
   least-loaded worker (:func:`balanced_share`), each trained from scratch on one worker;
3. each finished candidate is written at once to ``--out/candidates/<D..-A..-H..-I..>.json``
   (atomically), so a killed search loses only the candidates in flight; a restart skips the
   stored ones;
4. the results are gathered on every worker and returned in the order asked.

A stored result carries the settings' fingerprint (:meth:`SearchConfig.fingerprint`); a folder
holding results of other settings is refused rather than mixed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ..arch import Architecture
from ..checkpoint import write_json_atomic
from ..costs import flops
from ..distributed import Comm
from ..errors import UserError, read_json
from .config import SearchConfig
from .inference import CostModel
from .space import arch_key
from .targets import TeacherTargets
from .trainer import train_candidate

__all__ = ['ResultStore', 'CandidateEvaluator', 'SettingsMismatchError', 'balanced_share',
           'Variant']

log = logging.getLogger(__name__)


class SettingsMismatchError(UserError, RuntimeError):
    """The output folder holds candidates trained under other settings."""


@dataclass(frozen=True)
class Variant:
    """A re-training of candidates under changed settings, stored apart from the search's own
    results (``--out/candidates/<name>/``): another seed (the seed noise of e) or k times the
    steps (the fidelity of the s-step proxy). Nothing else changes: the same batches, targets
    and hyperparameters.

    Attributes
    ----------
    name : str
        Sub-folder of the result store, e.g. ``seed+1`` or ``steps×4``.
    seed_offset : int
        Added to ``--seed`` for the candidates' initialisation and dropout only (the search
        batches were built with the search's own seed).
    steps_factor : int
        The candidates train ``steps_factor · --steps`` steps (the schedule stretched alike).
    """

    name: str
    seed_offset: int = 0
    steps_factor: int = 1

    @classmethod
    def seed(cls, offset: int) -> 'Variant':
        return cls(f'seed+{offset}', seed_offset=offset)

    @classmethod
    def longer(cls, factor: int) -> 'Variant':
        return cls(f'steps-x{factor}', steps_factor=factor)

    def apply(self, config: SearchConfig) -> SearchConfig:
        return dataclasses.replace(config, seed=config.seed + self.seed_offset,
                                   steps=config.steps * self.steps_factor)


class ResultStore:
    """One JSON file per finished candidate in ``folder``.

    Parameters
    ----------
    folder : str
    fingerprint : str
        Digest of the settings a result depends on; stored in each file and checked on read.
    """

    def __init__(self, folder: str, fingerprint: str):
        self.folder = folder
        self.fingerprint = fingerprint

    def variant(self, variant: Variant) -> 'ResultStore':
        """The store of a variant's results: a sub-folder, its own fingerprint."""
        digest = hashlib.sha1(f'{self.fingerprint}:{variant}'.encode()).hexdigest()[:12]
        return ResultStore(os.path.join(self.folder, variant.name), digest)

    def clean(self) -> int:
        """Remove temporary files a killed writer left (``*.json.tmpPID``); return how many.

        Only the run holding the output folder calls this, so no live writer owns them.
        """
        if not os.path.isdir(self.folder):
            return 0
        stale = [n for n in os.listdir(self.folder) if '.json.tmp' in n]
        for name in stale:
            os.remove(os.path.join(self.folder, name))
        return len(stale)

    def count(self) -> int:
        """Finished candidates stored (``*.json`` files only)."""
        if not os.path.isdir(self.folder):
            return 0
        return sum(1 for n in os.listdir(self.folder) if n.endswith('.json'))

    def path(self, arch: Architecture) -> str:
        return os.path.join(self.folder, 'D{}-A{}-H{}-I{}.json'.format(*arch_key(arch)))

    def get(self, arch: Architecture) -> Optional[Dict]:
        """The stored record of ``arch``, or None."""
        path = self.path(arch)
        if not os.path.exists(path):
            return None
        record = read_json(path, what='stored candidate')
        if record.pop('fingerprint', None) != self.fingerprint:
            raise SettingsMismatchError(
                f'{path} was computed with other search settings (its fingerprint differs '
                f'from {self.fingerprint}): use another --out, or the '
                f'settings of that run (its config.json)')
        return record

    def put(self, record: Dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        key = 'D{num_layers}-A{num_heads}-H{units}-I{hidden_size}'.format(**record)
        write_json_atomic(os.path.join(self.folder, key + '.json'),
                          dict(record, fingerprint=self.fingerprint))


def training_work(arch: Architecture, config: SearchConfig) -> float:
    """Relative cost of training ``arch``: encoder operations over the sequence plus the
    vocabulary projection at the masked positions."""
    masked = config.seq_len * config.mask_ratio
    return flops(arch, seq_len=config.seq_len) + 2 * arch.units * arch.vocab_size * masked


def balanced_share(archs: Sequence[Architecture], comm: Comm,
                   config: SearchConfig) -> List[tuple]:
    """This worker's tuples: largest jobs first, each to the least-loaded worker (LPT).

    Deterministic, so every worker computes the same split. Results do not depend on it (each
    candidate is seeded by its tuple); only the wall time does.
    """
    loads = [0.0] * comm.size
    mine = []
    for arch in sorted(archs, key=lambda a: (-training_work(a, config), a.tuple)):
        worker = loads.index(min(loads))
        loads[worker] += training_work(arch, config)
        if worker == comm.rank:
            mine.append(arch.tuple)
    return mine


class CandidateEvaluator:
    """Evaluates architectures for any strategy (collective: all workers call it alike).

    Parameters
    ----------
    config : SearchConfig
    comm : Comm
    targets : TeacherTargets
        The teacher's outputs on the search batches.
    costs : CostModel
    store : ResultStore
    progress : callable, optional
        ``progress(iterable, **tqdm_kwargs)``, e.g. :func:`bort.log.progress` bound to rank 0.
    teacher : BortModel, optional
        The teacher, for ``config.init`` 'teacher'.
    """

    def __init__(self, config: SearchConfig, comm: Comm, targets: TeacherTargets,
                 costs: CostModel, store: ResultStore, progress: Optional[Callable] = None,
                 teacher=None):
        self.config = config
        self.teacher = teacher  # the model candidates are extracted from (init 'teacher')
        self.comm = comm
        self.targets = targets
        self.costs = costs
        self.store = store
        self.progress = progress
        self.trained = 0  # candidates trained by this run, all workers together
        # e = cross-entropy − offset; the teacher's entropy is a constant of the held-out set.
        self.error_offset = targets.heldout_entropy() if config.error == 'kl' else 0.0

    def budget_left(self) -> Optional[int]:
        """Trainings left under ``max_candidates`` (None: unlimited)."""
        if not self.config.max_candidates:
            return None
        return max(0, self.config.max_candidates - self.trained)

    def cost_of(self, archs: Sequence[Architecture]) -> List[Dict]:
        """``params`` and ``inference_cost`` of each architecture, computed on rank 0 and shared
        (collective)."""
        values = None
        if self.comm.is_root:
            costs = self.costs.costs(archs)
            values = [{'params': self.costs.params(a), 'inference_cost': c}
                      for a, c in zip(archs, costs)]
            for arch, value in zip(archs, values):  # i's spread, where measured
                spread = self.costs.spread(arch)
                if spread is not None:
                    value.update(inference_low=spread[0], inference_high=spread[1])
            self.costs.save()
        return self.comm.broadcast_object(values)

    def evaluate(self, archs: Sequence[Architecture],
                 variant: Optional[Variant] = None) -> List[Dict]:
        """Records of ``archs`` (in that order), training those not stored yet.

        With a ``variant`` the candidates are trained under its changed settings and stored in
        its own sub-folder; such trainings do not count against ``max_candidates``.

        Returns
        -------
        list of dict
            ``num_layers, num_heads, units, hidden_size, params, inference_cost, error,
            cross_entropy, train_loss, diverged, train_seconds, seed``. Candidates left
            untrained because the ``max_candidates`` budget ran out are omitted.
        """
        archs = list(archs)
        costs = self.cost_of(archs)
        config = variant.apply(self.config) if variant else self.config
        store = self.store.variant(variant) if variant else self.store
        records: Dict[tuple, Dict] = {}
        pending = []
        if self.comm.is_root:
            for arch in archs:
                stored = store.get(arch)
                if stored is not None:
                    records[arch.tuple] = stored
                else:
                    pending.append(arch.tuple)
            left = None if variant else self.budget_left()
            if left is not None:
                pending = pending[:left]
            if len(archs) > len(pending):
                log.info('%d of %d candidates already evaluated (resumed from %s)',
                         len(records), len(archs), store.folder)
        shared = self.comm.broadcast_object((records, pending))
        records, pending = dict(shared[0]), [tuple(t) for t in shared[1]]
        by_tuple = {a.tuple: (a, c) for a, c in zip(archs, costs)}
        mine = balanced_share([by_tuple[t][0] for t in pending], self.comm, self.config)
        done = self._train_all([by_tuple[t] for t in mine], config, store,
                               variant.name if variant else '')
        for gathered in self.comm.allgather_object(done):
            for record in gathered:
                records[arch_key(record)] = record
        if self.comm.is_root:  # rank 0 keeps every result, also without a shared file system
            for t in (pending if self.comm.size > 1 else ()):
                if t not in mine:
                    store.put(records[t])
        if variant is None:
            self.trained += len(pending)
        # Costs as the cost model has them now (costs.json is their one source); e as
        # configured, from the stored cross-entropy.
        return [dict(records[a.tuple], **cost,
                     error=records[a.tuple]['cross_entropy'] - self.error_offset)
                for a, cost in zip(archs, costs) if a.tuple in records]

    def _train_all(self, items, config: SearchConfig, store: ResultStore,
                   what: str = '') -> List[Dict]:
        """Train this worker's share, storing each result as it finishes; ETA in the log."""
        done: List[Dict] = []
        start = time.time()
        desc = f'candidates {what}'.strip()
        bar = self.progress(items, desc=desc, unit='cand') if self.progress else items
        for n, (arch, cost) in enumerate(bar, 1):
            result = train_candidate(arch, self.targets, config, ctx=self.comm.ctx,
                                     progress=self.progress, teacher=self.teacher)
            d, a, h, i = arch.tuple
            record = dict(num_layers=d, num_heads=a, units=h, hidden_size=i, **cost, **result)
            store.put(record)
            done.append(record)
            elapsed = time.time() - start
            log.info('candidate%s %d/%d <%d, %d, %d, %d>: cross-entropy %.4f, %.1f s; '
                     'ETA %.0f s (rank %d)', f' ({what})' if what else '', n, len(items), d, a, h, i,
                     record['cross_entropy'], result['train_seconds'],
                     elapsed / n * (len(items) - n), self.comm.rank)
        return done
