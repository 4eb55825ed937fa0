"""Outputs of the Bayesian search: the front, its hypervolume, re-measured latency, the picture.

Called by :class:`~bort.search.bo.BayesianStrategy` after the common outputs
(:mod:`bort.search.report`):

- ``pareto.json``: the non-dominated trained trials over the study's objectives, each with its
  search-time latency (median, p10, p90) and, with ``--cost measured``, the latency re-measured
  at the end (all front members timed side by side, runs interleaved, ``--bo_remeasure_repeats``
  runs after warm-up, through the same measurement as every strategy's costs: by default a
  one-thread timing process, :func:`bort.inference.isolated.time_encoders`); batch size,
  sequence length, threads, clock and device next to every figure; the hypervolume, its
  reference point and the rule behind it, and Optuna's own computation of it as a check;
- ``pareto.png``: :func:`bort.search.pareto.plot_front` (replaces the common p-i plot; the
  non-dominated set over (p, i, e) stays listed in ``results.json``);
- a "Pareto front" section appended to ``table.md``.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Sequence

from ..arch import Architecture
from ..checkpoint import write_json_atomic
from .pareto import hypervolume, optuna_hypervolume, pareto_front, plot_front, reference_point
from .report import PLOT_FILE, TABLE_FILE
from .scoring import non_dominated
from .space import arch_key

__all__ = ['front_summary', 'write_bo_outputs', 'remeasure', 'hypervolume_of', 'search_latency',
           'PARETO_FILE']

log = logging.getLogger(__name__)

PARETO_FILE = 'pareto.json'


def hypervolume_of(points: Sequence[Sequence[float]], reference: Dict) -> Dict:
    """Hypervolume of ``points`` (objective vectors) against ``reference``
    (:func:`reference_point`): exact, normalised by the box between the origin and the
    reference point (every objective is non-negative), and Optuna's value as a check."""
    front = [points[i] for i in pareto_front(points)]
    value = hypervolume(front, reference['point'])
    box = math.prod(reference['point'])
    return {'hypervolume': value, 'hypervolume_normalised': value / box if box > 0 else None,
            'hypervolume_check_optuna': optuna_hypervolume(front, reference['point'])}


def _trained(strategy) -> List:
    return [t for t in strategy.study.get_trials(deepcopy=False)
            if t.user_attrs.get('status') == 'trained' and t.values]


def front_summary(strategy) -> Dict:
    """The study's front (trial numbers), reference point and hypervolume."""
    trained = _trained(strategy)
    points = [list(t.values) for t in trained]
    reference = reference_point([p[0] for p in points], strategy.teacher, strategy.objectives,
                                strategy.latency_scale)
    return {'front': [trained[i].number for i in pareto_front(points)],
            'reference_point': reference, **hypervolume_of(points, reference)}


def remeasure(archs: Sequence[Architecture], costs, repeats: int) -> Dict[tuple, Dict]:
    """Latency of ``archs`` timed again, side by side, exactly as the search's cost model times
    every strategy's candidates (:func:`bort.inference.isolated.time_encoders` with its batch,
    sequence, warm-up, threads, clock and device: by default a one-thread child process), with
    ``repeats`` interleaved runs.

    Parameters
    ----------
    archs : sequence of Architecture
    costs : CostModel
        The search's cost model (its settings are the measurement's).
    repeats : int

    Returns
    -------
    dict of tuple -> dict
        ``per_sample_s, median_s, p10_s, p90_s, q25_s, q75_s`` (seconds; per batch except the
        first), ``batch_size, seq_len, warmup, repeats, threads, clock, device``.
    """
    from ..inference.isolated import time_encoders  # pylint: disable=import-outside-toplevel
    labels = {','.join(map(str, arch.tuple)): arch for arch in archs}
    results = time_encoders(labels, costs.batch_size, costs.seq_len, costs.warmup, repeats,
                            threads=costs.threads, clock=costs.clock, ctx=costs.ctx)
    out = {}
    for label, arch in labels.items():
        r = results[label]
        out[arch.tuple] = {'per_sample_s': r.per_sample, 'median_s': r.median, 'p10_s': r.p10,
                           'p90_s': r.p90, 'q25_s': r.q25, 'q75_s': r.q75,
                           'batch_size': r.batch_size, 'seq_len': r.seq_len, 'warmup': r.warmup,
                           'repeats': r.repeats, 'threads': r.threads, 'clock': r.clock,
                           'device': r.device}
    return out


def search_latency(strategy, arch: Architecture) -> Optional[Dict]:
    """The search-time measurement behind i(arch), with its setting (measured cost only)."""
    costs = strategy.evaluator.costs
    record = costs.record(arch)
    if record is None:
        return None
    env = costs.describe()
    return {'per_sample_s': record['seconds_per_sample'], 'median_s': record['median_s'],
            'p10_s': record['p10_s'], 'p90_s': record['p90_s'],
            # i's spread as the search uses it: p10/p90 of the ratio to T times i(T)
            'low_s': record.get('low_s', record['seconds_per_sample']),
            'high_s': record.get('high_s', record['seconds_per_sample']),
            'batch_size': env['batch_size'], 'seq_len': env['seq_len'],
            'warmup': env['warmup'], 'repeats': env['repeats'],
            'threads': env.get('threads'), 'clock': env.get('clock'),
            'device': env.get('device')}


def _front_rows(strategy, summary: Dict, ranked: List[Dict]) -> List[Dict]:
    by_number = {t.number: t for t in _trained(strategy)}
    by_tuple = {arch_key(r): r for r in ranked}
    rows = []
    for number in summary['front']:
        trial = by_number[number]
        values = strategy.trial_tuple(trial)
        record = by_tuple.get(values, {})
        arch = strategy.by_tuple[values]
        d, a, h, i = values
        rows.append(dict(trial=number, num_layers=d, num_heads=a, units=h, hidden_size=i,
                         **dict(zip(strategy.objectives, trial.values)),
                         params_count=record.get('params'), w=record.get('w'),
                         rank=record.get('rank'), inference_cost=record.get('inference_cost'),
                         search_latency=search_latency(strategy, arch)))
    return sorted(rows, key=lambda r: (r['latency'], r['error']))


def _ms(entry: Optional[Dict]) -> str:
    if not entry:
        return '—'
    b = entry['batch_size']
    return (f"{1e3 * entry['per_sample_s']:.3g} [{1e3 * entry['p10_s'] / b:.3g}–"
            f"{1e3 * entry['p90_s'] / b:.3g}]")


def _table_section(strategy, rows: List[Dict], summary: Dict, unit: str, env: Dict,
                   teacher: Dict) -> str:
    names = strategy.objectives
    ref = summary['reference_point']
    lines = ['', f"## Pareto front ({', '.join(names)}; --strategy bo)", '',
             '| trial | <D, A, H, I> | e | latency ({}) | search-time ms/sample [p10–p90] | '
             're-measured ms/sample [p10–p90] | i/i(T) search → again | Parameters (M) | W | '
             'rank |'.format(unit),
             '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        w = '—' if r['w'] is None or not math.isfinite(r['w']) else f"{r['w']:.3f}"
        params = '—' if r['params_count'] is None else f"{r['params_count'] / 1e6:.2f}"
        ratio = r.get('ratio_to_teacher', {})
        ratio = ' → '.join(f'{ratio[k]:.3f}' for k in ('search', 'remeasured') if k in ratio)
        lines.append(f"| {r['trial']} | <{r['num_layers']}, {r['num_heads']}, {r['units']}, "
                     f"{r['hidden_size']}> | {r['error']:.4f} | {r['latency']:.4g} | "
                     f"{_ms(r['search_latency'])} | {_ms(r.get('remeasured'))} | "
                     f"{ratio or '—'} | {params} | {w} | {r['rank'] or '—'} |")
    recheck = _recheck_lines(rows)
    if recheck:
        lines += [''] + recheck
    point = ', '.join(f'{n} {v:.4g}' for n, v in zip(names, ref['point']))
    counts = ', '.join(f'{k} {v}' for k, v in sorted(strategy_counts(strategy).items()))
    lines += ['', f"Hypervolume {summary['hypervolume']:.6g} (normalised "
                  f"{summary['hypervolume_normalised']:.4f}; Optuna's computation: "
                  f"{summary['hypervolume_check_optuna']}) against the reference point "
                  f"({point}); {ref['rule']}.",
              f"Study: {strategy.config.bo_sampler} sampler, budget {strategy.budget} "
              f"trainings; trials by status: {counts}."]
    if env.get('kind') == 'measured':
        repeats = strategy.config.bo_remeasure_repeats or 2 * env['repeats']
        lines.append(f"Latency: batch {env['batch_size']}, sequence length {env['seq_len']}, "
                     f"{env.get('threads', '?')} threads "
                     + (f"in a timing process ({env.get('clock')} clock)"
                        if env.get('child_threads') else 'in the search process')
                     + f", {env.get('device', '?')}; search-time "
                     f"median of {env['repeats']} runs, re-measured side by side with "
                     f"{repeats} runs, each after {env['warmup']} warm-up"
                     + (f"; the teacher, timed beside the front: "
                        f"{1e3 * teacher['remeasured']['per_sample_s']:.3g} ms/sample now, "
                        f"{1e3 * teacher['inference_cost']:.3g} during the search (absolute "
                        f"times follow the machine's load, ratios to it much less)"
                        if 'remeasured' in teacher else '') + '.')
    return '\n'.join(lines) + '\n'


def strategy_counts(strategy) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for t in strategy.study.get_trials(deepcopy=False):
        status = t.user_attrs.get('status', 'unknown')
        counts[status] = counts.get(status, 0) + 1
    return counts


def _key(row: Dict) -> tuple:
    return tuple(row[k] for k in ('num_layers', 'num_heads', 'units', 'hidden_size'))


def _remeasure_front(strategy, rows: List[Dict], teacher: Dict) -> None:
    """Time the front members again, side by side with the teacher (in place): absolute
    figures move with the machine's load, the ratio to the teacher timed beside them does
    not, so both are recorded."""
    config = strategy.config
    archs = [strategy.by_tuple[_key(r)] for r in rows]
    t_arch = strategy.teacher.get('arch')
    again = remeasure(archs + ([t_arch] if t_arch is not None else []),
                      strategy.evaluator.costs,
                      config.bo_remeasure_repeats or 2 * config.latency_repeats)
    t_again = again.get(t_arch.tuple) if t_arch is not None else None
    if t_again:
        teacher['remeasured'] = t_again
    for r in rows:
        r['remeasured'] = again[_key(r)]
        r['ratio_to_teacher'] = {'search': r['inference_cost'] / teacher['inference_cost']}
        if t_again:
            r['ratio_to_teacher']['remeasured'] = (r['remeasured']['per_sample_s']
                                                   / t_again['per_sample_s'])
        if config.max_latency_ms:
            r['within_max_latency_remeasured'] = \
                1e3 * r['remeasured']['per_sample_s'] <= config.max_latency_ms
    _recheck_front(rows, teacher)
    log.info('front re-measured (ms/sample, search -> now; ratio to the teacher): %s', '; '.join(
        f"<{', '.join(map(str, _key(r)))}> {r['latency']:.3g} -> "
        f"{1e3 * r['remeasured']['per_sample_s']:.3g} "
        f"({r['ratio_to_teacher']['search']:.3f} -> "
        f"{r['ratio_to_teacher'].get('remeasured', float('nan')):.3f})" for r in rows))


def _recheck_front(rows: List[Dict], teacher: Dict) -> None:
    """After re-measurement, which front members are still non-dominated in (e, latency) and
    W with the re-measured ratio to the teacher (in place): a "best" that re-measurement
    dominates is flagged instead of reported as best."""
    again = [r for r in rows if 'remeasured' in r.get('ratio_to_teacher', {})]
    if not again:
        return
    keep = set(non_dominated([(r['error'], r['ratio_to_teacher']['remeasured'])
                              for r in again]))
    for n, r in enumerate(again):
        r['dominated_after_remeasure'] = n not in keep
        if r.get('params_count') is not None and teacher.get('params') and r['error'] > 0:
            r['w_remeasured'] = ((teacher['params'] - r['params_count']) / teacher['params']
                                 * (1 - r['ratio_to_teacher']['remeasured']) / r['error'])


def _recheck_lines(rows: List[Dict]) -> List[str]:
    checked = [r for r in rows if 'dominated_after_remeasure' in r]
    if not checked:
        return []
    ranked = [r for r in checked if r.get('rank')]
    best = min(ranked, key=lambda r: r['rank']) if ranked else None
    dominated = [r for r in checked if r['dominated_after_remeasure']]
    text = (f'Re-checked after re-measurement: {len(checked) - len(dominated)} of '
            f'{len(checked)} front members remain non-dominated in (e, latency ratio to T)')
    if best is not None:
        name = f"<{best['num_layers']}, {best['num_heads']}, {best['units']}, {best['hidden_size']}>"
        with_w = [r for r in checked if r.get('w_remeasured') is not None]
        top = max(with_w, key=lambda r: r['w_remeasured']) if with_w else None
        if best['dominated_after_remeasure']:
            text += f'; the best by W, {name}, is **dominated once re-measured**'
        else:
            text += f'; the best by W, {name}, is still non-dominated'
        if top is not None and top is not best:
            text += (f"; by W with re-measured latency the front's best is "
                     f"<{top['num_layers']}, {top['num_heads']}, {top['units']}, "
                     f"{top['hidden_size']}> (W {top['w_remeasured']:.3f})")
    return [text + '.']


def write_bo_outputs(strategy, out: str, ranked: List[Dict]) -> Dict:
    """Write pareto.json and pareto.png, append the front to table.md; return pareto.json."""
    config, costs = strategy.config, strategy.evaluator.costs
    summary = front_summary(strategy)
    rows = _front_rows(strategy, summary, ranked)
    env = costs.describe()
    unit = 'ms/sample' if costs.kind == 'measured' else costs.unit
    teacher = {k: strategy.teacher[k] for k in ('params', 'inference_cost')}
    if 'arch' in strategy.teacher:
        teacher['tuple'] = list(strategy.teacher['arch'].tuple)
    if rows and costs.kind == 'measured' and config.bo_remeasure:
        _remeasure_front(strategy, rows, teacher)
    result = dict(summary, objectives=[{'name': n, 'unit': {'error': 'nats', 'latency': unit,
                                                          'params': 'M'}[n]}
                                       for n in strategy.objectives],
                  teacher=teacher, constraints=strategy.constraints,
                  latency_setup=env, front=rows, sampler=config.bo_sampler,
                  budget=strategy.budget, trials_by_status=strategy_counts(strategy))
    write_json_atomic(os.path.join(out, PARETO_FILE), result)
    points = []
    again = {_key(r): r for r in rows}
    front_numbers = set(summary['front'])
    index = []
    for trial in _trained(strategy):
        values = dict(zip(strategy.objectives, trial.values))
        arch = strategy.by_tuple[strategy.trial_tuple(trial)]
        point = {'error': values['error'], 'latency': values['latency'],
                 'params': values.get('params', costs.params(arch) / 1e6),
                 'label': ','.join(map(str, arch.tuple))}
        search = search_latency(strategy, arch)
        if trial.number in front_numbers and search:
            point.update(latency_low=min(search['low_s'] * strategy.latency_scale,
                                         point['latency']),
                         latency_high=max(search['high_s'] * strategy.latency_scale,
                                          point['latency']))
        ratio = again.get(arch.tuple, {}).get('ratio_to_teacher', {}).get('remeasured')
        if ratio is not None:  # on the search's scale: the ratio to T times i(T) then
            point['latency_again'] = ratio * teacher['inference_cost'] * strategy.latency_scale
        if trial.number in front_numbers:
            index.append(len(points))
        points.append(point)
    plot_front(points, index, summary['reference_point'], os.path.join(out, PLOT_FILE), unit,
               title=f"BO ({config.bo_sampler}): {len(points)} trained, front of "
                     f"{len(index)}, hypervolume {summary['hypervolume']:.4g}",
               max_latency=config.max_latency_ms or None)
    with open(os.path.join(out, TABLE_FILE), 'a') as f:
        f.write(_table_section(strategy, rows, summary, unit, env, teacher))
    log.info('BO front: %d of %d trained trials; hypervolume %.5g (normalised %.4f) against %s',
             len(rows), len(points), summary['hypervolume'], summary['hypervolume_normalised'],
             summary['reference_point']['point'])
    return result
