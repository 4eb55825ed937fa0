"""Fused CPU operators (``bort/inference/csrc/fused_ops.cc``), compiled on first use and loaded into MXNet.

MXNet 1.9's LayerNorm runs at ~1.5 ns per element on one core of this project's machines (a
residual ``elemwise_add`` and, in the padded fast path, a widening ``concat`` come on top);
:func:`load_fused_ops` makes ``bort_add_layer_norm`` available in ``mx.nd`` and ``mx.sym``: the
residual addition, LayerNorm and the zero channels in one pass over each row; and
``bort_masked_softmax``: the attention softmax over each row's valid keys only, in place of the
additive mask's ``broadcast_add`` and ``softmax`` of padded batches.

The library is built with the C++ compiler that also builds Horovod (``$CXX`` or ``g++``), for
this machine's CPU (``-march=native``), against the custom-operator API shipped in the MXNet
wheel (``mxnet/include/mxnet/lib_api.h`` and ``mxnet/src/lib_api.cc``), into
``$BORT_CACHE/kernels`` (default ``~/.cache/bort/kernels``) under a key of the sources, the MXNet
version, the flags and the CPU; later processes load the cached file. Without a compiler, or
with ``BORT_FUSED_OPS=0``, nothing is built and callers keep MXNet's own operators (same outputs
to float32 rounding, slower).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import mxnet as mx

__all__ = ['load_fused_ops', 'SOURCE', 'OP_ADD_LAYER_NORM',
           'OP_MASKED_SOFTMAX']

log = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_ops.cc')
OP_ADD_LAYER_NORM = 'bort_add_layer_norm'
OP_MASKED_SOFTMAX = 'bort_masked_softmax'
# No errno and no FP traps: lets exp/sqrt vectorize (8x on the softmax's exp); nothing here
# reads errno or relies on traps. Not -ffast-math: NaN/inf stay IEEE.
FLAGS = ('-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math', '-fopenmp',
         '-shared', '-fPIC', '-std=c++17')

_STATE = {'loaded': None}  # None: not tried; else the path loaded, or '' when unavailable


def _cache_dir() -> str:
    root = os.environ.get('BORT_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                        'bort')
    return os.path.join(root, 'kernels')


def _cpu_signature() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _mxnet_dir() -> str:
    return os.path.dirname(os.path.abspath(mx.__file__))


def _library_path() -> str:
    lib_api = os.path.join(_mxnet_dir(), 'src', 'lib_api.cc')
    digest = hashlib.sha1()
    for path in (SOURCE, lib_api):
        with open(path, 'rb') as f:
            digest.update(f.read())
    digest.update(' '.join((mx.__version__,) + FLAGS).encode())
    digest.update(_cpu_signature().encode())
    return os.path.join(_cache_dir(), f'libbort_fused_{digest.hexdigest()[:16]}.so')


def _compile(target: str) -> None:
    """Build the library into ``target`` (atomically: concurrent workers may race)."""
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not compiler:
        raise RuntimeError('no C++ compiler found (set CXX)')
    include = os.path.join(_mxnet_dir(), 'include')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(target))
    os.close(fd)
    cmd = [compiler, *FLAGS, SOURCE, os.path.join(_mxnet_dir(), 'src', 'lib_api.cc'),
           '-I', include, '-o', tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_fused_ops() -> bool:
    """Build (once per machine) and load the fused operators; True when they are usable.

    Idempotent and cheap after the first call. Failures are logged once as a warning and give
    False; ``BORT_FUSED_OPS=0`` gives False without trying.
    """
    if _STATE['loaded'] is not None:
        return bool(_STATE['loaded'])
    _STATE['loaded'] = ''
    if os.environ.get('BORT_FUSED_OPS', '1') == '0':
        log.info('fused operators disabled by BORT_FUSED_OPS=0')
        return False
    try:
        path = _library_path()
        if not os.path.exists(path):
            log.info('compiling %s -> %s', SOURCE, path)
            _compile(path)
        mx.library.load(path, verbose=False)
        for op in (OP_ADD_LAYER_NORM, OP_MASKED_SOFTMAX):
            if not hasattr(mx.nd, op):
                raise RuntimeError(f'{path} loaded but {op} is not registered')
    except (OSError, RuntimeError, mx.base.MXNetError) as err:
        log.warning('fused operators unavailable, using MXNet\'s own (slower): %s', err)
        return False
    _STATE['loaded'] = path
    return True

