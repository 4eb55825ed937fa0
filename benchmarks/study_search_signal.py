"""Study (not a test): which search settings make the surrogate error e a signal.

For each setting, one search on the default teacher and grid (``--cost flops``: the costs do
not change e, and timing would only add noise to the wall time) with the trust checks on: the
top candidates retrained with more seeds (the seed noise σ of e) and a subset trained k times
longer (Kendall τ of the short-run against the long-run e). Prints one Markdown row per
setting: the spread of e across candidates over σ, τ (e) with its p-value, τ (W), how far the
best candidate is below the unigram baseline, what decides rank 1, and the wall time of the
search proper and of the whole run, with the load average at the start::

    PYTHONPATH=. python benchmarks/study_search_signal.py --out runs/study \\
        --setting sgd40 steps=40 --setting adam40 optimizer=adam lr=0.001 steps=40

Each ``--setting NAME key=value ...`` overrides SearchConfig fields (JSON values or plain
strings). Runs are separate processes, in fresh folders under ``--out/NAME`` (an existing
folder is resumed, so an interrupted study continues); the default teacher is built once in
the cache beforehand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_setting(items):
    name, values = items[0], {}
    for item in items[1:]:
        key, _, text = item.partition('=')
        try:
            values[key] = json.loads(text)
        except ValueError:
            values[key] = text
    return name, values


def run(name: str, values: dict, args) -> dict:
    out = os.path.join(args.out, name)
    os.makedirs(out, exist_ok=True)
    config = {'out': out, 'cost': 'flops', 'progress': False, 'reference': [],
              'noise_seeds': 2, 'noise_candidates': 3, 'fidelity_factor': args.k,
              'fidelity_candidates': 6, 'epsilon': args.epsilon}
    config.update(values)
    path = os.path.join(args.out, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(config, f)
    load = os.getloadavg()[0]
    start = time.time()
    done = subprocess.run([sys.executable, os.path.join(REPO, 'run_search.py'), '--config',
                           path], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
    wall = time.time() - start
    if done.returncode:
        return {'name': name, 'error': done.stderr.strip().splitlines()[-1:]}
    with open(os.path.join(out, 'results.json')) as f:
        results = json.load(f)
    trust = results['trust']
    judged, fid = trust['verdict'], trust['fidelity']
    cands = results['candidates']
    short_s = sum(c['train_seconds'] for c in cands)
    entropy = results['teacher'].get('heldout_entropy') or 0.0
    # e as KL (cross-entropy minus the teacher's entropy): the same order of e, another W.
    from bort.search.trust import ranking_sources  # pylint: disable=import-outside-toplevel
    kl = [dict(c, error=c['error'] - entropy,
               w=c['w'] * c['error'] / max(c['error'] - entropy, 1e-9)) for c in cands]
    kl.sort(key=lambda c: -c['w'])
    kl_sources = ranking_sources(kl, results['teacher'])
    return {'name': name, 'values': values, 'sigma': trust['noise']['sigma'],
            'spread': judged['error_spread'], 'ratio': judged['spread_over_noise'],
            'tau_e': fid.get('tau_error'), 'p_e': fid.get('p_error'), 'tau_w': fid.get('tau_w'),
            'best': cands[0], 'unigram': results['baseline']['unigram'],
            'decided_by': judged['decided_by'],
            'tau_w_inv_e': judged['sources'].get('tau_w_inverse_error'),
            'tau_w_costs': judged['sources'].get('tau_w_costs'),
            'kl_tau_w_inv_e': kl_sources.get('tau_w_inverse_error'),
            'kl_best': kl[0], 'short_train_s': short_s, 'wall_s': wall,
            'search_wall_s': results['run']['wall_seconds'], 'load': load,
            'e_range': [min(c['error'] for c in cands), max(c['error'] for c in cands)]}


def fmt(x, spec='.2f'):
    return '—' if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='runs/study')
    parser.add_argument('--k', type=int, default=4, help='fidelity factor')
    parser.add_argument('--epsilon', type=int, default=8)
    parser.add_argument('--setting', nargs='+', action='append', required=True)
    args = parser.parse_args(argv)
    rows = []
    for items in args.setting:
        name, values = parse_setting(items)
        row = run(name, values, args)
        rows.append(row)
        with open(os.path.join(args.out, 'study.jsonl'), 'a') as f:
            f.write(json.dumps(row, default=str) + '\n')
        sys.stderr.write(json.dumps(row, default=str)[:400] + '\n')
    print('| setting | e range | σ | spread/σ | τ(e, 4×) [p] | τ(W, 4×) | unigram − best e | '
          'rank 1 | decided by | τ(W,1/e) / τ(W,cost) | τ(W,1/e) KL | s-step training s | '
          'wall s (load) |')
    print('|---|---|---:|---:|---|---:|---:|---|---|---|---:|---:|---|')
    for r in rows:
        if 'error' in r:
            print(f"| {r['name']} | failed: {r['error']} |")
            continue
        b = r['best']
        print(f"| {r['name']} | {r['e_range'][0]:.3f}–{r['e_range'][1]:.3f} | "
              f"{fmt(r['sigma'], '.4f')} | {fmt(r['ratio'], '.1f')} | {fmt(r['tau_e'])} "
              f"[{fmt(r['p_e'], '.2g')}] | {fmt(r['tau_w'])} | {r['unigram'] - b['error']:+.3f} | "
              f"<{b['num_layers']}, {b['num_heads']}, {b['units']}, {b['hidden_size']}> | "
              f"{r['decided_by']} | {fmt(r['tau_w_inv_e'])} / {fmt(r['tau_w_costs'])} | "
              f"{fmt(r['kl_tau_w_inv_e'])} | {r['short_train_s']:.0f} | "
              f"{r['wall_s']:.0f} ({r['load']:.1f}) |")


if __name__ == '__main__':
    main()
