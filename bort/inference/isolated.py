"""Latency of several architectures timed in a separate process with its own thread count.

Why: with two OpenMP threads per call, another multi-threaded process on the same cores makes
every parallel region wait for a descheduled thread, and the slowdown is not proportional to
the work: measured on 2 cores next to an MXNet training process, the teacher went from 30 to
116 ms while a one-layer candidate barely moved, and neighbouring candidates swapped ranks even
as ratios to the teacher. One thread per call has no such barrier; with the process clock
(CPU time of the timing process) the time another process takes from the cores is not counted
at all. MXNet fixes its thread pool at start-up, so the timing runs in a child process started
with ``OMP_NUM_THREADS`` set and the synchronous engine (every operator runs in the calling
thread).

:func:`time_encoders` is the one latency measurement of the search: every strategy's costs and
BO's re-measured front go through it with the same settings (child process and its threads, or
in the calling process when ``threads`` is 0).

The child is this module (``python -m bort.inference.isolated``): it reads one JSON request
on stdin (architectures, input shape, warm-up, repeats, clock), builds each encoder with random
weights (values do not change the time), times them interleaved with
:func:`bort.inference.latency.compare_latency` and writes the samples as JSON on stdout.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Dict, Mapping, Optional

from .latency import LatencyResult

if TYPE_CHECKING:
    import mxnet as mx

    from ..arch import Architecture

__all__ = ['time_in_child', 'time_encoders']


def time_in_child(archs: Mapping[str, Dict], batch_size: int, seq_len: int, warmup: int,
                  repeats: int, threads: int = 1,
                  clock: str = 'process') -> Dict[str, LatencyResult]:
    """Time encoders side by side in a child process with ``threads`` OpenMP threads.

    Parameters
    ----------
    archs : mapping of label -> dict
        :meth:`bort.arch.Architecture.to_dict` of each encoder (no pooler, no decoder).
    batch_size, seq_len : int
        Input shape (batch_size, seq_len), every row full length.
    warmup, repeats : int
        Untimed calls of each, then timed rounds (every encoder once per round, in order).
    threads : int
        ``OMP_NUM_THREADS`` of the child.
    clock : {'process', 'wall'}
        ``process``: CPU seconds of the child (others' load not counted); ``wall``: elapsed.

    Returns
    -------
    dict of label -> LatencyResult
        As :func:`bort.inference.latency.compare_latency` returns, with the child's threads,
        thread environment and clock.

    Raises
    ------
    RuntimeError
        The child failed (its last error line is in the message).
    """
    request = {'archs': dict(archs), 'batch_size': batch_size, 'seq_len': seq_len,
               'warmup': warmup, 'repeats': repeats, 'clock': clock}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MXNET_ENGINE_TYPE='NaiveEngine')
    env.pop('OMP_WAIT_POLICY', None)
    # The child imports this very package, installed or not (a checkout run in place).
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [package_root, env.get('PYTHONPATH')]))
    done = subprocess.run([sys.executable, '-m', 'bort.inference.isolated'],
                          input=json.dumps(request), capture_output=True, text=True, env=env,
                          check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        raise RuntimeError(f'latency measurement in a child process failed: {last}')
    timed = json.loads(done.stdout.strip().splitlines()[-1])
    return {label: LatencyResult(samples=samples, batch_size=batch_size, seq_len=seq_len,
                                 warmup=warmup, repeats=repeats, device=timed['device'],
                                 threads=timed['threads'], thread_env=timed['thread_env'],
                                 label=label, clock=timed['clock'])
            for label, samples in timed['samples'].items()}


def time_encoders(archs: Mapping[str, 'Architecture'], batch_size: int, seq_len: int,
                  warmup: int, repeats: int, threads: int = 1, clock: str = 'process',
                  ctx: Optional['mx.Context'] = None) -> Dict[str, LatencyResult]:
    """Time the encoders of ``archs`` side by side, runs interleaved: the search's one way.

    Parameters
    ----------
    archs : mapping of label -> Architecture
        Timed as encoders (no pooler, no decoder), hybridized, random token ids.
    batch_size, seq_len, warmup, repeats : int
        As :func:`time_in_child`.
    threads : int
        > 0: in a child process with that many OpenMP threads (:func:`time_in_child`, with
        ``clock``); 0: in this process with its threads, wall clock, on ``ctx``.
    clock : {'process', 'wall'}
        The child's clock (ignored in this process).
    ctx : mx.Context, optional
        Where this process times (``threads`` 0 only).

    Returns
    -------
    dict of label -> LatencyResult
    """
    if threads:
        encoders = {label: arch.replace(use_pooler=False).to_dict()
                    for label, arch in archs.items()}
        return time_in_child(encoders, batch_size, seq_len, warmup, repeats, threads=threads,
                             clock=clock)
    # pylint: disable=import-outside-toplevel
    from ..model import build_model
    from .latency import compare_latency
    models = {}
    for label, arch in archs.items():
        model = build_model(arch.replace(use_pooler=False), use_decoder=False, ctx=ctx)
        model.hybridize(static_alloc=True)
        models[label] = model
    results = compare_latency(models, batch_size, seq_len, warmup=warmup, repeats=repeats,
                              ctx=ctx)
    # Gluon blocks sit in reference cycles: collect now, or every group's weights and memory
    # plans stay alive until the collector happens to run (GBs over a grid).
    del models
    gc.collect()
    return results


def _child() -> None:
    """The child's side: one request on stdin, one JSON line on stdout."""
    # pylint: disable=import-outside-toplevel
    from ..arch import Architecture
    from ..model import build_model
    from .latency import compare_latency
    request = json.loads(sys.stdin.read())
    models = {}
    for label, values in request['archs'].items():
        model = build_model(Architecture.from_dict(values), use_decoder=False)
        model.hybridize(static_alloc=True)
        models[label] = model
    results = compare_latency(models, request['batch_size'], request['seq_len'],
                              warmup=request['warmup'], repeats=request['repeats'],
                              clock=request['clock'])
    first = next(iter(results.values()))
    sys.stdout.write(json.dumps({'samples': {k: r.samples for k, r in results.items()},
                                 'device': first.device, 'threads': first.threads,
                                 'thread_env': first.thread_env,
                                 'clock': request['clock']}) + '\n')


if __name__ == '__main__':
    _child()
