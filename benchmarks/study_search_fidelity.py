"""Fidelity of the search's surrogate error against real pretraining.

The search ranks candidates by e, the held-out error after s optimizer steps. Does that order
hold after a real pretraining run? This study takes finished searches (one per proxy, e.g.
``--init scratch`` and ``--init teacher``), picks candidates every search trained, pretrains each
with ``run_pretraining.py``'s defaults for ``--steps`` steps (from scratch and, with
``--inits scratch,teacher``, extracted from the teacher), and prints Kendall τ between each
proxy's e and each pretraining's held-out masked-LM top-1 (and cross-entropy), with p-values.

``--error kl`` is the cross-entropy minus the teacher's entropy on the same held-out positions, a
constant of the search: its order, and so its fidelity, is the cross-entropy's by construction.
The two differ only in the trade-off W makes with the costs.

Run::

    python run_search.py --out runs/search_scratch
    python run_search.py --out runs/search_teacher --init teacher
    python -m bort.pretrain.prepare CORPUS.txt --tokenizer minilm --output data64 \\
        --max_seq_length 64 --eval_fraction 0.02
    python benchmarks/study_search_fidelity.py --data data64 --out runs/fidelity \\
        --search scratch=runs/search_scratch --search teacher=runs/search_teacher

Candidates (unless ``--only``): of the tuples every search trained, ``--candidates`` evenly spaced
in parameter count, smallest and largest included: the choice does not look at e. A run already
finished under ``--out`` is read back, not repeated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bort.threads import configure_threads  # noqa: E402  (as run_pretraining.py, before MXNet)

configure_threads()


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='a folder from bort.pretrain.prepare')
    parser.add_argument('--out', required=True, help='folder of the study (one run each)')
    parser.add_argument('--search', action='append', default=[], metavar='NAME=FOLDER',
                        help='a finished search and the name of its proxy (repeatable)')
    parser.add_argument('--teacher', default='minilm', help='teacher of distillation and '
                        'extraction: minilm, a project or Hugging Face model folder')
    parser.add_argument('--steps', type=int, default=1000, help='pretraining steps per run')
    parser.add_argument('--eval_batches', type=int, default=16, help='held-out batches of the '
                        'final evaluation (32 sequences each)')
    parser.add_argument('--inits', default='scratch', help='comma-separated --init values of '
                        'the real pretraining runs')
    parser.add_argument('--candidates', type=int, default=5, help='how many tuples (at least 4)')
    parser.add_argument('--only', default='', help='comma-separated D-A-H-I tuples instead')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                        help='pretraining settings other than the defaults (JSON values)')
    args = parser.parse_args(argv)
    if not args.search:
        parser.error('give at least one --search NAME=FOLDER')
    for item in args.search:
        name, _, folder = item.partition('=')
        if not name or not os.path.isdir(os.path.join(folder, 'candidates')):
            parser.error(f'--search {item}: expected NAME=FOLDER of a finished search '
                         '(with a candidates/ folder)')
    if args.steps < 1 or args.eval_batches < 1 or args.candidates < 2:
        parser.error('--steps and --eval_batches must be at least 1, --candidates at least 2')
    return args


def read_search(folder):
    """{(D, A, H, I): record} of a search's trained candidates (first seed, s steps)."""
    found = {}
    for name in sorted(os.listdir(os.path.join(folder, 'candidates'))):
        if not name.endswith('.json'):
            continue
        with open(os.path.join(folder, 'candidates', name), encoding='utf-8') as f:
            record = json.load(f)
        if 'cross_entropy' not in record:
            continue
        shape = tuple(int(record[k]) for k in ('num_layers', 'num_heads', 'units',
                                                'hidden_size'))
        found[shape] = record
    return found


def choose(shapes, params, count):
    """``count`` of ``shapes`` evenly spaced in parameter count (ends included)."""
    ordered = sorted(shapes, key=lambda s: (params[s], s))
    if count >= len(ordered):
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)})
    return [ordered[i] for i in picks]


def main(argv=None):
    args = _parse(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(message)s')
    from bort.pretrain.config import PretrainConfig
    from bort.pretrain.default_teacher import resolve_model_dir
    from bort.pretrain.loop import pretrain
    from bort.search.trust import kendall_tau

    searches = {}
    for item in args.search:
        name, _, folder = item.partition('=')
        searches[name] = read_search(folder)
    common = set.intersection(*(set(found) for found in searches.values()))
    first = next(iter(searches.values()))
    if args.only:
        shapes = [tuple(int(v) for v in t.split('-')) for t in args.only.split(',')]
        missing = [s for s in shapes if s not in common]
        if missing:
            sys.exit(f'study_search_fidelity.py: error: --only {missing} not trained by every '
                     'search')
    else:
        shapes = choose(common, {s: first[s]['params'] for s in common}, args.candidates)
    teacher = resolve_model_dir(args.teacher, what='teacher')
    overrides = {}
    for item in args.set:
        key, _, value = item.partition('=')
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    os.makedirs(args.out, exist_ok=True)
    outcomes = {}
    for init in args.inits.split(','):
        for shape in shapes:
            d, a, h, i = shape
            folder = os.path.join(args.out, f'{init}-{d}-{a}-{h}-{i}')
            config = PretrainConfig(data=args.data, output_dir=folder, teacher=teacher,
                                    arch=json.dumps(dict(num_layers=d, num_heads=a, units=h,
                                                         hidden_size=i)),
                                    init=init, total_steps=args.steps,
                                    eval_interval=max(1, args.steps // 4),
                                    eval_batches=args.eval_batches,
                                    checkpoint_interval=max(1, args.steps // 4), plot=False)
            config = dataclasses.replace(config, **overrides)
            if not os.path.isfile(os.path.join(folder, 'model', 'arch.json')):
                pretrain(config)
            with open(os.path.join(folder, 'metrics.jsonl'), encoding='utf-8') as f:
                records = [json.loads(line) for line in f]
            evaluations = [r for r in records if 'eval_mlm_acc' in r]
            last = evaluations[-1]
            outcomes[init, shape] = dict(top1=last['eval_mlm_acc'], ce=last['eval_mlm_loss'],
                                         step=last['step'])

    inits = args.inits.split(',')
    lines = [f'{len(shapes)} candidates, real pretraining {args.steps} steps with the '
             'defaults; e = the search\'s held-out error after s steps (lower is better)', '',
             '| <D, A, H, I> | params | ' + ' | '.join(f'e ({n})' for n in searches) + ' | '
             + ' | '.join(f'top-1 / CE ({init}, {args.steps} steps)' for init in inits) + ' |',
             '|---|---:|' + '---:|' * (len(searches) + len(inits))]
    for shape in shapes:
        cells = [f'<{", ".join(map(str, shape))}>', f'{first[shape]["params"] / 1e6:.2f} M']
        cells += [f'{found[shape]["cross_entropy"]:.4f}' for found in searches.values()]
        cells += [f'{100 * outcomes[init, shape]["top1"]:.1f} % / '
                  f'{outcomes[init, shape]["ce"]:.3f}' for init in inits]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '| proxy | pretraining | τ (e, −top-1) | p | τ (e, CE) | p |',
              '|---|---|---:|---:|---:|---:|']
    summary = []
    for name, found in searches.items():
        e = [found[s]['cross_entropy'] for s in shapes]
        for init in inits:
            top1 = [-outcomes[init, s]['top1'] for s in shapes]
            ce = [outcomes[init, s]['ce'] for s in shapes]
            tau_acc, p_acc = kendall_tau(e, top1)
            tau_ce, p_ce = kendall_tau(e, ce)
            summary.append(dict(proxy=name, pretraining=init, tau_top1=tau_acc, p_top1=p_acc,
                                tau_ce=tau_ce, p_ce=p_ce))
            lines.append(f'| {name} | {init} | {tau_acc:+.2f} | {p_acc:.3f} | {tau_ce:+.2f} | '
                         f'{p_ce:.3f} |')
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'table.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    with open(os.path.join(args.out, 'fidelity.json'), 'w', encoding='utf-8') as f:
        json.dump(dict(shapes=shapes, searches={n: {'-'.join(map(str, s)): found[s]
                                                     ['cross_entropy'] for s in shapes}
                                                 for n, found in searches.items()},
                       outcomes={f'{i}-' + '-'.join(map(str, s)): v
                                 for (i, s), v in outcomes.items()},
                       fidelity=summary, args=vars(args)), f, indent=2)
    sys.stdout.write(text + '\n')


if __name__ == '__main__':
    main()
