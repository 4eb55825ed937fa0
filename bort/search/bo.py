"""AutoDistill-style search (``--strategy bo``): multi-objective Bayesian optimisation.

SPEC.md section 4. An Optuna study over the four knobs (one categorical per knob, over the
grid's values) minimises the surrogate error e and the latency i (and the parameters p when
``--bo_objectives error,latency,params``); every trained trial is a flash distillation (the same
s-step training as the FPTAS's, :mod:`bort.search.trainer`). The result is a Pareto front.

The project's reading, each a setting of :class:`~bort.search.config.SearchConfig`:

- **sampler** (``--bo_sampler``): ``tpe`` (multivariate TPE, a Bayesian sampler; default),
  ``gp`` (Gaussian process), ``nsga2`` (NSGA-II, population ``--bo_population``) or ``random``.
  The first ``--bo_startup`` trainings are uniform picks among the untried valid tuples.
- **budget** in candidate trainings: ``--max_candidates``, counted over the whole study (a
  resumed study trains only what is left; 0: as many as the FPTAS trains at ``--epsilon``,
  ⌈|Ξ|/ε⌉, so both strategies spend the same).
- **what costs nothing**: a tuple the architecture family rejects (H % A ≠ 0) is told to Optuna
  as a pruned trial with a violated constraint (``valid``), so TPE learns to avoid it; a tuple
  violating ``--max_params`` or ``--max_latency_ms`` is rejected *before* training, from p (exact)
  and the latency measured on this machine, and told as pruned with its constraint values
  (``params``, ``latency``: relative excess); a tuple already seen is told as failed
  (``duplicate``). None of these spends budget. After 4 duplicates in a row the next trial is a
  uniform pick among the untried valid tuples, so a converged sampler cannot stall the search
  (small spaces make TPE re-propose its best known tuple often).
- **resume**: the study lives in ``--out/bo_study.db`` (SQLite). A rerun with the same ``--out``
  reloads it (settings must match), evaluates any trial left running by the interruption
  (its training is read back from the evaluator's store when it had finished), then continues;
  finished trials are never retrained. The sampler is re-seeded before each trial from
  ``--seed`` and the number of trials so far, so an interrupted and resumed study proposes
  what the uninterrupted one would have.
- **workers**: each round asks ``comm.size`` trials (TPE's constant liar keeps them apart),
  the evaluator trains them in parallel, all are told together.
- **outputs** (after the common ones): ``pareto.json`` (the front with its latency re-measured,
  the hypervolume and its reference point, :func:`bort.search.pareto.reference_point`),
  ``pareto.png`` (replacing the common plot: error against latency over every trial, the
  front and its dominated region), a front section appended to ``table.md``; every trial (also
  the pruned ones) is in ``results.json`` under ``strategy.trials``.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter
from typing import Dict, List, Optional

import numpy as np

from ..arch import Architecture
from .config import KNOBS, SearchConfig, parse_objectives, validate_bo
from .space import SearchSpace, arch_key
from .strategies import Strategy, register_strategy

__all__ = ['BayesianStrategy', 'STUDY_FILE',
           'bo_budget']

log = logging.getLogger(__name__)

STUDY_FILE = 'bo_study.db'
STUDY_NAME = 'bort-bo'
MAX_MISSES = 4  # duplicates in a row before a uniform pick among the untried tuples
EVALUATED = ('trained', 'diverged')


def bo_budget(config: SearchConfig, space_size: int) -> int:
    """Trainings of the whole study: ``max_candidates``, or the FPTAS's ⌈|Ξ|/ε⌉ when 0."""
    return config.max_candidates or math.ceil(space_size / config.epsilon)


def _set_constraints(trial, values: Dict[str, float]) -> None:
    """Constraint values of a trial (> 0: violated), as the sampler reads them: Optuna 5's
    ``Trial.set_constraint``; with Optuna 4 a user attribute that :func:`_constraints_v4`
    hands to the sampler's ``constraints_func``."""
    trial.set_user_attr('constraints', dict(values))
    if hasattr(trial, 'set_constraint'):
        for key, value in values.items():
            trial.set_constraint(key, value)


def _constraints_v4(trial) -> List[float]:
    values = trial.user_attrs.get('constraints', {})
    return [float(values.get(k, 0.0)) for k in ('valid', 'params', 'latency')]


def _optuna():
    import optuna  # pylint: disable=import-outside-toplevel
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says what each trial did
    return optuna


@register_strategy
class BayesianStrategy(Strategy):
    """Multi-objective Bayesian optimisation over Ξ with an Optuna study (module docstring).

    Attributes
    ----------
    objectives : tuple of str
    budget, startup : int
        Trainings of the whole study; how many of them are uniform picks first.
    evaluated : int
        Trials trained (or read back) and told so far, over the whole study.
    """

    name = 'bo'

    def __init__(self, config: SearchConfig):
        super().__init__(config)
        validate_bo(config)
        self.objectives = parse_objectives(config.bo_objectives)
        self.constraints = {k: v for k, v in (('max_params', config.max_params),
                                              ('max_latency_ms', config.max_latency_ms)) if v}
        self.study = None
        self.budget = self.startup = self.evaluated = 0
        self.fallbacks = 0
        self.latency_scale = 1.0
        self.by_tuple: Dict[tuple, Architecture] = {}
        self.seen: set = set()
        self._pending: Dict[tuple, object] = {}  # tuple -> optuna Trial of the last proposal
        self._replay: List[Architecture] = []
        self._replaying = False
        self._stale: list = []
        self._exhausted = False

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, space: SearchSpace, evaluator, teacher: Dict) -> None:
        super().setup(space, evaluator, teacher)
        optuna = _optuna()
        self.by_tuple = {a.tuple: a for a in space.valid}
        self.budget = bo_budget(self.config, len(space))
        self.startup = min(self.budget, self.config.bo_startup
                           or max(2, math.ceil(self.budget / 3)))
        self.latency_scale = 1e3 if evaluator.costs.kind == 'measured' else 1.0
        self.study = self._open_study(optuna)
        trials = self.study.get_trials(deepcopy=False)
        states = optuna.trial.TrialState
        # A status is set just before its trial is told: a trial still running (killed in
        # between) counts as not evaluated, whatever its status says.
        told = [t for t in trials if t.state.is_finished()]
        done = [t for t in told if t.user_attrs.get('status') in EVALUATED]
        self.evaluated = len(done)
        self.seen = {self.trial_tuple(t) for t in told
                     if t.user_attrs.get('status') in EVALUATED + ('infeasible', 'invalid')}
        # Finished trials are proposed once more, for free (the evaluator reads them back), so
        # that this run's table lists the whole study; trials an interruption left running are
        # evaluated, then told.
        self._replay = [self.by_tuple[self.trial_tuple(t)] for t in done]
        self._stale = [optuna.trial.Trial(self.study, t._trial_id)  # pylint: disable=W0212
                       for t in trials if t.state == states.RUNNING]
        log.info('BO (%s sampler, objectives %s%s): budget %d trainings (%d uniform first) '
                 'over |Ξ| = %d; study %s: %d trials so far, %d evaluated, %d to resume',
                 self.config.bo_sampler, ', '.join(self.objectives),
                 ''.join(f', {k} {v:g}' for k, v in self.constraints.items()), self.budget,
                 self.startup, len(space), self.storage_path, len(trials), self.evaluated,
                 len(self._stale))

    @property
    def storage_path(self) -> str:
        return os.path.join(self.config.out, STUDY_FILE)

    def _open_study(self, optuna):
        settings = {'objectives': list(self.objectives), 'sampler': self.config.bo_sampler,
                    'grid': {k: list(v) for k, v in self.space.grid.items()},
                    'constraints': self.constraints, 'cost': self.evaluator.costs.kind,
                    'fingerprint': self.evaluator.store.fingerprint}  # teacher weights too
        storage = 'sqlite:///' + os.path.abspath(self.storage_path)
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                    directions=['minimize'] * len(self.objectives))
        if not study.user_attrs:
            for key, value in settings.items():
                study.set_user_attr(key, value)
        changed = [k for k, v in settings.items() if study.user_attrs.get(k) != v]
        if changed:
            raise ValueError(f'{self.storage_path} holds a study with other settings '
                             f'({", ".join(changed)} differ): use another --out, or that '
                             f'study\'s settings')
        return study

    @staticmethod
    def trial_tuple(trial) -> tuple:
        """<D, A, H, I> of an Optuna trial."""
        return arch_key(trial.params)

    # -- proposing -----------------------------------------------------------------------------
    def _seed(self) -> int:
        """The seed of the next trial: the search seed and the number of trials so far."""
        return (self.config.seed * 1_000_003 + len(self.study.get_trials(deepcopy=False))) \
            % (2 ** 31 - 1)

    def _sampler(self, seed: int):
        optuna = _optuna()
        samplers, kind = optuna.samplers, self.config.bo_sampler
        extra = {} if hasattr(optuna.trial.Trial, 'set_constraint') else {
            'constraints_func': _constraints_v4}
        if kind == 'tpe':
            return samplers.TPESampler(seed=seed, n_startup_trials=0, multivariate=True,
                                       constant_liar=True, **extra)
        if kind == 'gp':
            return samplers.GPSampler(seed=seed, n_startup_trials=0, **extra)
        if kind == 'nsga2':
            size = self.config.bo_population or max(2, math.ceil(self.budget / 3))
            return samplers.NSGAIISampler(seed=seed, population_size=size, **extra)
        return samplers.RandomSampler(seed=seed)

    def _untried(self, taken) -> List[tuple]:
        return sorted(t for t in self.by_tuple if t not in self.seen and t not in taken)

    def _ask(self, forced: Optional[tuple]):
        """A new trial and its tuple: the sampler's choice, or ``forced`` (enqueued)."""
        seed = self._seed()
        if forced is not None:
            self.study.enqueue_trial(dict(zip(KNOBS, forced)))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # experimental-feature warnings of samplers
            self.study.sampler = self._sampler(seed)
            trial = self.study.ask()
            values = tuple(trial.suggest_categorical(k, list(self.space.grid[k])) for k in KNOBS)
        return trial, values

    def _violations(self, arch: Architecture) -> Dict[str, float]:
        """Relative excess over each violated limit (p first: it is free; i is measured)."""
        costs, out = self.evaluator.costs, {}
        if self.config.max_params:
            excess = costs.params(arch) / self.config.max_params - 1.0
            if excess > 0:
                return {'params': excess}
            out['params'] = excess
        if self.config.max_latency_ms:
            latency = costs.cost(arch) * 1e3
            costs.save()
            out['latency'] = latency / self.config.max_latency_ms - 1.0
        return out

    def _screen(self, trial, values: tuple) -> str:
        """Tell the trial at once if it must not be trained (its status is returned:
        ``invalid``, ``duplicate``, ``infeasible``); ``proposed`` if it may."""
        states = _optuna().trial.TrialState
        if values not in self.by_tuple and values not in self.seen:
            self.seen.add(values)
            trial.set_user_attr('status', 'invalid')
            _set_constraints(trial, {'valid': 1.0})
            self.study.tell(trial, state=states.PRUNED)
            return 'invalid'
        if values in self.seen:
            trial.set_user_attr('status', 'duplicate')
            self.study.tell(trial, state=states.FAIL)
            return 'duplicate'
        self.seen.add(values)
        violations = self._violations(self.by_tuple[values])
        _set_constraints(trial, violations)
        if any(v > 0 for v in violations.values()):
            trial.set_user_attr('status', 'infeasible')
            self.study.tell(trial, state=states.PRUNED)
            log.info('trial %d <%s>: violates %s, not trained', trial.number,
                     ', '.join(map(str, values)),
                     ', '.join(k for k, v in violations.items() if v > 0))
            return 'infeasible'
        trial.set_user_attr('status', 'proposed')
        return 'proposed'

    def propose(self) -> List[Architecture]:
        """Replayed trials first (resume), then trials left running, then ``comm.size`` new
        ones (fewer when the budget or the untried tuples run out)."""
        if self._replay:
            batch, self._replay, self._replaying = self._replay, [], True
            return batch
        size = self.evaluator.comm.size
        batch: Dict[tuple, object] = {}
        while self._stale and len(batch) < size:
            trial = self._stale.pop(0)
            if len(trial.params) < len(KNOBS):  # stopped between ask and its last knob
                trial.set_user_attr('status', 'interrupted')
                self.study.tell(trial, state=_optuna().trial.TrialState.FAIL)
                continue
            values = self.trial_tuple(trial)
            if self._screen(trial, values) == 'proposed':
                batch[values] = trial
        want = min(size, self.budget - self.evaluated)
        misses = 0
        while len(batch) < want:
            forced = None
            if self.evaluated + len(batch) < self.startup or misses >= MAX_MISSES:
                untried = self._untried(batch)
                if not untried:
                    break
                forced = untried[np.random.RandomState(self._seed()).randint(len(untried))]
                self.fallbacks += misses >= MAX_MISSES
            trial, values = self._ask(forced)
            status = self._screen(trial, values)
            if status == 'proposed':
                batch[values] = trial
            # Invalid and infeasible tuples teach the sampler and are never asked twice;
            # only duplicates can repeat without end.
            misses = misses + 1 if status == 'duplicate' else 0
        if not batch:
            self._exhausted = True
            log.info('BO: no untried feasible tuple left after %d evaluations', self.evaluated)
        self._pending = batch
        return [self.by_tuple[t] for t in batch]

    def _values(self, record: Dict) -> List[float]:
        by_name = {'error': record['error'],
                   'latency': record['inference_cost'] * self.latency_scale,
                   'params': record['params'] / 1e6}
        return [float(by_name[o]) for o in self.objectives]

    def observe(self, records: List[Dict]) -> None:
        super().observe(records)
        if self._replaying:
            self._replaying = False
            return
        states = _optuna().trial.TrialState
        by_tuple = {arch_key(r): r for r in records}
        for values, trial in self._pending.items():
            record = by_tuple.get(values)
            if record is None:  # not trained: the run's budget stopped the evaluator
                trial.set_user_attr('status', 'not_evaluated')
                self.seen.discard(values)
                self.study.tell(trial, state=states.FAIL)
                continue
            self.evaluated += 1
            if not math.isfinite(record['error']):
                trial.set_user_attr('status', 'diverged')
                self.study.tell(trial, state=states.FAIL)
                continue
            trial.set_user_attr('status', 'trained')
            objective = self._values(record)
            self.study.tell(trial, objective)
            log.info('trial %d <%s>: %s (%d/%d evaluated)', trial.number,
                     ', '.join(map(str, values)),
                     ', '.join(f'{n} {v:.4g}' for n, v in zip(self.objectives, objective)),
                     self.evaluated, self.budget)
        self._pending = {}

    def finished(self) -> bool:
        if self._replay or self._pending:
            return False
        return self._exhausted or self.evaluated >= self.budget

    # -- results -------------------------------------------------------------------------------
    def trials(self) -> List[Dict]:
        """Every trial of the study: number, state, status, tuple, objective values, and the
        latency measurement behind a trained trial's value (median, p10, p90 with batch size,
        sequence length, threads and device)."""
        from .bo_report import search_latency  # pylint: disable=import-outside-toplevel
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            complete = len(t.params) == len(KNOBS)
            row = {'number': t.number, 'state': t.state.name,
                   'status': t.user_attrs.get('status', 'unknown'),
                   'tuple': list(self.trial_tuple(t)) if complete else None}
            if t.values:
                row['values'] = dict(zip(self.objectives, t.values))
                measured = search_latency(self, self.by_tuple[self.trial_tuple(t)])
                if measured:
                    row['latency_measurement'] = measured
            if t.user_attrs.get('constraints'):
                row['constraints'] = t.user_attrs['constraints']
            rows.append(row)
        return rows

    def summary(self) -> Dict:
        # pylint: disable=import-outside-toplevel
        from .bo_report import front_summary
        counts = Counter(t.user_attrs.get('status', 'unknown')
                         for t in self.study.get_trials(deepcopy=False))
        return {'name': self.name, 'sampler': self.config.bo_sampler,
                'objectives': list(self.objectives), 'budget': self.budget,
                'startup': self.startup, 'constraints': self.constraints,
                'study': {'storage': os.path.abspath(self.storage_path), 'name': STUDY_NAME},
                'counts': dict(counts), 'fallback_picks': self.fallbacks,
                'trials': self.trials(), **front_summary(self)}

    def write_outputs(self, out: str, ranked: List[Dict]) -> None:
        # pylint: disable=import-outside-toplevel
        from .bo_report import write_bo_outputs
        write_bo_outputs(self, out, ranked)
