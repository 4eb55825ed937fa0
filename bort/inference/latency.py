"""Measured inference cost: latency of a model at a fixed input size, and the machine's GEMM peak.

This is i(ξ) in its wall-clock reading (SPEC section 2): warm-up runs, then repeated timed runs,
the median reported with its spread, and the thread count, device, batch size and sequence length
recorded next to the number. Timings on shared machines are noisy; compare candidates with
:func:`compare_latency`, which interleaves their repeats (A, B, C, A, B, C, ...) so that a burst of
load from elsewhere hits all of them alike, and report ratios of medians.

Synchronisation: MXNet runs asynchronously, so every timed call ends with ``mx.nd.waitall()``
(on CPU and GPU alike); a torch model on CUDA is synchronised with ``torch.cuda.synchronize()``.

Clock: wall time by default. ``clock='process'`` measures this process's CPU time instead, which
time spent descheduled by other processes does not inflate: with one thread
(``OMP_NUM_THREADS=1``) it is a robust measure of the work a model needs on a busy machine. With
several threads it also counts their spin-waiting, so use it single-threaded.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import mxnet as mx
import numpy as np

__all__ = ['LatencyResult', 'measure_latency', 'compare_latency', 'model_runner', 'set_threads',
           'matmul_peak_gflops', 'device_string', 'thread_info']

log = logging.getLogger(__name__)


@dataclass
class LatencyResult:
    """Timings of one model at one input size.

    Attributes
    ----------
    samples : list of float
        Seconds of every timed call (one call = one batch), in run order.
    median, p10, p90, q25, q75 : float
        Percentiles of ``samples``, seconds per batch.
    per_sample : float
        ``median / batch_size``: seconds per sequence (the paper's Table 1 unit).
    batch_size, seq_len : int
    warmup, repeats : int
    threads : int or None
        ``OMP_NUM_THREADS`` when set (MXNet's and oneDNN's OpenMP pool size).
    clock : str
        ``wall`` or ``process`` (CPU time of this process).
    thread_env : dict
        Every thread-related environment variable, as set.
    device : str
        ``cpu: <model name>`` or ``gpu(i): <name>``.
    label : str
    """

    samples: List[float]
    batch_size: int
    seq_len: int
    warmup: int
    repeats: int
    device: str
    threads: Optional[int] = None
    thread_env: Dict[str, Optional[str]] = field(default_factory=dict)
    label: str = ''
    clock: str = 'wall'

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def p10(self) -> float:
        return float(np.percentile(self.samples, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.samples, 90))

    @property
    def q25(self) -> float:
        return float(np.percentile(self.samples, 25))

    @property
    def q75(self) -> float:
        return float(np.percentile(self.samples, 75))

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    @property
    def per_sample(self) -> float:
        return self.median / self.batch_size

    @property
    def throughput(self) -> float:
        """Sequences per second at the median."""
        return self.batch_size / self.median

    def to_dict(self) -> Dict:
        out = dataclasses.asdict(self)
        out.update(median=self.median, p10=self.p10, p90=self.p90, q25=self.q25, q75=self.q75,
                   per_sample=self.per_sample)
        return out

    def __str__(self) -> str:
        return (f'{self.label or "model"}: {1e3 * self.median:.1f} ms/batch '
                f'(p10 {1e3 * self.p10:.1f}, p90 {1e3 * self.p90:.1f}; {self.repeats} runs), '
                f'{1e3 * self.per_sample:.2f} ms/sample, batch {self.batch_size}, '
                f'seq {self.seq_len}, threads {self.threads}, {self.clock} clock, {self.device}')


def set_threads(num_threads: int) -> None:
    """Thread count for what can still change at run time: torch's pool, and MXNet operators
    run on the calling thread.

    MXNet's engine workers size their OpenMP pools from ``OMP_NUM_THREADS`` when MXNet starts
    (``MXSetNumOMPThreads`` is ``omp_set_num_threads`` in the calling thread only, so with the
    default threaded engine it does not reach them, as measured). Set ``OMP_NUM_THREADS`` before
    ``import mxnet``: unset, MXNet ran as if single-threaded on this project's machines. This
    function also records the value in the environment, for child processes.
    """
    lib = mx.base._LIB  # pylint: disable=protected-access
    lib.MXSetNumOMPThreads(ctypes.c_int(int(num_threads)))
    os.environ['OMP_NUM_THREADS'] = str(int(num_threads))
    torch = sys.modules.get('torch')
    if torch is not None:
        torch.set_num_threads(int(num_threads))


def thread_info() -> Dict[str, Optional[str]]:
    """Thread-related environment variables read by OpenMP, MXNet, oneDNN and torch."""
    keys = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'MXNET_CPU_WORKER_NTHREADS',
            'MXNET_ENGINE_TYPE', 'MXNET_SUBGRAPH_BACKEND', 'OMP_PROC_BIND', 'OMP_WAIT_POLICY',
            'KMP_AFFINITY')
    return {k: os.environ.get(k) for k in keys}


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_string(ctx: Optional[mx.Context] = None) -> str:
    """A readable device name: ``cpu: AMD EPYC (2 cores)`` or ``gpu(0): <name>``."""
    ctx = ctx or mx.cpu()
    if ctx.device_type == 'gpu':
        torch = sys.modules.get('torch')
        name = ''
        if torch is not None and torch.cuda.is_available():
            name = ': ' + torch.cuda.get_device_name(ctx.device_id)
        return f'gpu({ctx.device_id}){name}'
    return f'cpu: {_cpu_name()} ({os.cpu_count()} cores)'


def _threads() -> Optional[int]:
    value = os.environ.get('OMP_NUM_THREADS')
    return int(value) if value and value.isdigit() else None


def _sync(ctx: Optional[mx.Context]) -> None:
    mx.nd.waitall()
    torch = sys.modules.get('torch')
    if ctx is not None and ctx.device_type == 'gpu' and torch is not None \
            and torch.cuda.is_available():
        torch.cuda.synchronize()


def model_runner(model, batch_size: int, seq_len: int, ctx: Optional[mx.Context] = None,
                 seed: int = 0) -> Callable[[], object]:
    """A zero-argument forward pass of ``model`` on random token ids of one shape.

    Parameters
    ----------
    model : BortModel, FastModel, QuantizedModel or any callable with an ``arch`` attribute
        Called as ``model(tokens, token_types, valid_length)``, every encoder's order; token types
        are zeros when the architecture has them, else None.
    batch_size, seq_len : int
    ctx : mx.Context, optional
    seed : int

    Returns
    -------
    callable
        Runs one forward pass on (batch_size, seq_len) tokens, every row full length.
    """
    ctx = ctx or mx.cpu()
    arch = model.arch
    rng = np.random.RandomState(seed)
    tokens = mx.nd.array(rng.randint(0, arch.vocab_size, (batch_size, seq_len)), ctx=ctx)
    valid = mx.nd.full((batch_size,), seq_len, ctx=ctx)
    types = mx.nd.zeros((batch_size, seq_len), ctx=ctx) if arch.token_type_vocab_size else None
    return lambda: model(tokens, types, valid)


def _as_runner(model_or_callable, batch_size, seq_len, ctx, seed) -> Callable[[], object]:
    if hasattr(model_or_callable, 'arch'):
        return model_runner(model_or_callable, batch_size, seq_len, ctx, seed)
    if not callable(model_or_callable):
        raise TypeError('expected a model with an `arch` attribute or a zero-argument callable')
    return model_or_callable


_CLOCKS = {'wall': time.perf_counter, 'process': time.process_time}


def compare_latency(candidates: Mapping[str, object], batch_size: int, seq_len: int,
                    warmup: int = 3, repeats: int = 10, ctx: Optional[mx.Context] = None,
                    seed: int = 0, clock: str = 'wall') -> Dict[str, LatencyResult]:
    """Time several models side by side, interleaving their repeats.

    Parameters
    ----------
    candidates : mapping of label -> model or zero-argument callable
        See :func:`measure_latency` for what is accepted.
    batch_size, seq_len : int
        The input shape, (batch_size, seq_len); recorded with the results.
    warmup : int
        Untimed calls of each candidate first (graph building, oneDNN primitive creation).
    repeats : int
        Timed rounds; each round calls every candidate once, in order.
    ctx : mx.Context, optional
        Where the inputs live; defaults to the CPU.
    seed : int
    clock : {'wall', 'process'}
        See the module docstring.

    Returns
    -------
    dict of label -> LatencyResult
    """
    if repeats < 1:
        raise ValueError('repeats must be at least 1')
    if clock not in _CLOCKS:
        raise ValueError(f'clock must be one of {sorted(_CLOCKS)}, got {clock!r}')
    now = _CLOCKS[clock]
    runners = {k: _as_runner(v, batch_size, seq_len, ctx, seed) for k, v in candidates.items()}
    for run in runners.values():
        for _ in range(warmup):
            run()
            _sync(ctx)
    samples: Dict[str, List[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for key, run in runners.items():
            start = now()
            run()
            _sync(ctx)
            samples[key].append(now() - start)
    device, threads, env = device_string(ctx), _threads(), thread_info()
    results = {k: LatencyResult(samples=v, batch_size=batch_size, seq_len=seq_len, warmup=warmup,
                                repeats=repeats, device=device, threads=threads, thread_env=env,
                                label=k, clock=clock)
               for k, v in samples.items()}
    for result in results.values():
        log.debug('%s', result)
    return results


def measure_latency(model_or_callable, batch_size: int, seq_len: int, warmup: int = 3,
                    repeats: int = 10, ctx: Optional[mx.Context] = None, label: str = '',
                    seed: int = 0, clock: str = 'wall') -> LatencyResult:
    """Latency of one forward pass at a fixed input size.

    Parameters
    ----------
    model_or_callable : model or callable
        A model with an ``arch`` attribute (:class:`bort.model.BortModel`, hybridized or not,
        :class:`bort.inference.fast.FastModel`, :class:`bort.inference.quantized.QuantizedModel`), fed random token
        ids of shape (batch_size, seq_len), every row full length; or a zero-argument callable
        that runs one forward pass on inputs of that shape (for instance a torch model).
    batch_size, seq_len : int
    warmup : int
        Untimed calls first.
    repeats : int
        Timed calls.
    ctx : mx.Context, optional
        CPU by default; with a GPU context, inputs are created there and timing synchronises.
    label : str
    seed : int
        Seed of the random token ids.
    clock : {'wall', 'process'}
        Wall time, or this process's CPU time (see the module docstring).

    Returns
    -------
    LatencyResult
    """
    result = compare_latency({label or 'model': model_or_callable}, batch_size, seq_len,
                             warmup=warmup, repeats=repeats, ctx=ctx, seed=seed, clock=clock)
    return next(iter(result.values()))


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, ctx: Optional[mx.Context] = None,
                       dtype: str = 'float32', clock: str = 'wall') -> float:
    """The machine's measured float32 matrix-multiply rate, GFLOP/s (best of ``repeats``).

    A (size, size) x (size, size) product through ``FullyConnected`` (oneDNN's inner product on
    CPU, cuBLAS on GPU), the operator the encoder's dense layers use; 2·size³ operations a call.
    The best run rather than the median: it is a ceiling for "achieved vs peak" comparisons, and
    load from other processes only ever lowers it.

    Parameters
    ----------
    size : int
    repeats : int
    ctx : mx.Context, optional
    dtype : str
    clock : {'wall', 'process'}
        With ``process`` and one thread: the single core's rate, unaffected by other load.

    Returns
    -------
    float
    """
    ctx = ctx or mx.cpu()
    now = _CLOCKS[clock]
    data = mx.nd.random.uniform(shape=(size, size), ctx=ctx, dtype=dtype)
    weight = mx.nd.random.uniform(shape=(size, size), ctx=ctx, dtype=dtype)

    def run():
        return mx.nd.FullyConnected(data, weight, num_hidden=size, no_bias=True)

    for _ in range(2):
        run()
        _sync(ctx)
    best = float('inf')
    for _ in range(repeats):
        start = now()
        run()
        _sync(ctx)
        best = min(best, now() - start)
    return 2.0 * size ** 3 / best / 1e9


def format_results(results: Sequence[LatencyResult], reference: Optional[str] = None) -> str:
    """A markdown table of results (median, p10-p90, ms/sample, ratio to ``reference``)."""
    by_label = {r.label: r for r in results}
    ref = by_label.get(reference) if reference else None
    lines = ['| model | batch | seq | median ms | p10-p90 ms | ms/sample | ratio |',
             '|---|---|---|---|---|---|---|']
    for r in results:
        ratio = f'{r.median / ref.median:.2f}' if ref else ''
        lines.append(f'| {r.label} | {r.batch_size} | {r.seq_len} | {1e3 * r.median:.1f} | '
                     f'{1e3 * r.p10:.1f}-{1e3 * r.p90:.1f} | {1e3 * r.per_sample:.2f} | {ratio} |')
    return '\n'.join(lines)
