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

The child is this module (``python -m bort.inference.isolated``): it reads one JSON request
on stdin (architectures, input shape, warm-up, repeats, clock), builds each encoder with random
weights (values do not change the time), times them interleaved with
:func:`bort.inference.latency.compare_latency` and writes the samples as JSON on stdout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Mapping

from .latency import LatencyResult

__all__ = ['time_in_child']


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
