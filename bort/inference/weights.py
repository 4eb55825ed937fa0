"""The fast graph's weights: GluonNLP's parameters under :class:`bort.inference.fast.FastEncoder`'s
names (query/key/value interleaved once), and their copy into an encoder, zero-padded where the
encoder pads its dense layers' inputs."""
from __future__ import annotations

from typing import Dict

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

from ..model import BortModel, param_dict

__all__ = ['fast_weights', 'load_weights']


def _interleave(query: np.ndarray, key: np.ndarray, value: np.ndarray, heads: int) -> np.ndarray:
    """GluonNLP's per-head interleaving: (H, ...) x 3 -> (3H, ...) as [q_0 k_0 v_0 q_1 k_1 ...]."""
    parts = [a.reshape((heads, -1) + a.shape[1:]) for a in (query, key, value)]
    return np.concatenate(parts, axis=1).reshape((-1,) + query.shape[1:])


def fast_weights(model: BortModel) -> Dict[str, np.ndarray]:
    """The weights of ``model`` under :class:`FastEncoder`'s structural names.

    Returns
    -------
    dict of str -> numpy array
        Keys such as ``layers.0.qkv.weight`` with shape (3H, H), the query/key/value weights
        interleaved per head exactly as GluonNLP's attention cell does at run time.
    """
    src = {k: v.data().asnumpy() for k, v in param_dict(model).items()}
    arch = model.arch
    out = {'word_embed.weight': src['word_embed.0.weight'],
           'position_weight': src['encoder.position_weight'],
           'ln_embed.gamma': src['encoder.layer_norm.gamma'],
           'ln_embed.beta': src['encoder.layer_norm.beta']}
    if arch.token_type_vocab_size:
        out['token_type_embed.weight'] = src['token_type_embed.0.weight']
    if arch.use_pooler:
        out['pooler.weight'], out['pooler.bias'] = src['pooler.weight'], src['pooler.bias']
    for i in range(arch.num_layers):
        cell, dst = f'encoder.transformer_cells.{i}.', f'layers.{i}.'
        att = cell + 'attention_cell.proj_'
        for kind in ('weight', 'bias'):
            out[dst + 'qkv.' + kind] = _interleave(src[att + 'query.' + kind],
                                                   src[att + 'key.' + kind],
                                                   src[att + 'value.' + kind], arch.num_heads)
            out[dst + 'proj.' + kind] = src[cell + 'proj.' + kind]
            out[dst + 'ffn_1.' + kind] = src[cell + 'ffn.ffn_1.' + kind]
            out[dst + 'ffn_2.' + kind] = src[cell + 'ffn.ffn_2.' + kind]
        for kind in ('gamma', 'beta'):
            out[dst + 'ln_att.' + kind] = src[cell + 'layer_norm.' + kind]
            out[dst + 'ln_ffn.' + kind] = src[cell + 'ffn.layer_norm.' + kind]
    return out


def load_weights(encoder: HybridBlock, weights: Dict[str, np.ndarray]) -> None:
    """Copy :func:`fast_weights` into an initialized encoder, zero-padding where it pads inputs.

    Raises
    ------
    KeyError
        When names differ (each one listed).
    ValueError
        When a weight does not fit its parameter (name and both shapes).
    """
    named = encoder._collect_params_with_prefix()  # pylint: disable=protected-access
    missing = sorted(set(named) ^ set(weights))
    if missing:
        raise KeyError(f'weights do not match the fast graph: {missing}')
    for name, param in named.items():
        value = np.asarray(weights[name], dtype=np.float32)
        shape = tuple(param.shape)
        if value.shape != shape:
            if len(value.shape) != len(shape) or any(a > b for a, b in zip(value.shape, shape)):
                raise ValueError(f'weight {name}: shape {value.shape} does not fit the fast '
                                 f'graph\'s {shape}')
            value = np.pad(value, [(0, b - a) for a, b in zip(value.shape, shape)])
        param.set_data(mx.nd.array(value, dtype='float32'))
