"""Fused CPU operators (``bort/inference/csrc/fused_ops.cc``), compiled on first use and loaded into MXNet.

MXNet 1.9's LayerNorm runs at ~1.5 ns per element on one core of this project's machines (a
residual ``elemwise_add`` and, in the padded fast path, a widening ``concat`` come on top);
:func:`load_fused_ops` makes ``bort_add_layer_norm`` available in ``mx.nd`` and ``mx.sym``: the
residual addition, LayerNorm and the zero channels in one pass over each row; and
``bort_masked_softmax``: the attention softmax over each row's valid keys only, in place of the
additive mask's ``broadcast_add`` and ``softmax`` of padded batches.

The library is built and cached as the training operators are (:func:`bort.kernels.load_library`:
``$CXX`` or ``g++``, ``-march=native``, MXNet's custom-operator API, ``$BORT_CACHE/kernels``).
Without a compiler, or with ``BORT_FUSED_OPS=0``, nothing is built and callers keep MXNet's own
operators (same outputs to float32 rounding, slower).
"""
from __future__ import annotations

import os

from ..kernels import load_library

__all__ = ['load_fused_ops', 'SOURCE', 'OP_ADD_LAYER_NORM',
           'OP_MASKED_SOFTMAX']

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_ops.cc')
OP_ADD_LAYER_NORM = 'bort_add_layer_norm'
OP_MASKED_SOFTMAX = 'bort_masked_softmax'


def load_fused_ops() -> bool:
    """Build (once per machine) and load the fused operators; True when they are usable.

    Idempotent and cheap after the first call. Failures are logged once as a warning and give
    False; ``BORT_FUSED_OPS=0`` gives False without trying.
    """
    return load_library(SOURCE, 'libbort_fused', (OP_ADD_LAYER_NORM, OP_MASKED_SOFTMAX),
                        'inference')
