"""When does each of the default search's nine students leave the most-frequent-token rate?

Pretrains every tuple the default search trains (ε = 8 over the ``default`` grid around the
MiniLM teacher <6, 12, 384, 1536>) for a few hundred steps, from scratch and extracted from the
teacher (``--init teacher``), with the pretraining defaults unless ``--set`` overrides them, and
prints one table: the first held-out evaluation whose top-1 accuracy is above the
most-frequent-token rate by more than two standard errors of a proportion, and the final top-1
and cross-entropy. Every run's folder (metrics.jsonl, curves) stays under ``--out``.

Run::

    python -m bort.pretrain.prepare CORPUS.txt --tokenizer minilm --output data64 \\
        --max_seq_length 64 --eval_fraction 0.02
    python benchmarks/study_students_learn.py --data data64 --out runs/study_students \\
        --steps 150 --set lr=1e-3

A run already finished in ``--out`` is read back, not repeated.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bort.threads import configure_threads  # noqa: E402  (as run_pretraining.py, before MXNet)

configure_threads()

# The nine tuples of the default search (ε = 8; README, run_search.py).
DEFAULT_CANDIDATES = ((1, 4, 128, 256), (5, 4, 128, 256), (5, 4, 128, 1536), (3, 4, 256, 512),
                      (6, 4, 256, 512), (2, 12, 384, 256), (3, 4, 384, 512), (5, 4, 384, 256),
                      (6, 4, 384, 512))


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', required=True, help='a folder from bort.pretrain.prepare')
    parser.add_argument('--out', required=True, help='folder of the study (one run each)')
    parser.add_argument('--teacher', default='minilm', help='teacher (distillation and '
                        'extraction): minilm, a project or Hugging Face model folder; "" for none')
    parser.add_argument('--steps', type=int, default=150, help='optimizer steps per run')
    parser.add_argument('--eval_interval', type=int, default=25, help='steps between '
                        'held-out evaluations')
    parser.add_argument('--eval_batches', type=int, default=8, help='held-out batches')
    parser.add_argument('--inits', default='scratch,teacher', help='comma-separated --init '
                        'values to compare')
    parser.add_argument('--only', default='', help='comma-separated D-A-H-I tuples (default: '
                        'the nine)')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                        help='pretraining settings other than the defaults (JSON values)')
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_interval < 1 or args.eval_batches < 1:
        parser.error('--steps, --eval_interval and --eval_batches must be at least 1')
    return args


def _first_departure(evaluations, rate):
    """(step, accuracy) of the first evaluation above ``rate`` by > 2 standard errors."""
    for record in evaluations:
        count = record.get('eval_masked', 0) or 1
        error = math.sqrt(rate * (1 - rate) / count)
        if record['eval_mlm_acc'] > rate + 2 * error:
            return record['step'], record['eval_mlm_acc']
    return None, None


def main(argv=None):
    args = _parse(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(message)s')
    from bort.pretrain.config import PretrainConfig
    from bort.pretrain.default_teacher import resolve_model_dir
    from bort.pretrain.evaluate import most_frequent_rate
    from bort.pretrain.loop import pretrain
    from bort.pretrain.masking import masking_for
    from bort.pretrain.shards import read_meta
    from bort.pretrain.stream import fixed_batches, list_shards

    teacher = resolve_model_dir(args.teacher, what='teacher') if args.teacher else ''
    overrides = {}
    for item in args.set:
        key, _, value = item.partition('=')
        try:
            overrides[key] = json.loads(value)
        except ValueError:  # a bare string such as adamw
            overrides[key] = value
    candidates = DEFAULT_CANDIDATES if not args.only else tuple(
        tuple(int(v) for v in t.split('-')) for t in args.only.split(','))
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for init in args.inits.split(','):
        for shape in candidates:
            d, a, h, i = shape
            name = f'{init}-{d}-{a}-{h}-{i}'
            folder = os.path.join(args.out, name)
            config = PretrainConfig(data=args.data, output_dir=folder, teacher=teacher,
                                    arch=json.dumps(dict(num_layers=d, num_heads=a, units=h,
                                                         hidden_size=i)),
                                    init=init, total_steps=args.steps,
                                    eval_interval=args.eval_interval,
                                    eval_batches=args.eval_batches,
                                    checkpoint_interval=args.steps, plot=False)
            config = dataclasses.replace(config, **overrides)
            metrics = os.path.join(folder, 'metrics.jsonl')
            started = time.time()
            if not os.path.isfile(os.path.join(folder, 'model', 'arch.json')):
                pretrain(config)
            wall = time.time() - started
            records = [json.loads(line) for line in open(metrics, encoding='utf-8')]
            evaluations = [r for r in records if 'eval_mlm_acc' in r and not r.get('final')]
            rows.append((init, shape, evaluations, wall))
    meta = read_meta(args.data)
    masking = masking_for(meta, 0.15, 76)
    eval_set = fixed_batches(list_shards(args.data, 'eval'), overrides.get('batch_size', 32),
                             masking, args.eval_batches, pad_id=meta['pad_id'])
    rate = most_frequent_rate(eval_set)
    lines = [f'most-frequent-token rate {rate:.4f}; leaves it = above by > 2 standard errors',
             '| init | <D, A, H, I> | leaves at step (top-1) | top-1 at end | CE at end | '
             'wall s |', '|---|---|---|---|---|---:|']
    for init, shape, evaluations, wall in rows:
        step, acc = _first_departure(evaluations, rate)
        last = evaluations[-1]
        left = f'{step} ({100 * acc:.1f} %)' if step else f'not by {last["step"]}'
        lines.append(f'| {init} | <{", ".join(map(str, shape))}> | {left} | '
                     f'{100 * last["eval_mlm_acc"]:.1f} % | {last["eval_mlm_loss"]:.3f} | '
                     f'{wall:.0f} |')
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'table.md'), 'w', encoding='utf-8') as f:
        f.write(text + '\n')
    sys.stdout.write(text + '\n')


if __name__ == '__main__':
    main()
