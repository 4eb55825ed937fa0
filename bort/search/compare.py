"""FPTAS against Bayesian optimisation at an equal budget (``run_search.py --strategy compare``).

Both strategies run with every other setting equal, one after the other, in sub-folders of
``--out`` (``fptas/``, ``bo/``):

- **budget**: the FPTAS trains ⌈|Ξ|/ε⌉ candidates; with ``--max_candidates B`` ε is chosen
  as ⌈|Ξ|/B⌉ (the FPTAS then trains at most B). The Bayesian study gets exactly as many
  trainings as the FPTAS does.
- **teacher**: one teacher-output cache (``--out/teacher_cache``, linked into both folders, built
  by the first run and only read by the second) and one set of teacher costs: the FPTAS's
  ``costs.json`` seeds the BO folder, so p(T) and i(T) in both W-coefficients are the same
  numbers (new tuples are timed by the run that proposes them).
- **scores**, for each: its best W-coefficient (and tuple), the hypervolume of its front over
  the BO objectives against **one** reference point (error: 1.1 × the worst error of both runs;
  latency: i(T); params: p(T); :func:`bort.search.pareto.reference_point`), its wall time and
  the part of it spent training.

Outputs: ``comparison.json``, ``comparison.md`` (printed), ``comparison.png`` (both fronts) and
``best_arch.json`` (the higher W of the two), next to the two runs' own outputs. A rerun with
the same ``--out`` resumes both runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

from ..arch import ARCHITECTURES, BEST_ARCH_FILE
from ..checkpoint import write_json_atomic
from ..distributed import Comm
from .bo import bo_budget
from .bo_report import hypervolume_of
from .config import SearchConfig, parse_objectives, resolve_grid
from .inference import COSTS_FILE
from .pareto import pareto_front, reference_point
from .space import build_space

__all__ = ['run_comparison', 'COMPARISON_FILE', 'COMPARISON_TABLE', 'compare_budget']

log = logging.getLogger(__name__)

COMPARISON_FILE = 'comparison.json'
COMPARISON_TABLE = 'comparison.md'
#: The strategies a comparison runs, in table order (names in bort.search.strategies.STRATEGIES).
COMPARED = ('fptas', 'bo')


def compare_budget(config: SearchConfig) -> Dict[str, int]:
    """``space`` (|Ξ|), ``epsilon`` of the FPTAS and ``budget`` (trainings of each strategy)."""
    # Validity of a tuple does not depend on the teacher's non-searched fields.
    space = build_space(resolve_grid(config), base=ARCHITECTURES['bort_4_8_768_1024'])
    epsilon = (max(1, math.ceil(len(space) / config.max_candidates)) if config.max_candidates
               else config.epsilon)
    return {'space': len(space), 'epsilon': epsilon,
            'budget': bo_budget(dataclasses.replace(config, max_candidates=0, epsilon=epsilon),
                                len(space))}


def _link(target: str, link: str) -> None:
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def _points(records: List[Dict], objectives, scale: float) -> List[List[float]]:
    by_name = {'error': 'error', 'latency': 'inference_cost', 'params': 'params'}
    factor = {'error': 1.0, 'latency': scale, 'params': 1e-6}
    return [[r[by_name[o]] * factor[o] for o in objectives] for r in records
            if r['error'] is not None and math.isfinite(r['error'])]


def _row(name: str, result: Dict, wall: float, points, reference: Dict) -> Dict:
    best = result['best'] or {}
    return {'strategy': name, 'trained': len(result['candidates']),
            'best_w': best.get('w'),
            'best_tuple': [best.get(k) for k in ('num_layers', 'num_heads', 'units',
                                                  'hidden_size')] if best else None,
            'best_error': best.get('error'), 'front_size': len(pareto_front(points)),
            **hypervolume_of(points, reference), 'wall_seconds': round(wall, 1),
            'train_seconds': round(sum(r.get('train_seconds') or 0.0
                                       for r in result['candidates']), 1),
            'teacher_forward_calls': result['teacher_forward_calls'],
            'complete': result['complete']}


def format_comparison(rows: List[Dict], reference: Dict, setup: Dict) -> str:
    """The comparison as a Markdown table with its setting underneath."""
    lines = ['| strategy | trained | best W | best <D, A, H, I> | its e | front size | '
             'hypervolume | normalised | wall (s) | training (s) |',
             '|---|---:|---:|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        w = '—' if r['best_w'] is None else f"{r['best_w']:.3f}"
        e = '—' if r['best_error'] is None else f"{r['best_error']:.4f}"
        best = '—' if not r['best_tuple'] else '<' + ', '.join(map(str, r['best_tuple'])) + '>'
        lines.append(f"| {r['strategy']} | {r['trained']} | {w} | {best} | {e} | "
                     f"{r['front_size']} | {r['hypervolume']:.5g} | "
                     f"{r['hypervolume_normalised']:.4f} | {r['wall_seconds']:.0f} | "
                     f"{r['train_seconds']:.0f} |")
    point = ', '.join(f'{n} {v:.4g}' for n, v in zip(reference['objectives'],
                                                    reference['point']))
    lines += ['', f"Equal budget: {setup['budget']} candidate trainings each (|Ξ| = "
                  f"{setup['space']}, FPTAS ε = {setup['epsilon']}; BO sampler "
                  f"{setup['sampler']}); one teacher and one teacher cache. Hypervolume of each "
                  f"front over ({', '.join(reference['objectives'])}) against one reference "
                  f"point ({point}): {reference['rule']}; latency in {setup['latency_unit']}. "
                  f"Wall time includes the first run's building of the teacher cache "
                  f"({rows[0]['strategy']}: {rows[0]['teacher_forward_calls']} teacher "
                  f"passes; {rows[-1]['strategy']}: {rows[-1]['teacher_forward_calls']})."]
    return '\n'.join(lines) + '\n'


def _plot(fronts: Dict[str, List[List[float]]], reference: Dict, unit: str, path: str) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(7, 5))
    for (name, points), colour in zip(fronts.items(), ('tab:blue', 'tab:red')):
        ax.scatter([p[1] for p in points], [p[0] for p in points], s=25, alpha=0.5,
                   color=colour, label=f'{name}: all trained')
        front = sorted((points[i] for i in pareto_front([p[:2] for p in points])),
                       key=lambda p: p[1])
        ax.step([p[1] for p in front], [p[0] for p in front], where='post', color=colour,
                lw=1.5, label=f'{name}: front (error, latency)')
    ax.scatter([reference['point'][1]], [reference['point'][0]], marker='s', c='black',
               label='reference point')
    ax.set_xlabel(f'latency ({unit})')
    ax.set_ylabel('surrogate error e (nats)')
    ax.set_title('FPTAS vs BO at equal budget')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_comparison(config: SearchConfig, run_one: Callable[[SearchConfig, Comm], Dict],
                   comm: Optional[Comm] = None) -> Dict:
    """Run the FPTAS and the Bayesian search at an equal budget and compare them (collective).

    Parameters
    ----------
    config : SearchConfig
        ``strategy='compare'``; each strategy runs in a sub-folder of ``config.out``.
    run_one : callable
        Runs one strategy's search (:func:`bort.search.driver.run_search`), passed in so that
        this module does not import the driver that dispatches to it.
    comm : Comm, optional

    Returns
    -------
    dict
        On rank 0: ``table`` (Markdown), ``comparison`` (what comparison.json holds),
        ``results`` (each strategy's :func:`run_search` result), ``wall_seconds``. Else ``{}``.
    """
    comm = comm or Comm()
    start = time.time()
    setup = dict(compare_budget(config), sampler=config.bo_sampler)
    objectives = parse_objectives(config.bo_objectives)
    configs = {
        'fptas': dataclasses.replace(config, strategy='fptas', epsilon=setup['epsilon'],
                                     max_candidates=0, out=os.path.join(config.out, 'fptas')),
        'bo': dataclasses.replace(config, strategy='bo', max_candidates=setup['budget'],
                                  out=os.path.join(config.out, 'bo'))}
    if comm.is_root:
        shared = os.path.join(config.out, 'teacher_cache')
        os.makedirs(shared, exist_ok=True)
        for sub in configs.values():
            os.makedirs(sub.out, exist_ok=True)
            _link(shared, os.path.join(sub.out, 'teacher_cache'))
    comm.barrier()
    log.info('comparison: FPTAS (ε = %d) and BO (%s), %d trainings each, in %s',
             setup['epsilon'], config.bo_sampler, setup['budget'], config.out)
    results, walls = {}, {}
    for name in COMPARED:
        if name == 'bo' and comm.is_root:
            seed_costs = os.path.join(configs['fptas'].out, COSTS_FILE)
            own = os.path.join(configs['bo'].out, COSTS_FILE)
            if os.path.exists(seed_costs) and not os.path.exists(own):
                shutil.copyfile(seed_costs, own)
        comm.barrier()
        begin = time.time()
        results[name] = run_one(configs[name], comm)
        walls[name] = time.time() - begin
    if not comm.is_root:
        return {}

    scale = 1e3 if config.cost == 'measured' else 1.0
    points = {n: _points(results[n]['candidates'], objectives, scale) for n in COMPARED}
    teacher = _teacher_of(configs['fptas'].out)  # p(T), i(T): the same numbers in both runs
    reference = reference_point([p[0] for n in COMPARED for p in points[n]], teacher,
                                objectives, scale)
    rows = [_row(n, results[n], walls[n], points[n], reference) for n in COMPARED]
    setup['latency_unit'] = 'ms/sample' if config.cost == 'measured' else 'GFLOP/sample'
    table = format_comparison(rows, reference, setup)
    comparison = {'setup': setup, 'objectives': list(objectives), 'reference_point': reference,
                  'teacher': teacher, 'strategies': rows,
                  'outputs': {n: configs[n].out for n in COMPARED}}
    write_json_atomic(os.path.join(config.out, COMPARISON_FILE), comparison)
    with open(os.path.join(config.out, COMPARISON_TABLE), 'w') as f:
        f.write(table)
    _plot(points, reference, setup['latency_unit'], os.path.join(config.out, 'comparison.png'))
    winner = max(rows, key=lambda r: r['best_w'] if r['best_w'] is not None
                 and math.isfinite(r['best_w']) else -math.inf)
    source = os.path.join(configs[winner['strategy']].out, BEST_ARCH_FILE)
    if os.path.exists(source):
        shutil.copyfile(source, os.path.join(config.out, BEST_ARCH_FILE))
    wall = round(time.time() - start, 1)
    log.info('comparison done in %.0f s:\n%s', wall, table)
    return {'table': table, 'comparison': comparison, 'results': results,
            'wall_seconds': wall}


def _teacher_of(out: str) -> Dict:
    with open(os.path.join(out, 'results.json')) as f:
        teacher = json.load(f)['teacher']
    return {'params': teacher['params'], 'inference_cost': teacher['inference_cost']}
