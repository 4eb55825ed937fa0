"""Fused CPU operators for training (``bort/csrc/train_ops.cc``), and the build of such libraries.

MXNet 1.9 on CPU spends a fine-tuning step of a MiniLM-sized model (8 x 128 tokens, 2 cores)
largely outside the dense layers' products: LayerNorm's backward (~15 ms a call, a generic
reduction), Dropout (one ``std::mt19937`` draw per element), attention (its per-head products
as BLAS calls of (128 x 32) x (32 x 128), ~5x the time of their arithmetic, the mask's
broadcast and the softmax around them), the gradient norm and the Adam update (one operator
per 4 parameters). :func:`load_train_ops` makes these available in ``mx.nd`` and ``mx.sym``,
those of the graph with their backward:

- ``bort_layer_norm``: LayerNorm, forward and backward one pass over each row;
- ``bort_dropout``: inverted dropout from a counter-based hash of one seeded key a call;
- ``bort_self_attention``: the per-head products, the softmax over each row's valid keys and
  the attention dropout, from and to GluonNLP's interleaved layouts;
- ``bort_sum_squares``: the global L2 norm of many arrays in one pass (double accumulation);
- ``bort_adamw``: GluonNLP's BERT-Adam update of every parameter in one operator.

:mod:`bort.model` uses them through :class:`FusedLayerNorm`, :class:`FusedDropout` and
:func:`self_attention`; :mod:`bort.optim` through :func:`global_norm` and
:func:`adamw_update`.

Two limits of MXNet's library interface shape how they are used. It does not pass the training
flag to an operator: :func:`train_mode` derives it inside the graph from MXNet's own Dropout.
It does not say whether a gradient is to be written or added to ('add' is gradient
accumulation): the operators always write, so parameters reach them through an identity, whose
backward honours 'add', and inputs are never leaves of the graph. With
``MXNET_EXEC_ENABLE_ADDTO=1`` (MXNet then asks operators to add into intermediate gradients too)
the training operators are not used.

Building: the C++ compiler (``$CXX`` or ``g++``) for this machine's CPU (``-march=native``),
against the custom-operator API shipped in the MXNet wheel, into ``$BORT_CACHE/kernels``
(default ``~/.cache/bort/kernels``) under a key of the sources, the MXNet version, the flags and
the CPU; later processes load the cached file. The library is linked ``-Bsymbolic``, so it
also runs in Horovod workers (``FLAGS`` says why that was needed). Without a compiler, or with
``BORT_FUSED_OPS=0``, nothing is built (one warning) and callers keep MXNet's own operators
(same results to float32 rounding; dropout masks differ, drawn from another generator).

Random streams: whether a run draws the fused or MXNet's dropout masks depends only on whether
the operators load, not on how it is launched. A single process and ``horovodrun -np 1`` give
identical runs for a seed; a run with ``BORT_FUSED_OPS=0`` (or on a machine without a compiler)
is reproducible too, but its masks, and so its numbers, come from MXNet's generator.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import List, Optional, Sequence

import mxnet as mx
import numpy as np

__all__ = ['FusedLayerNorm', 'FusedDropout', 'build_library', 'load_library', 'load_train_ops',
           'train_ops_usable', 'layer_norm', 'dropout', 'self_attention', 'train_mode',
           'global_norm', 'adamw_ready', 'adamw_update', 'TRAIN_SOURCE', 'OP_LAYER_NORM',
           'OP_DROPOUT', 'OP_SELF_ATTENTION', 'OP_SUM_SQUARES', 'OP_ADAMW', 'OP_VOCAB_LOSS',
           'OP_SPARSE_SOFT_CE', 'vocab_losses', 'sparse_soft_cross_entropy']

log = logging.getLogger(__name__)

TRAIN_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'train_ops.cc')
OP_LAYER_NORM = 'bort_layer_norm'
OP_DROPOUT = 'bort_dropout'
OP_SELF_ATTENTION = 'bort_self_attention'
OP_SUM_SQUARES = 'bort_sum_squares'
OP_ADAMW = 'bort_adamw'
OP_VOCAB_LOSS = 'bort_vocab_loss'
OP_SPARSE_SOFT_CE = 'bort_sparse_soft_ce'
# No errno and no FP traps: lets exp/sqrt vectorize (8x on the softmax's exp); nothing here
# reads errno or relies on traps. Not -ffast-math: NaN/inf stay IEEE.
# -Bsymbolic: the library's calls to its own copy of MXNet's lib_api.cc (mxnet::ext::*, the
# _op* entry points and std:: containers of them) bind inside the library at link time.
# libmxnet.so exports the same names, built by GCC 4.8 with the old std::string ABI and other
# container layouts; Horovod loads its MXNet extension RTLD_GLOBAL, which puts libmxnet.so (a
# dependency of it) into the global scope, and the dynamic linker then bound those calls to
# MXNet's copies: SIGFPE (a zero bucket count) in the library's static initialisers when loaded
# after horovod.mxnet, `free(): invalid pointer` (lazy binding) at the first call when before.
FLAGS = ('-O3', '-march=native', '-fno-math-errno', '-fno-trapping-math', '-fopenmp',
         '-shared', '-fPIC', '-std=c++17', '-Wl,-Bsymbolic')

_LOADED = {}  # source -> the library path loaded, or '' when unavailable


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


def _library_path(source: str, stem: str) -> str:
    lib_api = os.path.join(_mxnet_dir(), 'src', 'lib_api.cc')
    digest = hashlib.sha1()
    for path in (source, lib_api):
        with open(path, 'rb') as f:
            digest.update(f.read())
    digest.update(' '.join((mx.__version__,) + FLAGS).encode())
    digest.update(_cpu_signature().encode())
    return os.path.join(_cache_dir(), f'{stem}_{digest.hexdigest()[:16]}.so')


def _compile(source: str, target: str) -> None:
    """Build ``source`` into ``target`` (atomically: concurrent workers may race)."""
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not compiler:
        raise RuntimeError('no C++ compiler found (set CXX)')
    include = os.path.join(_mxnet_dir(), 'include')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(target))
    os.close(fd)
    cmd = [compiler, *FLAGS, source, os.path.join(_mxnet_dir(), 'src', 'lib_api.cc'),
           '-I', include, '-o', tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def build_library(source: str, stem: str) -> str:
    """The path of ``source`` built for this machine and MXNet (compiled when not cached)."""
    path = _library_path(source, stem)
    if not os.path.exists(path):
        log.info('compiling %s -> %s', source, path)
        _compile(source, path)
    return path


def load_library(source: str, stem: str, ops: Sequence[str], what: str) -> bool:
    """Build (once per machine) and load ``source``; True when its ``ops`` are usable.

    Idempotent and cheap after the first call. A failure is logged once as a warning (naming
    ``what`` falls back) and gives False; ``BORT_FUSED_OPS=0`` gives False without trying.
    """
    if source in _LOADED:
        return bool(_LOADED[source])
    _LOADED[source] = ''
    if os.environ.get('BORT_FUSED_OPS', '1') == '0':
        log.info('fused operators disabled by BORT_FUSED_OPS=0')
        return False
    try:
        path = build_library(source, stem)
        mx.library.load(path, verbose=False)
        for op in ops:
            if not hasattr(mx.nd, op):
                raise RuntimeError(f'{path} loaded but {op} is not registered')
    except (OSError, RuntimeError, mx.base.MXNetError) as err:
        log.warning('fused operators unavailable, %s uses MXNet\'s own (slower): %s', what, err)
        return False
    _LOADED[source] = path
    return True


def load_train_ops() -> bool:
    """Build and load the training operators; True when they are usable."""
    return load_library(TRAIN_SOURCE, 'libbort_train',
                        (OP_LAYER_NORM, OP_DROPOUT, OP_SELF_ATTENTION, OP_SUM_SQUARES, OP_ADAMW,
                         OP_VOCAB_LOSS, OP_SPARSE_SOFT_CE),
                        'training')


def train_ops_usable() -> bool:
    """The operators loaded, and MXNet writes (not adds) intermediate gradients."""
    return os.environ.get('MXNET_EXEC_ENABLE_ADDTO', '0') != '1' and load_train_ops()


# -- graph pieces (F: mx.nd or mx.sym) ---------------------------------------------------------
def train_mode(F):
    """A (1,) float32 array that is exactly 1 in inference and 0 or 2 in training.

    MXNet's Dropout (p = 0.5) of a one: the identity in inference, 0 or 1 / (1 - p) in
    training. The operators read the flag from it (MXNet does not pass it to library ops).
    """
    return F.BlockGrad(F.Dropout(F.ones(shape=(1,)), p=0.5))


def layer_norm(F, x, gamma, beta, eps: float):
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    Parameters
    ----------
    x : (..., H) float32
    gamma, beta : (H,) float32
        Parameters, through an identity (its backward writes or adds as the gradient asks).
    """
    return getattr(F, OP_LAYER_NORM)(x, F.identity(gamma), F.identity(beta), eps=eps)[0]


def dropout(F, x, p: float, mode):
    """Inverted dropout of ``x`` with probability ``p`` where ``mode`` (:func:`train_mode`)
    says training; the identity otherwise."""
    return getattr(F, OP_DROPOUT)(x, mode, p=p)[0]


def self_attention(F, qkv, lengths, heads: int, p: float, mode):
    """Self-attention of interleaved projections, padded keys masked, dropout in training.

    The attention weights are not kept between forward and backward: the backward recomputes
    them (from the projections and the dropout stream's key).

    Parameters
    ----------
    qkv : (L, B, 3 * heads * d) float32
        Per head, ``d`` query, key and value channels in turn (GluonNLP's interleaved layout).
    lengths : (B,) float32
        Valid keys of each batch row; the keys beyond get weight exactly 0.

    Returns
    -------
    (L, B, heads * d) float32
        The context vectors, heads side by side (GluonNLP's layout).
    """
    return getattr(F, OP_SELF_ATTENTION)(qkv, lengths, mode, heads=heads, p=p)[0]


def vocab_losses(F, student_logits, teacher_logits, labels, temperature: float = 1.0,
                 hits: bool = False):
    """Per position: the masked-LM negative log-likelihood and the soft cross-entropy (and
    whether the argmax prediction is right).

    One operator, forward and backward, instead of MXNet's ~15 passes over the
    (positions, vocabulary) arrays (:func:`bort.pretrain.losses.kd_loss` uses it).

    Parameters
    ----------
    student_logits : (..., V) float32
    teacher_logits : (..., V) float32 or None
        Constants: their gradient is 0.
    labels : (...,)
        Token ids (any dtype; cast to float32).
    temperature : float
        T of the soft cross-entropy.
    hits : bool
        Also return ``hit``.

    Returns
    -------
    nll : (...,) float32
        ``logsumexp(s) - s[label]``.
    soft_ce : (...,) float32
        ``-Σ_v softmax(t / T)_v log softmax(s / T)_v``; 0 without a teacher.
    hit : (...,) float32, with ``hits``
        1 where ``s[label]`` is the row's maximum (the argmax prediction is right; found by
        the forward pass's own row maximum, so no second pass over the vocabulary), else 0.
    """
    op = getattr(F, OP_VOCAB_LOSS)
    labels = labels.astype('float32', copy=False)
    if teacher_logits is None:
        out = op(student_logits, labels, temperature=temperature, with_teacher=0)
    else:
        out = op(student_logits, teacher_logits, labels, temperature=temperature,
                 with_teacher=1)
    if not hits:
        return out[0], out[1]
    return out[0], out[1], F.squeeze(F.slice_axis(out[2], axis=-1, begin=3, end=4), axis=-1)


def sparse_soft_cross_entropy(student_logits: mx.nd.NDArray, ids: mx.nd.NDArray,
                              probs: mx.nd.NDArray, tail: mx.nd.NDArray,
                              temperature: float = 1.0) -> mx.nd.NDArray:
    """Per row, the soft cross-entropy of ``softmax(s / T)`` against a sparse target.

    The target gives ``probs[r, j]`` to token ``ids[r, j]`` and ``tail[r]`` to every other
    token (the search's cached teacher, :func:`bort.pretrain.losses.topk_soft_cross_entropy`);
    one operator, without any (rows, V) intermediate but the gradient.

    Parameters
    ----------
    student_logits : (rows, V) float32
    ids : (rows, k)
        Token ids (any dtype; cast to float32).
    probs : (rows, k) float32
    tail : (rows,) float32
    temperature : float

    Returns
    -------
    (rows,) float32
        ``logsumexp(s / T) - Σ_v a_v s_v / T``; differentiable in ``student_logits`` only.
    """
    return getattr(mx.nd, OP_SPARSE_SOFT_CE)(student_logits, ids.astype('float32', copy=False),
                                              probs, tail, temperature=temperature)[0]


def global_norm(arrays: List[mx.nd.NDArray]) -> Optional[mx.nd.NDArray]:
    """The L2 norm of ``arrays`` together, (1,) float32, in one pass; None without the op.

    Sums in double over fixed blocks: the same value for any thread count.
    """
    if not arrays or not load_train_ops() or not _usable_arrays(arrays):
        return None
    return getattr(mx.nd, OP_SUM_SQUARES)(*arrays, num_arrays=len(arrays))


# -- Gluon blocks ------------------------------------------------------------------------------
class FusedLayerNorm(mx.gluon.nn.LayerNorm):
    """Gluon's LayerNorm over the last axis, through :func:`layer_norm` when ``fused`` (set by
    :class:`bort.model.BortModel` each time its graph is built): MXNet 1.9's backward of
    LayerNorm is a generic reduction, ~15 ms a call on a 1024 x 384 input on 2 cores, the fused
    one under 1 ms. Same parameters, same names."""

    fused = False

    def hybrid_forward(self, F, data, gamma, beta):
        # pylint: disable=arguments-differ
        if self.fused and self._axis == -1:
            return layer_norm(F, data, gamma, beta, self._epsilon)
        return super().hybrid_forward(F, data, gamma, beta)


class FusedDropout(mx.gluon.nn.Dropout):
    """Gluon's Dropout, through :func:`dropout` when ``fused``, reading ``train_flag`` (a
    :func:`train_mode` node shared by the graph): MXNet draws one ``std::mt19937`` number per
    element (~9 ns an element on 2 cores), the fused operator hashes a counter. Same probability
    and scaling, another random stream."""

    fused = False
    train_flag = None

    def hybrid_forward(self, F, x):
        # pylint: disable=arguments-differ
        if self.fused and self._rate > 0 and not self._axes:
            return dropout(F, x, self._rate, self.train_flag)
        return super().hybrid_forward(F, x)


def _usable_arrays(arrays: List[mx.nd.NDArray]) -> bool:
    return all(np.dtype(a.dtype) == np.float32 and a.context.device_type == 'cpu' and
               a.stype == 'default' for a in arrays)


def adamw_ready(arrays: List[mx.nd.NDArray]) -> bool:
    """:func:`adamw_update` can update these arrays (dense float32 CPU, operator built)."""
    return bool(arrays) and load_train_ops() and _usable_arrays(arrays)


def adamw_update(weights: List[mx.nd.NDArray], grads: List[mx.nd.NDArray],
                 means: List[mx.nd.NDArray], variances: List[mx.nd.NDArray],
                 rescale: mx.nd.NDArray, lrs: Sequence[float], wds: Sequence[float],
                 beta1: float, beta2: float, epsilon: float,
                 clip_gradient: Optional[float]) -> None:
    """BERT-Adam (MXNet's ``adamw_update`` with ``lr`` 1 and ``eta`` the rate) in place.

    ``weights``, ``means`` and ``variances`` are updated; nothing happens where ``rescale``
    (a (1,) array) is 0 or not finite. The arrays must pass :func:`adamw_ready`.
    """
    inputs = [a for group in zip(weights, grads, means, variances) for a in group]
    getattr(mx.nd, OP_ADAMW)(*inputs, rescale, out=list(weights), num_arrays=len(weights),
                             lrs=','.join(repr(float(v)) for v in lrs),
                             wds=','.join(repr(float(v)) for v in wds), beta1=beta1,
                             beta2=beta2, epsilon=epsilon,
                             clip_gradient=-1.0 if clip_gradient is None else clip_gradient)
