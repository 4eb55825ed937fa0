"""Pieces the Bort model swaps into GluonNLP 0.10's encoder (:class:`bort.model.BortModel`).

:class:`SelfAttentionCell` masks padded keys with an additive bias (:data:`MASK_VALUE`, shared
with the fast inference engine) and runs the fused attention operator where it can;
:func:`dropout_after_norm` moves the embeddings' dropout after their LayerNorm
(:class:`NormThenDropout`); :func:`set_compute_dtype` makes every dense layer of a model
multiply in bfloat16 (:class:`BFloat16Dense`, :func:`bf16_fully_connected`). Each keeps the
parameters and names of the block it replaces.
"""
from __future__ import annotations

from typing import Iterator

import mxnet as mx
import numpy as np
from gluonnlp.model.bert import BERTEncoder, DotProductSelfAttentionCell

from . import kernels

__all__ = ['MASK_VALUE', 'BFLOAT16', 'COMPUTE_DTYPES', 'SelfAttentionCell', 'NormThenDropout',
           'dropout_after_norm', 'BFloat16Dense', 'bf16_fully_connected', 'descendants',
           'set_compute_dtype']

#: Additive attention bias of a padded key: exp(score - 1e9 - max) is exactly 0 in float32.
MASK_VALUE = -1e9
#: MXNet's bfloat16 (a structured numpy dtype, as ``mxnet.contrib.amp`` spells it).
BFLOAT16 = np.dtype([('bfloat16', np.uint16)])
#: What the dense layers of a float32 model can multiply in (:func:`set_compute_dtype`).
COMPUTE_DTYPES = ('float32', 'bfloat16')


def bf16_fully_connected(F, data, weight, bias=None, **kwargs):
    """``FullyConnected`` on float32 tensors, multiplied in bfloat16.

    The input, weight and bias are rounded to bfloat16 (``amp_cast`` rounds to nearest), oneDNN
    multiplies them accumulating in float32, and the output comes back as float32: the float32
    parameters stay the master copy and everything around the product stays float32 (what
    MXNet's AMP does for ``FullyConnected`` with ``target_dtype='bfloat16'``, and PyTorch's CPU
    autocast for ``linear``). Backward, ``amp_cast`` turns the bfloat16 gradients back to
    float32 before they reach the parameters.

    Parameters
    ----------
    data : (..., in_units) float32
    weight : (num_hidden, in_units) float32
    bias : (num_hidden,) float32, optional
    **kwargs
        ``FullyConnected``'s other arguments (``num_hidden``, ``flatten``, ...).

    Returns
    -------
    (..., num_hidden) float32
    """
    def low(v):
        return F.amp_cast(v, dtype=BFLOAT16)
    out = F.FullyConnected(low(data), low(weight), None if bias is None else low(bias),
                           no_bias=bias is None, **kwargs)
    return F.amp_cast(out, dtype='float32')


class BFloat16Dense(mx.gluon.nn.Dense):
    """Gluon's ``Dense`` multiplying in bfloat16 (:func:`bf16_fully_connected`). Same
    parameters, same names, float32 in and out."""

    def hybrid_forward(self, F, x, weight, bias=None):
        # pylint: disable=arguments-differ
        out = bf16_fully_connected(F, x, weight, bias, num_hidden=self._units,
                                   flatten=self._flatten)
        return self.act(out) if self.act is not None else out


def descendants(block: mx.gluon.Block) -> Iterator[mx.gluon.Block]:
    """Every block below ``block`` (not ``block`` itself), each once."""
    stack, seen = list(block._children.values()), set()  # pylint: disable=protected-access
    while stack:
        child = stack.pop()
        if id(child) in seen:
            continue
        seen.add(id(child))
        yield child
        stack.extend(child._children.values())  # pylint: disable=protected-access


def set_compute_dtype(block: mx.gluon.Block, dtype: str) -> int:
    """Make every dense layer under ``block`` multiply in ``dtype`` (float32 parameters kept).

    ``'bfloat16'``: Gluon ``Dense`` layers (feed-forward, attention output, pooler, MLM head,
    task heads) become :class:`BFloat16Dense` and the attention cells project queries, keys and
    values in bfloat16; embeddings, LayerNorm, softmax, attention products, dropout and losses
    stay float32. ``'float32'`` undoes it. Call it before the first forward pass, or the block
    traces its graph again at the next one (cached graphs are dropped).

    Parameters
    ----------
    block : Block
        A float32 model (a :class:`~bort.model.BortModel`, a task classifier, ...).
    dtype : {'float32', 'bfloat16'}

    Returns
    -------
    int
        The number of dense layers (attention projections included) switched.
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f'compute dtype {dtype!r}: choose from {COMPUTE_DTYPES}')
    low, count = dtype == 'bfloat16', 0
    for child in [block, *descendants(block)]:
        if isinstance(child, mx.gluon.nn.Dense):
            child.__class__ = BFloat16Dense if low else mx.gluon.nn.Dense
            count += 1
        elif isinstance(child, SelfAttentionCell):
            child.bfloat16 = low
            count += 1
        if isinstance(child, mx.gluon.HybridBlock):
            child._clear_cached_op()  # pylint: disable=protected-access
    return count


def _fully_connected(F, data, weight, bias, **kwargs):
    return F.FullyConnected(data, weight, bias, no_bias=False, **kwargs)


class SelfAttentionCell(DotProductSelfAttentionCell):
    """GluonNLP's self-attention with padded keys masked by an additive bias (float32).

    GluonNLP masks with ``softmax(scores, length=..., use_length=True)``, which has no oneDNN
    kernel: MXNet runs a generic loop, forward and backward (measured on 2 cores: 156 ms of a
    1.2 s fine-tuning step of a MiniLM-sized model at 8 x 128). Adding 0 or ``MASK_VALUE`` to
    the scores and taking the plain softmax gives the same probabilities (the padded keys'
    weights are exactly 0, so are their gradients) through oneDNN. float16 keeps GluonNLP's
    path (``MASK_VALUE`` does not fit; GPU only, where the length softmax is fast).
    With ``fused`` (set by :class:`BortModel`), the products, the mask, the softmax and the
    attention dropout are one operator, :func:`bort.kernels.self_attention`, forward and
    backward (the same probabilities: padded keys get exactly 0). Same parameters, same names.
    """

    additive_mask = True
    fused = False
    train_flag = None
    #: Project queries, keys and values in bfloat16 (:func:`set_compute_dtype`).
    bfloat16 = False

    def hybrid_forward(self, F, qkv, valid_len, query_bias, key_bias, value_bias,
                       query_weight, key_weight, value_weight):
        # pylint: disable=arguments-differ
        if valid_len is None or not self.additive_mask:
            return super().hybrid_forward(F, qkv, valid_len, query_bias, key_bias, value_bias,
                                          query_weight, key_weight, value_weight)
        heads = self._num_heads
        weight = F.concat(*[w.reshape(shape=(heads, -1, 0), reverse=True)
                            for w in (query_weight, key_weight, value_weight)], dim=-2)
        bias = F.stack(*[b.reshape(shape=(heads, -1), reverse=True)
                         for b in (query_bias, key_bias, value_bias)], axis=1)
        dense = bf16_fully_connected if self.bfloat16 else _fully_connected
        qkv_proj = dense(F, qkv, weight.reshape(shape=(-1, 0), reverse=True), bias.reshape(-1),
                         num_hidden=self.units * 3, flatten=False)          # (L, B, 3H)
        if self.fused:
            # valid_len: (B, L), every column the row's length (BERTEncoder's layout).
            lengths = F.BlockGrad(F.reshape(F.cast(F.slice_axis(valid_len, axis=1, begin=0,
                                                                end=1), 'float32'), shape=(-1,)))
            # No attention weights: the fused operator does not keep them (the encoder is
            # built without output_attention, BortModel checks).
            return kernels.self_attention(F, qkv_proj, lengths, heads, self._dropout,
                                          self.train_flag), None
        scores = F.contrib.interleaved_matmul_selfatt_qk(qkv_proj, heads=heads)  # (B*A, L, L)
        # valid_len: (B, L) int32, every column the row's length (BERTEncoder's layout).
        # The mask comes from the lengths alone, off the gradient's path: autograd would
        # otherwise reduce the scores' gradient onto it (115 ms a step in the MiniLM case).
        keys = F.cast(F.contrib.arange_like(valid_len, axis=1), 'float32')   # (L,)
        lengths = F.cast(F.slice_axis(valid_len, axis=1, begin=0, end=1), 'float32')  # (B, 1)
        padded = F.broadcast_greater_equal(F.reshape(keys, shape=(1, -1)), lengths)  # (B, L)
        mask = F.BlockGrad(F.reshape(padded * MASK_VALUE, shape=(0, 1, 1, -1)))  # (B, 1, 1, L)
        scores = F.reshape(scores, shape=(-4, -1, heads, 0, 0))              # (B, A, L, L)
        # An elementwise addition of the mask spelt out to the full shape: the backward of
        # broadcast_add pushes the scores' gradient through MXNet's generic reduction even
        # where the shapes are equal (measured 115 ms a step, against ~5 ms for the copy).
        scores = scores + F.broadcast_like(mask, scores)
        weights = self.dropout_layer(F.softmax(F.reshape(scores, shape=(-3, 0, 0)), axis=-1))
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv_proj, weights, heads=heads)
        return context, weights.reshape(shape=(-1, heads, 0, 0), reverse=True)


class NormThenDropout(kernels.FusedLayerNorm):
    """The embeddings' LayerNorm followed by their dropout (Google's BERT and Hugging Face's
    order; GluonNLP's encoder drops out before normalising). Same parameters, same names."""

    def hybrid_forward(self, F, data, gamma, beta):
        # pylint: disable=arguments-differ
        return self.embedding_dropout(super().hybrid_forward(F, data, gamma, beta))


def dropout_after_norm(encoder: BERTEncoder) -> None:
    """Move GluonNLP's embedding dropout from before the encoder's first LayerNorm to after it.

    ``BERTEncoder.hybrid_forward`` adds the positions, applies ``dropout_layer`` when
    ``_dropout`` is set, then ``layer_norm``: the dropout block is handed to the LayerNorm
    (which applies it to its output) and the encoder's own call is switched off.
    """
    # pylint: disable=protected-access
    norm = encoder.layer_norm
    norm.__class__ = NormThenDropout
    norm.embedding_dropout = encoder.dropout_layer  # also a child of the encoder: no parameters
    encoder._dropout = 0.0
