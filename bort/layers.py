"""Pieces the Bort model swaps into GluonNLP 0.10's encoder (:class:`bort.model.BortModel`).

:class:`SelfAttentionCell` masks padded keys with an additive bias (:data:`MASK_VALUE`, shared
with the fast inference engine) and runs the fused attention operator where it can;
:func:`dropout_after_norm` moves the embeddings' dropout after their LayerNorm
(:class:`NormThenDropout`). Each keeps the parameters and names of the block it replaces.
"""
from __future__ import annotations

from gluonnlp.model.bert import BERTEncoder, DotProductSelfAttentionCell

from . import kernels

__all__ = ['MASK_VALUE', 'SelfAttentionCell', 'NormThenDropout', 'dropout_after_norm']

#: Additive attention bias of a padded key: exp(score - 1e9 - max) is exactly 0 in float32.
MASK_VALUE = -1e9


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
        qkv_proj = F.FullyConnected(data=qkv, weight=weight.reshape(shape=(-1, 0), reverse=True),
                                    bias=bias.reshape(-1), num_hidden=self.units * 3,
                                    no_bias=False, flatten=False)           # (L, B, 3H)
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
