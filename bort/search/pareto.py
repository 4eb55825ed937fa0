"""Pareto fronts of a multi-objective search: the non-dominated set, its hypervolume, its picture.

Every objective is minimised (surrogate error e, latency i, parameters p).

- :func:`pareto_front`: indices of the non-dominated points (ties kept: two equal points do not
  dominate each other, both are on the front);
- :func:`hypervolume`: the exact volume dominated by a set and bounded by a reference point, in
  any dimension (a sweep in 2-D, slicing along the last objective above);
- :func:`reference_point`: the project's reference point, stated with every hypervolume:
  ``error_ref = 1.1 × the worst finite error among the points compared``, ``latency_ref = i(T)``
  (a candidate no faster than the teacher earns nothing), ``params_ref = p(T)``;
- :func:`plot_front`: error against latency, every trial, the front and the dominated region.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .scoring import non_dominated

__all__ = ['pareto_front', 'hypervolume', 'hypervolume_2d', 'optuna_hypervolume',
           'reference_point', 'plot_front', 'ERROR_MARGIN']

log = logging.getLogger(__name__)

#: The reference error is the worst finite error of the compared points times this factor.
ERROR_MARGIN = 1.1


def pareto_front(points: Sequence[Sequence[float]]) -> List[int]:
    """Indices (ascending) of the points no other point dominates; rows with a non-finite value
    are never on the front.

    Parameters
    ----------
    points : (n, m) array-like
        Objective values, all minimised.
    """
    if len(points) == 0:
        return []
    values = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    finite = [i for i, row in enumerate(values) if np.all(np.isfinite(row))]
    return [finite[i] for i in non_dominated(values[finite])] if finite else []


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact area dominated by 2-D points within the box below ``reference``.

    Sort by the first objective; walking right, each point that lowers the running minimum of
    the second objective adds the rectangle between that minimum, its own value, its x and
    the reference's x.
    """
    rx, ry = float(reference[0]), float(reference[1])
    inside = sorted((float(x), float(y)) for x, y in points if x < rx and y < ry)
    area, low = 0.0, ry
    for x, y in inside:
        if y < low:
            area += (rx - x) * (low - y)
            low = y
    return area


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume of the region the points dominate, bounded by ``reference``.

    Points not strictly better than the reference in every objective add nothing. Above two
    objectives the volume is cut into slabs between consecutive values of the last objective;
    each slab is the (m−1)-dimensional hypervolume of the points at or below it times its
    thickness (O(n² log n) in 3-D: fine for a search's few hundred trials).

    Parameters
    ----------
    points : (n, m) array-like
    reference : (m,) array-like

    Returns
    -------
    float
    """
    ref = np.asarray(reference, dtype=np.float64)
    values = np.asarray(points, dtype=np.float64).reshape(-1, ref.size)
    values = values[np.all(values < ref, axis=1)]
    if len(values) == 0:
        return 0.0
    if ref.size == 1:
        return float(ref[0] - values[:, 0].min())
    if ref.size == 2:
        return hypervolume_2d(values, ref)
    values = values[np.argsort(values[:, -1], kind='stable')]
    volume = 0.0
    for k in range(len(values)):
        top = values[k + 1, -1] if k + 1 < len(values) else ref[-1]
        if top > values[k, -1]:
            volume += hypervolume(values[:k + 1, :-1], ref[:-1]) * (top - values[k, -1])
    return float(volume)


def optuna_hypervolume(points: Sequence[Sequence[float]],
                       reference: Sequence[float]) -> Optional[float]:
    """Optuna's own (WFG) hypervolume of the same set, as an independent check; None when that
    private helper is not importable."""
    # pylint: disable=import-outside-toplevel
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    values = np.asarray(points, dtype=np.float64).reshape(-1, ref.size)
    values = values[np.all(values < ref, axis=1)]
    if len(values) == 0:
        return 0.0
    return float(compute_hypervolume(values, ref))


def reference_point(errors: Sequence[float], teacher: Dict, objectives: Sequence[str],
                    latency_scale: float = 1.0) -> Dict:
    """The reference point of the hypervolume, with the rule that produced it.

    Parameters
    ----------
    errors : sequence of float
        Every error of the points to be compared (several searches: pool them, so that all
        use one reference point).
    teacher : dict
        ``params`` and ``inference_cost`` of T.
    objectives : sequence of {'error', 'latency', 'params'}
    latency_scale : float
        Factor from ``inference_cost`` to the latency objective's unit (1e3 for ms).

    Returns
    -------
    dict
        ``point`` (list, in objective order), ``objectives`` and ``rule``.
    """
    finite = [e for e in errors if e is not None and math.isfinite(e)]
    worst = max(finite) if finite else 1.0
    by_name = {'error': ERROR_MARGIN * worst,
               'latency': teacher['inference_cost'] * latency_scale,
               'params': teacher['params'] / 1e6}
    return {'point': [by_name[o] for o in objectives], 'objectives': list(objectives),
            'rule': f'error: {ERROR_MARGIN} x the worst finite error compared ({worst:.6g}); '
                    "latency: the teacher's i(T); params: the teacher's p(T) in M"}


def plot_front(points: Sequence[Dict], front: Sequence[int], reference: Dict, path: str,
               latency_unit: str, title: str = '', max_latency: Optional[float] = None) -> None:
    """Error against latency for every trained trial, the front marked, the region it
    dominates (in those two objectives) shaded up to the reference point.

    Parameters
    ----------
    points : sequence of dict
        ``error``, ``latency``, ``params`` (M), ``label``; optionally ``latency_low`` and
        ``latency_high`` (the p10-p90 spread of the latency, drawn as an error bar) and
        ``latency_again`` (a re-measured latency, drawn as a diamond).
    front : sequence of int
        Indices into ``points`` of the non-dominated set (over the study's objectives).
    reference : dict
        :func:`reference_point`'s result.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    ok = [p for p in points if math.isfinite(p['error'])]
    names = reference['objectives']
    ref_e = reference['point'][names.index('error')]
    ref_l = reference['point'][names.index('latency')]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if ok:
        dots = ax.scatter([p['latency'] for p in ok], [p['error'] for p in ok],
                          c=[p['params'] for p in ok], cmap='viridis', s=30, zorder=2,
                          alpha=0.8)
        fig.colorbar(dots, ax=ax, label='parameters (M)')
    members = sorted((points[i] for i in front), key=lambda p: (p['latency'], p['error']))
    # The staircase of the 2-D (latency, error) projection, clipped at the reference point.
    flat = [members[i] for i in pareto_front([(p['latency'], p['error']) for p in members])]
    flat = [p for p in flat if p['latency'] < ref_l and p['error'] < ref_e]
    if flat:
        xs, ys = [flat[0]['latency']], [ref_e]
        for a, b in zip(flat, flat[1:] + [None]):
            xs += [a['latency'], b['latency'] if b else ref_l]
            ys += [a['error'], a['error']]
        ax.fill_between(xs, ys, [ref_e] * len(xs), step=None, color='tab:red', alpha=0.12,
                        label='dominated region (hypervolume)')
        ax.plot(xs, ys, color='tab:red', lw=1.2, zorder=3)
    if members:
        bars = [[p['latency'] - p.get('latency_low', p['latency']) for p in members],
                [p.get('latency_high', p['latency']) - p['latency'] for p in members]]
        ax.errorbar([p['latency'] for p in members], [p['error'] for p in members],
                    xerr=bars, fmt='none', ecolor='black', elinewidth=0.8, capsize=2, zorder=3)
        ax.scatter([p['latency'] for p in members], [p['error'] for p in members], s=110,
                   facecolors='none', edgecolors='tab:red', linewidths=1.5, zorder=4,
                   label=f'front ({len(members)}; {", ".join(names)})')
        for p in members:
            ax.annotate(p['label'], (p['latency'], p['error']), fontsize=7,
                        xytext=(4, 4), textcoords='offset points')
        again = [p for p in members if 'latency_again' in p]
        if again:
            ax.scatter([p['latency_again'] for p in again], [p['error'] for p in again],
                       marker='D', s=22, c='black', zorder=5,
                       label="re-measured beside T, as a ratio to i(T)")
    ax.scatter([ref_l], [ref_e], marker='s', c='black', s=40, zorder=4,
               label=f'reference ({ref_l:.3g}, {ref_e:.3g})')
    ax.axvline(ref_l, color='grey', ls=':', lw=1)
    if max_latency:
        ax.axvline(max_latency, color='tab:orange', ls='--', lw=1, label='max latency')
    ax.set_xlabel(f'latency ({latency_unit})')
    ax.set_ylabel('surrogate error e (nats)')
    ax.set_title(title or 'Pareto front')
    ax.grid(alpha=0.3)
    # Left of the front's fastest member nothing can lie: the upper left stays free.
    ax.legend(fontsize=7, loc='upper left', framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
