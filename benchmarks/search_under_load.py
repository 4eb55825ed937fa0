"""Benchmark (not a test): does a finished search's ranking survive another process loading the CPU?

Copies a finished search folder's trained candidates and teacher cache (e does not depend on
load: each candidate is seeded by its tuple) into a fresh folder, starts ``--busy`` processes
that spin on the cores, and runs the same search there: every latency is measured again under
load (no costs.json is copied). Prints the top of both rankings, the latency ratios to the
teacher before and under load, and whether the top ``--top`` are unchanged::

    PYTHONPATH=. python benchmarks/search_under_load.py runs/search --out runs/search_loaded
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
KEYS = ('num_layers', 'num_heads', 'units', 'hidden_size')


def _tuple(r):
    return tuple(r[k] for k in KEYS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('search', help='a finished search folder')
    parser.add_argument('--out', required=True)
    parser.add_argument('--busy', type=int, default=2, help='spinning processes')
    parser.add_argument('--top', type=int, default=3)
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    for name in ('candidates', 'teacher_cache'):
        shutil.copytree(os.path.join(args.search, name), os.path.join(args.out, name))
    with open(os.path.join(args.search, 'config.json')) as f:
        config = json.load(f)
    config = {k: v for k, v in config.items() if k not in ('fingerprint', 'run_fingerprint')}
    config.update(out=args.out, progress=False)
    path = os.path.join(args.out, 'loaded.json')
    with open(path, 'w') as f:
        json.dump(config, f)
    busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
            for _ in range(args.busy)]
    start = time.time()
    try:
        time.sleep(2)
        load = os.getloadavg()[0]
        done = subprocess.run([sys.executable, os.path.join(REPO, 'run_search.py'), '--config',
                               path], cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    runs = {}
    for name, folder in (('quiet', args.search), ('loaded', args.out)):
        with open(os.path.join(folder, 'results.json')) as f:
            runs[name] = json.load(f)
    quiet = {_tuple(r): r for r in runs['quiet']['candidates']}
    print(f'load average during the loaded run: {load:.1f} ({args.busy} spinning processes); '
          f'wall {time.time() - start:.0f} s')
    print('| rank | quiet: <D, A, H, I> | W | i/i(T) | loaded: <D, A, H, I> | W | i/i(T) |')
    print('|---:|---|---:|---:|---|---:|---:|')
    t_q = runs['quiet']['teacher']['inference_cost']
    t_l = runs['loaded']['teacher']['inference_cost']
    for n, (a, b) in enumerate(zip(runs['quiet']['candidates'], runs['loaded']['candidates']), 1):
        print(f"| {n} | <{', '.join(map(str, _tuple(a)))}> | {a['w']:.4f} | "
              f"{a['inference_cost'] / t_q:.3f} | <{', '.join(map(str, _tuple(b)))}> | "
              f"{b['w']:.4f} | {b['inference_cost'] / t_l:.3f} |")
    top_q = [_tuple(r) for r in runs['quiet']['candidates'][:args.top]]
    top_l = [_tuple(r) for r in runs['loaded']['candidates'][:args.top]]
    ratios = [abs(r['inference_cost'] / t_l / (quiet[_tuple(r)]['inference_cost'] / t_q) - 1)
              for r in runs['loaded']['candidates'] if _tuple(r) in quiet]
    print(f'\ni(T): {1e3 * t_q:.2f} ms quiet, {1e3 * t_l:.2f} ms loaded; ratios to T moved '
          f'by {100 * max(ratios):.1f} % at most (median {100 * sorted(ratios)[len(ratios) // 2]:.1f} %)')
    print(f'top {args.top} unchanged: {top_q == top_l}')


if __name__ == '__main__':
    main()
