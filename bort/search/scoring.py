"""Scores of evaluated candidates: the W-coefficient, the ranking, and the non-dominated set."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from .space import arch_key

__all__ = ['w_coefficient', 'rank_records', 'non_dominated']


def w_coefficient(params: float, cost: float, error: float, teacher_params: float,
                  teacher_cost: float) -> float:
    """The paper's W-coefficient (higher is better; the maximum point T scores 0).

    ``W(ξ) = ((p(T) − p(ξ)) / p(T)) · ((i(T) − i(ξ)) / i(T)) · (1 / e(ξ))``

    Parameters
    ----------
    params, cost, error : float
        p(ξ), i(ξ) and the surrogate error e(ξ) > 0 of the candidate.
    teacher_params, teacher_cost : float
        p(T) and i(T), positive.

    Notes
    -----
    A candidate larger *and* slower than T gets a positive product of two negative savings; the
    formula is applied as written (the paper's space lies below T). Such rows are rare and
    visible in the table with their savings.
    """
    if teacher_params <= 0 or teacher_cost <= 0:
        raise ValueError('p(T) and i(T) must be positive')
    if not error > 0 or not math.isfinite(error):
        return float('nan')
    saving_p = (teacher_params - params) / teacher_params
    saving_i = (teacher_cost - cost) / teacher_cost
    return saving_p * saving_i / error


def rank_records(records: List[Dict]) -> List[Dict]:
    """Sort records by W (descending; NaN last), ties by error then parameters, and set ``rank``.

    Records are dicts with at least ``w``, ``error`` and ``params``; they are updated in place
    and returned in rank order (rank 1 is the optimal subarchitecture).
    """
    def key(r):
        w = r['w']
        bad = w is None or not math.isfinite(w)
        return (bad, -(w if not bad else 0.0), r['error'], r['params'], arch_key(r))
    ordered = sorted(records, key=key)
    for rank, record in enumerate(ordered, 1):
        record['rank'] = rank
    return ordered


def non_dominated(points: Sequence[Sequence[float]]) -> List[int]:
    """Indices of the points no other point dominates, every objective minimised.

    Point ``a`` dominates ``b`` when ``a <= b`` in every objective and ``a < b`` in one.
    Duplicates do not dominate each other (both are kept).

    Parameters
    ----------
    points : (n, m) array-like

    Returns
    -------
    list of int, ascending
    """
    values = np.asarray(points, dtype=np.float64)
    if values.size == 0:
        return []
    keep = []
    for i, row in enumerate(values):
        dominated = np.any(np.all(values <= row, axis=1) & np.any(values < row, axis=1))
        if not dominated:
            keep.append(i)
    return keep
