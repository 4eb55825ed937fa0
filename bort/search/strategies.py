"""Strategies: how a search chooses the candidates to evaluate. Everything else is shared.

A strategy runs on rank 0 only. The driver (:func:`bort.search.driver.run_search`) asks it for a
batch of architectures, has the :class:`~bort.search.evaluate.CandidateEvaluator` evaluate the
batch on all workers, hands the records back, and repeats until the strategy proposes nothing::

    strategy.setup(space, evaluator, teacher)        # once
    while not strategy.finished():                   # and training budget left
        batch = strategy.propose()                   # list of Architecture
        strategy.observe(evaluator.evaluate(batch))  # records with error, params, cost

To add one (the Bayesian-optimisation search, say), subclass :class:`Strategy` and register it::

    @register_strategy
    class BayesianStrategy(Strategy):
        name = 'bo'
        def propose(self): ...   # e.g. ask an Optuna study for comm.size trials
        def observe(self, records): ...  # tell it their (error, cost[, params])

``--strategy bo`` then selects it; results, table and plot come out in the same layout. What a
strategy can use: ``self.config`` (add its settings to :class:`SearchConfig`), ``self.space``
(the valid tuples and the grid), ``self.teacher`` (p and i of T, for W via
:func:`bort.search.scoring.w_coefficient`), ``self.evaluator.costs`` (p and i of any
architecture before training, e.g. to enforce a latency limit), ``self.evaluator.comm.size``
(workers: propose that many per round to keep them busy), ``self.config.out`` (a place for its
own state, e.g. an Optuna SQLite study, so an interrupted search resumes) and
:meth:`Strategy.write_outputs` for files of its own. Finished candidates are stored by the
evaluator, so proposing an already evaluated tuple again costs nothing.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Type

from ..arch import Architecture
from .config import STRATEGIES, SearchConfig
from .space import SearchSpace, epsilon_select, order_space

__all__ = ['Strategy', 'FPTASStrategy', 'STRATEGIES', 'register_strategy', 'make_strategy']

log = logging.getLogger(__name__)

def register_strategy(cls: Type['Strategy']) -> Type['Strategy']:
    """Class decorator: make ``cls`` selectable as ``--strategy cls.name``."""
    STRATEGIES[cls.name] = cls
    return cls


def make_strategy(name: str, config: SearchConfig) -> 'Strategy':
    if name not in STRATEGIES:
        raise ValueError(f'unknown strategy {name!r}; known: {", ".join(sorted(STRATEGIES))}')
    return STRATEGIES[name](config)


class Strategy:
    """Chooses candidates; see the module docstring for the protocol.

    Attributes
    ----------
    space : SearchSpace
    evaluator : CandidateEvaluator
        Its ``costs`` (a :class:`~bort.search.inference.CostModel`) gives p and i of any
        architecture on rank 0 without training (measured i cached in ``costs.json``): a
        strategy may use them to order or prune before proposing.
    teacher : dict
        ``params`` and ``inference_cost`` of the maximum point, and its ``arch`` (to time it
        again beside candidates).
    """

    name = ''

    def __init__(self, config: SearchConfig):
        self.config = config
        self.space = None
        self.evaluator = None
        self.teacher: Dict = {}
        self.history: List[Dict] = []

    def setup(self, space: SearchSpace, evaluator, teacher: Dict) -> None:
        """Called once on rank 0 before the first proposal."""
        self.space, self.evaluator, self.teacher = space, evaluator, teacher

    def propose(self) -> List[Architecture]:
        """The next architectures to evaluate; an empty list ends the search."""
        raise NotImplementedError

    def observe(self, records: List[Dict]) -> None:
        """The evaluated records of the last proposal (fewer than proposed when the
        ``max_candidates`` budget ran out)."""
        self.history.extend(records)

    def finished(self) -> bool:
        """True once the strategy has nothing left to propose and all it proposed is evaluated.
        """
        raise NotImplementedError

    def summary(self) -> Dict:
        """What results.json should record about this strategy's choices."""
        return {'name': self.name}

    def write_outputs(self, out: str, ranked: List[Dict]) -> None:
        """Extra files of this strategy (rank 0, after the common outputs; e.g. a Pareto front
        file). ``ranked``: the scored records, W and rank set. Nothing by default."""


@register_strategy
class FPTASStrategy(Strategy):
    """The paper's procedure: Ξ sorted by p (ties by i), one candidate every ε positions.

    All candidates are proposed at once, in that order (they are independent; the evaluator
    spreads them over the workers); the search ends after one round.
    """

    name = 'fptas'

    def __init__(self, config: SearchConfig):
        super().__init__(config)
        self.selected: List[Architecture] = []
        self._proposed = False

    def setup(self, space: SearchSpace, evaluator, teacher: Dict) -> None:
        super().setup(space, evaluator, teacher)
        ordered = order_space(space.valid, evaluator.costs.params, evaluator.costs.costs)
        self.selected = epsilon_select(ordered, self.config.epsilon)
        log.info('FPTAS: |Ξ| = %d, ε = %d: %d candidates (%d invalid tuples skipped)',
                 len(space), self.config.epsilon, len(self.selected), len(space.skipped))

    def propose(self) -> List[Architecture]:
        if self._proposed:
            return []
        self._proposed = True
        return list(self.selected)

    def finished(self) -> bool:
        return self._proposed and len(self.history) == len(self.selected)

    def summary(self) -> Dict:
        return {'name': self.name, 'epsilon': self.config.epsilon,
                'selected': [list(a.tuple) for a in self.selected]}
