"""Benchmark (not a test): search wall time with vs without the teacher cache, 1 vs 2 workers.

Runs the same small search on the default MiniLM teacher four times, each in a fresh output
folder, as separate processes: 1 worker (OMP threads = cores) and 2 Horovod workers (threads =
cores / 2 each), each with and without the teacher cache. Prints a Markdown table of wall time,
teacher forward passes and the best architecture (which must agree across runs)::

    PYTHONPATH=. python benchmarks/bench_search.py [--steps 20] [--out runs/bench_search]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def horovodrun() -> str:
    local = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return local if os.path.exists(local) else (shutil.which('horovodrun') or '')


def run(out: str, workers: int, cache: bool, args) -> dict:
    """One search in its own process; returns its figures."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    config = {'out': out, 'cost': 'flops', 'steps': args.steps, 'epsilon': 1,
              'num_layers': args.num_layers, 'num_heads': [4], 'units': args.units,
              'hidden_size': [256], 'teacher_cache': cache, 'progress': False,
              'reference': [], 'noise_seeds': 0, 'fidelity_factor': 0}  # the search alone
    path = os.path.join(out, 'bench.json')
    with open(path, 'w') as f:
        json.dump(config, f)
    command = [sys.executable, os.path.join(REPO, 'run_search.py'), '--config', path]
    if workers > 1:
        command = [horovodrun(), '-np', str(workers), '-H', f'localhost:{workers}',
                   '--gloo'] + command
    threads = max(1, args.cores // workers)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO)
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f'{command} failed:\n{done.stderr[-3000:]}')
    with open(os.path.join(out, 'results.json')) as f:
        results = json.load(f)
    best = results['best']
    return {'workers': workers, 'threads': threads, 'cache': cache, 'wall_s': wall,
            'search_s': results['run']['wall_seconds'],
            'teacher_calls': results['run']['teacher_forward_calls'],
            'candidates': len(results['candidates']),
            'best': f"<{best['num_layers']}, {best['num_heads']}, {best['units']}, "
                    f"{best['hidden_size']}>",
            'errors': [round(r['error'], 4) for r in results['candidates']],
            'cache_mb': results['teacher_cache'].get('disk_mb')}


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--num_layers', type=int, nargs='*', default=[1, 2, 3])
    parser.add_argument('--units', type=int, nargs='*', default=[128, 256])
    parser.add_argument('--cores', type=int, default=os.cpu_count() or 2)
    parser.add_argument('--out', default=os.path.join(REPO, 'runs', 'bench_search'))
    args = parser.parse_args(argv)
    plans = [(1, True), (1, False)]
    if horovodrun():
        plans += [(2, True), (2, False)]
    else:
        print('horovodrun not found: 2-worker runs skipped')
    rows = []
    for workers, cache in plans:
        out = os.path.join(args.out, f'np{workers}_{"cache" if cache else "nocache"}')
        rows.append(run(out, workers, cache, args))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]['wall_s']
    load = os.getloadavg()
    print(f'\n{rows[0]["candidates"]} candidates × {args.steps} steps, MiniLM teacher, '
          f'{args.cores} cores; teacher cache {rows[0]["cache_mb"]:.1f} MB on disk; load '
          f'average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)\n')
    print('| workers × threads | teacher cache | wall (s) | search (s) | vs 1 worker cached | '
          'teacher passes | best |')
    print('|---|---|---:|---:|---:|---:|---|')
    for r in rows:
        print(f"| {r['workers']} × {r['threads']} | {'yes' if r['cache'] else 'no'} | "
              f"{r['wall_s']:.1f} | {r['search_s']:.1f} | {base / r['wall_s']:.2f}× | "
              f"{r['teacher_calls']} | {r['best']} |")
    return rows


if __name__ == '__main__':
    main()
