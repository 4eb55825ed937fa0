"""Optimal subarchitecture extraction (the paper's FPTAS) and the machinery any search shares.

Modules, by noun:

- :mod:`~bort.search.config`: :class:`SearchConfig`, every setting with the project's reading;
- :mod:`~bort.search.space`: Ξ, invalid tuples skipped and counted, the ε-selection;
- :mod:`~bort.search.data`: the fixed search batches;
- :mod:`~bort.search.targets`: the cache of the maximum point T's outputs (T itself comes from
  :func:`bort.pretrain.default_teacher.resolve_teacher`);
- :mod:`~bort.search.trainer`: the surrogate error e(ξ) of one candidate;
- :mod:`~bort.search.inference`: p(ξ) and i(ξ) (measured or counted);
- :mod:`~bort.search.evaluate`: candidates spread over workers, stored one file each (resume);
- :mod:`~bort.search.strategies`: how candidates are chosen (``fptas``; pluggable);
- :mod:`~bort.search.bo`: ``bo``, multi-objective Bayesian optimisation (a Pareto front);
  :mod:`~bort.search.pareto` (front, hypervolume), :mod:`~bort.search.compare` (FPTAS vs BO);
- :mod:`~bort.search.scoring`: W-coefficient, ranking, non-dominated set;
- :mod:`~bort.search.trust`: the seed noise of e, the proxy's Kendall τ, the verdict on what
  decides the ranking; :mod:`~bort.search.checks` retrains for them and scores with them;
- :mod:`~bort.search.report`: results.json, table.md, pareto.png, best_arch.json;
- :mod:`~bort.search.driver`: :func:`run_search`, the whole search.
"""
from .config import GRIDS, SearchConfig
from .driver import run_search
from .evaluate import CandidateEvaluator, ResultStore
from .scoring import non_dominated, rank_records, w_coefficient
from .space import SearchSpace, build_space, epsilon_select, order_space
from .strategies import STRATEGIES, FPTASStrategy, Strategy, register_strategy
from .bo import BayesianStrategy  # registers --strategy bo

__all__ = ['SearchConfig', 'GRIDS', 'run_search', 'CandidateEvaluator', 'ResultStore',
           'w_coefficient', 'rank_records', 'non_dominated', 'SearchSpace', 'build_space',
           'epsilon_select', 'order_space', 'Strategy', 'FPTASStrategy', 'STRATEGIES',
           'register_strategy', 'BayesianStrategy']
