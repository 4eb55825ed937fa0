"""Inference speed on CPU: plain MXNet, the fast path, INT8 and PyTorch, side by side (not a test).

For each architecture (default: the released Bort shape and BERT-base, random weights) and input
shape (default: batch 1 x seq 128, batch 1 x seq 512, batch 32 x seq 128), in one process:

- ``plain``: GluonNLP ``BERTModel`` (:class:`bort.model.BortModel`) hybridized with static memory;
- ``fast``: :class:`bort.inference.fast.FastModel` (masked softmax replaced, oneDNN fusion); every row
  is full length, so it runs its unpadded graph, as torch skips an all-ones mask;
- ``fast-masked``: the same engine's padded graph (additive mask, output masking) on the same
  full-length rows: what a batch with padding costs;
- ``fast-unpadded``: the fast path without zero channels appended to 1024-wide dense-layer
  inputs (``pad_inputs=False``): what that padding gains;
- ``int8``: :class:`bort.inference.quantized.QuantizedModel` (oneDNN INT8, channel-wise, naive calibration;
  random weights, so it is calibrated on random tokens: this measures speed only, see
  ``benchmarks/int8_accuracy.py`` for accuracy on a real task);
- ``torch``: a transformers ``BertModel`` with the same weights, obtained through the interop
  export (:func:`bort.interop.convert.export_hf`) and checked against the MXNet outputs;
- ``fast-bf16``: the fast path with bfloat16 dense layers (``dtype='bfloat16'``), only where
  :func:`bort.hardware.cpu_support` finds bfloat16 kernels (AVX512-BF16 or AMX);
- ``torch-bf16``: the same ``BertModel`` under ``torch.autocast('cpu', dtype=torch.bfloat16)``,
  only where the CPU has bfloat16 instructions. Elsewhere both print "not measured: CPU lacks
  bf16" with the reason.

For each shape, every engine of every architecture runs interleaved with the others (one call
of each per round, ``--repeats`` rounds), together with a float32 GEMM probe (2048^3
FullyConnected), so that load from other processes hits them all alike and the Bort vs BERT-base
ratio compares like with like. Printed as markdown: medians, p10-p90 spreads, speed-ups over
torch and over the fast path, FLOPs (:func:`bort.costs.flops`), achieved GFLOP/s against the
quiet-machine GEMM peak (:func:`bort.inference.latency.matmul_peak_gflops`, best of 10, before and after)
and against the probe's median in the same rounds, and the Bort vs BERT-base speed-up next to
their FLOP ratio. INT8 rows above 100 % are expected: the peak is a float32 one.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_inference.py [--quick] [--json out.json]

OpenMP threads spin between regions (``OMP_WAIT_POLICY=ACTIVE``) unless the variable is set;
the policy is printed with the other thread settings.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bort.threads import configure_threads  # noqa: E402

configure_threads(inference=True)  # OMP_WAIT_POLICY=ACTIVE unless set; before MXNet and torch

import mxnet as mx  # noqa: E402

from bort.arch import get_arch  # noqa: E402
from bort.costs import flops  # noqa: E402
from bort.hardware import announce  # noqa: E402
from bort.inference.fast import FastModel  # noqa: E402
from bort.inference.latency import (compare_latency, device_string, matmul_peak_gflops, set_threads,
                                    thread_info)
from bort.model import build_model, save_model  # noqa: E402
from bort.inference.quantize import QuantizeConfig, quantize_encoder  # noqa: E402

ENGINES = ('plain', 'fast', 'fast-masked', 'fast-unpadded', 'int8', 'torch', 'fast-bf16',
           'torch-bf16')


def torch_model(model, threads: int):
    """A transformers BertModel with ``model``'s weights, via the project's HF export."""
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import BertModel  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from bort.interop.convert import export_hf  # pylint: disable=import-outside-toplevel
            save_model(model, os.path.join(tmp, 'mx'))
            export_hf(os.path.join(tmp, 'mx'), os.path.join(tmp, 'hf'))
            tm = BertModel.from_pretrained(os.path.join(tmp, 'hf'),
                                           add_pooling_layer=model.arch.use_pooler)
        except ImportError:  # no interop module: copy by the SPEC's name mapping
            # pylint: disable=import-outside-toplevel
            from bort.interop.hf import config_from_arch, hf_names
            from transformers import BertConfig  # pylint: disable=import-outside-toplevel
            from bort.model import param_dict  # pylint: disable=import-outside-toplevel
            arch = model.arch
            tm = BertModel(BertConfig(**config_from_arch(arch, False)),
                           add_pooling_layer=arch.use_pooler)
            names = hf_names(arch, 'bert')
            state = {names[k][len('bert.'):]: torch.tensor(p.data().asnumpy())
                     for k, p in param_dict(model).items()}
            if not arch.token_type_vocab_size:
                state['embeddings.token_type_embeddings.weight'] = torch.zeros(1, arch.units)
            tm.load_state_dict(state, strict=False)
    return tm.eval()


def torch_runner(tm, tokens: np.ndarray, bf16: bool = False):
    """One forward pass of ``tm`` on ``tokens`` (B, L); ``bf16``: under CPU autocast."""
    import torch  # pylint: disable=import-outside-toplevel
    ids = torch.tensor(tokens, dtype=torch.long)
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            return tm(input_ids=ids, attention_mask=mask)
    return run


def supported_engines(engines: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """The engines this CPU can run, and why each other one is not measured."""
    support = announce()
    skipped = {}
    if 'fast-bf16' in engines and not support.bf16_usable:
        skipped['fast-bf16'] = f'not measured: CPU lacks bf16 ({support.reason})'
    if 'torch-bf16' in engines and not support.bf16_hardware:
        skipped['torch-bf16'] = f'not measured: CPU lacks bf16 ({support.reason})'
    return [e for e in engines if e not in skipped], skipped


def check_torch(model, tm, vocab: int) -> float:
    """Max |MXNet - torch| of the sequence outputs on a small batch (weights copied right?)."""
    import torch  # pylint: disable=import-outside-toplevel
    tokens = np.random.RandomState(1).randint(0, vocab, (2, 16))
    # Token types given exactly when the architecture has them, as model_runner does: a
    # hybridized block keeps the argument structure of its first call.
    types = mx.nd.zeros(tokens.shape) if model.arch.token_type_vocab_size else None
    out = model(mx.nd.array(tokens), types, mx.nd.array([16, 16]))
    out = (out[0] if isinstance(out, (list, tuple)) else out).asnumpy()
    with torch.inference_mode():
        ref = tm(input_ids=torch.tensor(tokens)).last_hidden_state.numpy()
    return float(np.abs(out - ref).max())


def build_engines(name: str, engines: List[str], threads: int) -> Dict:
    """Every requested engine of one architecture (random weights, dropout off)."""
    arch = get_arch(name).replace(dropout=0.0)
    mx.random.seed(0)
    model = build_model(arch, use_decoder=False)
    built = {'arch': arch}
    if 'plain' in engines:
        model.hybridize(static_alloc=True, static_shape=True)
        built['plain'] = model
    if {'fast', 'fast-masked'} & set(engines):
        built['fast'] = FastModel.from_model(model)
    if 'fast-bf16' in engines:
        built['fast-bf16'] = FastModel.from_model(model, dtype='bfloat16')
        probe = np.random.RandomState(1).randint(0, arch.vocab_size, (2, 16))
        seq = lambda out: (out[0] if isinstance(out, tuple) else out).asnumpy()  # noqa: E731
        logging.info('%s: max |fast bf16 - fast fp32| = %.2e (sequence outputs)', name,
                     np.abs(seq(built['fast-bf16'](probe))
                            - seq(FastModel.from_model(model)(probe))).max())
    if 'fast-unpadded' in engines:
        built['fast-unpadded'] = FastModel.from_model(model, pad_inputs=False)
    if 'int8' in engines:
        rng = np.random.RandomState(0)
        calib = rng.randint(0, arch.vocab_size, (32, 128))
        built['int8'] = quantize_encoder(model, calib, rng.randint(16, 129, 32),
                                         config=QuantizeConfig(calib_mode='naive'))
    if {'torch', 'torch-bf16'} & set(engines):
        built['torch'] = torch_model(model, threads)
        logging.info('%s: max |mxnet - torch| = %.2e', name,
                     check_torch(model, built['torch'], arch.vocab_size))
    return built


def shape_runs(name: str, built: Dict, engines: List[str], batch: int, seq: int) -> Dict:
    """``arch/engine`` -> model or zero-argument callable, for one input shape."""
    arch = built['arch']
    tokens = np.random.RandomState(0).randint(0, arch.vocab_size, (batch, seq))
    runs = {f'{name}/{e}': built[e] for e in ('plain', 'fast', 'fast-unpadded', 'int8',
                                              'fast-bf16') if e in engines}
    if 'fast-masked' in engines:
        args = [mx.nd.array(tokens)]  # the graph's order: tokens, token types, valid lengths
        if arch.token_type_vocab_size:
            args.append(mx.nd.zeros((batch, seq)))
        args.append(mx.nd.full((batch,), seq))
        runs[f'{name}/fast-masked'] = lambda: built['fast'].masked(*args)  # noqa: E731
    if 'torch' in engines:
        runs[f'{name}/torch'] = torch_runner(built['torch'], tokens)
    if 'torch-bf16' in engines:
        runs[f'{name}/torch-bf16'] = torch_runner(built['torch'], tokens, bf16=True)
    return runs


def gemm_probe(size: int = 2048):
    """One float32 (size x size) x (size x size) FullyConnected: the peak, in the same rounds."""
    data = mx.nd.random.uniform(shape=(size, size))
    weight = mx.nd.random.uniform(shape=(size, size))
    return lambda: mx.nd.FullyConnected(data, weight, num_hidden=size, no_bias=True), \
        2.0 * size ** 3


def bench(names: List[str], shapes: List[Tuple[int, int]], engines: List[str], warmup: int,
          repeats: int, threads: int, clock: str = 'wall') -> List[Dict]:
    """All architectures, engines and the GEMM probe interleaved, one shape at a time."""
    built = {name: build_engines(name, engines, threads) for name in names}
    probe, probe_ops = gemm_probe()
    rows = []
    for batch, seq in shapes:
        runs = {}
        for name in names:
            runs.update(shape_runs(name, built[name], engines, batch, seq))
        runs['gemm-peak'] = probe
        logging.info('batch %d seq %d: %d candidates interleaved', batch, seq, len(runs))
        results = compare_latency(runs, batch, seq, warmup=warmup, repeats=repeats, clock=clock)
        same_round_peak = probe_ops / results.pop('gemm-peak').median / 1e9
        logging.info('  medians (ms): %s; GEMM %.0f GFLOP/s',
                     {k: round(1e3 * v.median, 1) for k, v in results.items()}, same_round_peak)
        for key, result in results.items():
            name, engine = key.split('/')
            ops = flops(built[name]['arch'], seq_len=seq, batch_size=batch)
            rows.append({'arch': name, 'batch': batch, 'seq': seq, 'engine': engine,
                         'median_ms': 1e3 * result.median, 'p10_ms': 1e3 * result.p10,
                         'p90_ms': 1e3 * result.p90, 'min_ms': 1e3 * min(result.samples),
                         'samples_ms': [1e3 * v for v in result.samples], 'gflop': ops / 1e9,
                         'gflops_per_s': ops / result.median / 1e9,
                         'gemm_gflops_same_rounds': same_round_peak})
    return rows


def format_table(rows: List[Dict], peak: float) -> str:
    """One row per (arch, shape, engine); % of peak against the quiet-machine peak and against
    the GEMM probe's median in the same rounds (what the machine gave while we measured)."""
    lines = ['| arch | batch x seq | engine | median ms | p10-p90 ms | speed-up vs torch | '
             'vs torch-bf16 | vs fast | GFLOP | GFLOP/s | % of peak | % of same-round GEMM |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    index = {(r['arch'], r['batch'], r['seq'], r['engine']): r for r in rows}
    for r in rows:
        key = (r['arch'], r['batch'], r['seq'])
        torch = index.get(key + ('torch',))
        fast = index.get(key + ('fast',))
        torch16 = index.get(key + ('torch-bf16',))
        vs_torch = f"{torch['median_ms'] / r['median_ms']:.2f}x" if torch else ''
        vs_torch16 = f"{torch16['median_ms'] / r['median_ms']:.2f}x" if torch16 else ''
        vs_fast = f"{fast['median_ms'] / r['median_ms']:.2f}x" if fast else ''
        lines.append(f"| {r['arch']} | {r['batch']} x {r['seq']} | {r['engine']} | "
                     f"{r['median_ms']:.1f} | {r['p10_ms']:.1f}-{r['p90_ms']:.1f} | {vs_torch} | "
                     f"{vs_torch16} | "
                     f"{vs_fast} | {r['gflop']:.1f} | {r['gflops_per_s']:.0f} | "
                     f"{100 * r['gflops_per_s'] / peak:.0f} % | "
                     f"{100 * r['gflops_per_s'] / r['gemm_gflops_same_rounds']:.0f} % |")
    return '\n'.join(lines)


def format_arch_ratios(rows: List[Dict], small: str, large: str) -> str:
    """Speed-up of ``small`` over ``large`` per engine and shape, next to their FLOP ratio."""
    index = {(r['arch'], r['batch'], r['seq'], r['engine']): r for r in rows}
    lines = [f'| batch x seq | engine | {large} / {small} time | FLOP ratio |', '|---|---|---|---|']
    for (arch, batch, seq, engine), r in index.items():
        other = index.get((large, batch, seq, engine))
        if arch != small or other is None:
            continue
        lines.append(f"| {batch} x {seq} | {engine} | {other['median_ms'] / r['median_ms']:.2f} | "
                     f"{other['gflop'] / r['gflop']:.2f} |")
    return '\n'.join(lines)


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', nargs='+', default=['bort_4_8_768_1024', 'bert_base'])
    parser.add_argument('--shapes', nargs='+', default=['1x128', '1x512', '32x128'],
                        help='batch x sequence length')
    parser.add_argument('--engines', nargs='+', default=list(ENGINES), choices=ENGINES)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='3 repeats, 1 warm-up')
    parser.add_argument('--clock', default='wall', choices=('wall', 'process'),
                        help='process: CPU time of this process, robust to other load when '
                             'run with OMP_NUM_THREADS=1 (bort.inference.latency)')
    parser.add_argument('--json', default=None, help='write every sample here')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
    if args.quick:
        args.repeats, args.warmup = 3, 1
    threads = int(os.environ.get('OMP_NUM_THREADS') or os.cpu_count())
    set_threads(threads)
    try:
        shapes = [tuple(int(v) for v in s.lower().split('x')) for s in args.shapes]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        parser.exit(2, f'bench_inference.py: error: --shapes wants BATCHxSEQ, got {args.shapes}\n')
    engines, skipped = supported_engines(args.engines)
    if not engines:
        parser.exit(2, f'bench_inference.py: error: no requested engine runs here: {skipped}\n')
    peak_before = matmul_peak_gflops(clock=args.clock)
    rows = bench(args.archs, shapes, engines, args.warmup, args.repeats, threads, args.clock)
    peak = max(peak_before, matmul_peak_gflops(clock=args.clock))
    header = (f'device: {device_string()}; threads: {thread_info()}; load average: '
              f'{os.getloadavg()}; {args.clock} clock; repeats {args.repeats} (interleaved), '
              f'warm-up {args.warmup}; '
              f'float32 GEMM peak (FullyConnected 2048^3, best of 10): {peak:.0f} GFLOP/s')
    text = header + '\n\n' + format_table(rows, peak)
    text += ''.join(f'\n\n{engine}: {why}' for engine, why in skipped.items())
    if len(args.archs) >= 2:
        text += '\n\n' + format_arch_ratios(rows, args.archs[0], args.archs[1])
    print(text)
    report = {'header': header, 'peak_gflops': peak, 'rows': rows, 'not_measured': skipped}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
