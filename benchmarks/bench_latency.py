"""Measured inference cost of the named architectures, next to their FLOP ratios (not a test).

The foundation benchmark (SPEC section 2, the paper's Table 1 column "inference time"): the plain
hybridized GluonNLP model (:class:`bort.model.BortModel`, random weights, no MLM head) of
``bort_4_8_768_1024`` (released Bort), ``bort_paper`` (the paper's naming), ``bert_base`` and
``roberta_large`` at batch 1 and sequence 128 and 512, one process, the models' repeats
interleaved. Printed: median seconds per sample with p10-p90, the time ratio of every model to the
first, and the FLOP ratio (:func:`bort.costs.flops`) next to it, plus the paper's figures.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_latency.py [--quick] [--fast [--dtype bfloat16]]

``--dtype bfloat16`` times the fast path with bfloat16 dense layers; it needs a CPU with
AVX512-BF16 or AMX (:mod:`bort.hardware`) and is refused in one line elsewhere.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bort.threads import configure_threads  # noqa: E402

configure_threads(inference=True)  # OMP_WAIT_POLICY=ACTIVE unless set; before MXNet

import mxnet as mx  # noqa: E402

from bort.arch import get_arch  # noqa: E402
from bort.costs import flops, num_parameters  # noqa: E402
from bort.hardware import UnsupportedHardware, announce, require_bf16  # noqa: E402
from bort.inference.fast import FastModel  # noqa: E402
from bort.inference.latency import compare_latency, device_string, thread_info  # noqa: E402
from bort.model import build_model  # noqa: E402

#: The paper's Table 1 CPU seconds per sample (its setting, not this machine's).
PAPER_SECONDS = {'bort_paper': 0.308, 'bert_base': 2.416, 'roberta_large': 6.170}
DEFAULT_ARCHS = ('bort_4_8_768_1024', 'bort_paper', 'bert_base', 'roberta_large')


def build(name: str, fast: bool, dtype: str = 'float32'):
    mx.random.seed(0)
    model = build_model(get_arch(name).replace(dropout=0.0), use_decoder=False)
    if fast:
        return FastModel.from_model(model, dtype=dtype)
    model.hybridize(static_alloc=True, static_shape=True)
    return model


def run(names: List[str], seq_lens: List[int], batch: int, warmup: int, repeats: int,
        fast: bool, clock: str = 'wall', dtype: str = 'float32') -> List[Dict]:
    models = {name: build(name, fast, dtype) for name in names}
    rows = []
    for seq in seq_lens:
        logging.info('batch %d seq %d: %s', batch, seq, ', '.join(names))
        results = compare_latency(models, batch, seq, warmup=warmup, repeats=repeats,
                                  clock=clock)
        base = names[0]
        for name, result in results.items():
            arch = get_arch(name)
            rows.append({
                'arch': name, 'tuple': arch.tuple, 'params_m': num_parameters(arch) / 1e6,
                'batch': batch, 'seq': seq, 'per_sample_s': result.per_sample,
                'p10_s': result.p10 / batch, 'p90_s': result.p90 / batch,
                'time_ratio': result.median / results[base].median,
                'flop_ratio': flops(arch, seq, batch) / flops(get_arch(base), seq, batch),
                'paper_s': PAPER_SECONDS.get(name), 'samples_s': result.samples,
                'threads': result.threads, 'device': result.device})
    return rows


def format_table(rows: List[Dict], base: str) -> str:
    lines = [f'| arch | <D, A, H, I> | params (M) | seq | s/sample | p10-p90 | time / {base} | '
             f'FLOPs / {base} | paper s/sample |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        paper = '' if r['paper_s'] is None else f"{r['paper_s']:.3f}"
        lines.append(f"| {r['arch']} | <{', '.join(map(str, r['tuple']))}> | "
                     f"{r['params_m']:.1f} | {r['seq']} | {r['per_sample_s']:.4f} | "
                     f"{r['p10_s']:.4f}-{r['p90_s']:.4f} | {r['time_ratio']:.2f} | "
                     f"{r['flop_ratio']:.2f} | {paper} |")
    return '\n'.join(lines)


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', nargs='+', default=list(DEFAULT_ARCHS))
    parser.add_argument('--seq-lens', nargs='+', type=int, default=[128, 512])
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--quick', action='store_true', help='3 repeats, 1 warm-up')
    parser.add_argument('--clock', default='wall', choices=('wall', 'process'),
                        help='process: CPU time of this process, robust to other load when '
                             'run with OMP_NUM_THREADS=1 (bort.inference.latency)')
    parser.add_argument('--fast', action='store_true',
                        help='time the fast path (bort.inference.fast) instead of the plain model')
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                        help='with --fast: the dense layers\' compute type (bfloat16: CPUs with '
                             'AVX512-BF16 or AMX)')
    parser.add_argument('--json', default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    announce()
    if args.dtype == 'bfloat16':
        try:
            if not args.fast:
                raise UnsupportedHardware('--dtype bfloat16 needs --fast (the plain model is '
                                          'float32)')
            require_bf16('--dtype bfloat16')
        except UnsupportedHardware as err:
            parser.exit(2, f'bench_latency.py: error: {err}\n')
    if min(args.repeats, args.warmup + 1, args.batch_size, *args.seq_lens) < 1:
        parser.exit(2, 'bench_latency.py: error: --repeats, --batch-size and --seq-lens must be '
                       'positive, --warmup not negative\n')
    if args.quick:
        args.repeats, args.warmup = 3, 1
    rows = run(args.archs, args.seq_lens, args.batch_size, args.warmup, args.repeats, args.fast,
               args.clock, args.dtype)
    print(f'{"fast path, " + args.dtype if args.fast else "plain hybridized GluonNLP model"}; '
          f'device: {device_string()}; OMP_NUM_THREADS={thread_info()["OMP_NUM_THREADS"]}; '
          f'{args.clock} clock; batch {args.batch_size}; {args.repeats} interleaved repeats '
          f'after {args.warmup} '
          f'warm-up; load average {os.getloadavg()}\n')
    print(format_table(rows, args.archs[0]))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
