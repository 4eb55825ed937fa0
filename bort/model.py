"""The Bort model family on GluonNLP 0.10's ``BERTEncoder``/``BERTModel``, and its weights files.

Parameter names are those of the released ``bort.params`` (GluonNLP 0.8.3 naming), e.g.
``word_embed.0.weight``, ``encoder.position_weight``,
``encoder.transformer_cells.0.attention_cell.proj_query.weight``, ``decoder.3.bias``.

A model folder holds ``model.params`` and ``arch.json`` (and, when a tokenizer is saved with it,
its files): the architecture always travels with the weights.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np
from gluonnlp.model.bert import BERTEncoder, BERTModel

from . import kernels
from .layers import SelfAttentionCell, descendants, dropout_after_norm
from .arch import Architecture, load_arch, save_arch
from .errors import UserError

__all__ = ['BortModel', 'build_model', 'load_params', 'save_model', 'load_model', 'save_arrays',
           'CheckpointMismatchError', 'param_dict', 'count_parameters', 'output_bias',
           'PARAMS_FILE']

log = logging.getLogger(__name__)

#: The standard deviation of every random weight (BERT's ``initializer_range``); biases and
#: LayerNorm shifts start at 0, LayerNorm scales at 1.
INIT_STD = 0.02

PARAMS_FILE = 'model.params'


class CheckpointMismatchError(UserError, ValueError):
    """A weights file whose names or shapes do not fit the architecture."""


class BortModel(BERTModel):
    """A BERT-family encoder with optional token types, pooler and masked-LM decoder.

    It is GluonNLP's ``BERTModel`` (same blocks, same parameter names) whose forward takes the
    token types and masked positions as optional, and decodes every position when no masked
    positions are given.

    Inputs
    ------
    inputs : (batch_size, seq_len) int
        Token ids.
    token_types : (batch_size, seq_len) int, optional
        Segment ids; ignored (and may be omitted) when the architecture has no token types.
    valid_length : (batch_size,) float or int, optional
        Number of real tokens per row; padding positions are masked out of attention and their
        outputs zeroed. Omitted means every position is real.
    masked_positions : (batch_size, num_masked) int, optional
        Positions to decode with the MLM head. Omitted means every position.

    Outputs
    -------
    A tuple with, in order and only when present:
      sequence_outputs : (batch_size, seq_len, units)
      pooled_output : (batch_size, units), with a pooler
      mlm_logits : (batch_size, num_masked or seq_len, vocab_size), with a decoder
    A single tensor when only the sequence outputs are produced.

    On a float32 CPU model, LayerNorm, dropout and the attention softmax run as the fused
    training operators of :mod:`bort.kernels` where they can be built (``fused_kernels``:
    False keeps MXNet's own operators everywhere, e.g. to compare).
    """

    fused_kernels = True

    def __init__(self, arch: Architecture, use_decoder: bool = True, prefix=None, params=None):
        weight_init = mx.init.Normal(INIT_STD)
        encoder = BERTEncoder(num_layers=arch.num_layers, units=arch.units,
                              hidden_size=arch.hidden_size, max_length=arch.max_length,
                              num_heads=arch.num_heads, dropout=arch.dropout,
                              output_attention=False, output_all_encodings=False,
                              weight_initializer=weight_init, activation='gelu',
                              layer_norm_eps=arch.layer_norm_eps, prefix='encoder_')
        super().__init__(encoder, vocab_size=arch.vocab_size,
                         token_type_vocab_size=arch.token_type_vocab_size or None,
                         units=arch.units, embed_size=arch.units, embed_initializer=weight_init,
                         use_pooler=arch.use_pooler, use_decoder=use_decoder,
                         use_classifier=False, use_token_type_embed=arch.token_type_vocab_size > 0,
                         prefix=prefix, params=params)
        self.arch = arch
        for cell in self.encoder.transformer_cells:
            # The subclass only changes how padding is masked (see SelfAttentionCell).
            cell.attention_cell.__class__ = SelfAttentionCell
        # GluonNLP builds plain Gluon LayerNorm and Dropout blocks: the subclasses only add the
        # fused path (same parameters).
        for block in descendants(self):
            if type(block) is mx.gluon.nn.LayerNorm:  # pylint: disable=unidiomatic-typecheck
                block.__class__ = kernels.FusedLayerNorm
            elif type(block) is mx.gluon.nn.Dropout:  # pylint: disable=unidiomatic-typecheck
                block.__class__ = kernels.FusedDropout
        if arch.embedding_dropout == 'after_norm' and arch.dropout > 0:
            dropout_after_norm(self.encoder)
        self._infer_param_shapes()
        # That shape inference traced the graph before the weights had a context; trace again
        # at the first call, when whether the fused operators apply is known.
        self._clear_cached_op()

    def _use_fused(self) -> bool:
        """The fused training operators apply: float32 weights on the CPU, operators built."""
        weight = self.word_embed[0].weight
        contexts = weight._ctx_list  # pylint: disable=protected-access
        if (not self.fused_kernels or not contexts or np.dtype(weight.dtype) != np.float32 or
                self.encoder._output_attention):  # pylint: disable=protected-access
            return False
        return all(c.device_type == 'cpu' for c in contexts) and kernels.train_ops_usable()

    def cast(self, dtype):
        """Cast the parameters; float16 switches attention back to the length softmax."""
        for cell in self.encoder.transformer_cells:
            cell.attention_cell.additive_mask = np.dtype(dtype) == np.float32
        super().cast(dtype)

    def _infer_param_shapes(self):
        """Resolve the deferred input sizes of GluonNLP's Dense layers without allocating.

        Symbolic shape inference on a 1×1 input gives every parameter its full shape, so
        weights can be counted, checked against a file and loaded before any forward pass.
        """
        tokens = mx.nd.zeros((1, 1))
        token_types = mx.nd.zeros((1, 1)) if self._use_token_type_embed else None
        positions = mx.nd.zeros((1, 1)) if self._use_decoder else None
        self.infer_shape(tokens, token_types, None, positions)

    @property
    def has_decoder(self) -> bool:
        return self._use_decoder

    def __call__(self, inputs, token_types=None, valid_length=None, masked_positions=None):
        # pylint: disable=arguments-differ
        return mx.gluon.HybridBlock.__call__(self, inputs, token_types, valid_length,
                                             masked_positions)

    def hybrid_forward(self, F, inputs, token_types=None, valid_length=None,
                       masked_positions=None):
        # pylint: disable=arguments-differ
        fused = self._use_fused()  # decided each time the graph is built (traced)
        # One training flag for every fused block of this graph (a node of it, not a value).
        flag = kernels.train_mode(F) if fused else None
        for block in descendants(self):
            if isinstance(block, (kernels.FusedLayerNorm, kernels.FusedDropout,
                                  SelfAttentionCell)):
                block.fused = fused
                block.train_flag = flag
        if self._use_token_type_embed and token_types is None:
            token_types = F.zeros_like(inputs)
        seq_out, _ = self._encode_sequence(inputs, token_types, valid_length)
        outputs = [seq_out]
        if self._use_pooler:
            outputs.append(self._apply_pooling(seq_out))
        if self._use_decoder:
            if masked_positions is None:
                outputs.append(self.decoder(seq_out))
            else:
                outputs.append(self._decode(F, seq_out, masked_positions))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def build_model(arch: Architecture, use_decoder: bool = True, ctx=None,
                initialize: bool = True) -> BortModel:
    """A model of ``arch`` with random weights (N(0, 0.02) dense and embedding weights).

    Parameters
    ----------
    arch : Architecture
    use_decoder : bool
        Keep the masked-LM head (its output weight is tied to the word embedding).
    ctx : mx.Context or list of mx.Context, optional
        Defaults to the CPU.
    initialize : bool
        Initialise the weights; pass False when loading a file right after.
    """
    model = BortModel(arch, use_decoder=use_decoder)
    if initialize:
        # The default initialiser is for what GluonNLP builds without one: the attention
        # cells' query/key/value projections and the MLM head's transform. MXNet's own
        # default there is U(-0.07, 0.07) (twice BERT's scale: their products, the attention
        # logits, four times), under which deep students from scratch stayed at the
        # most-frequent-token rate (README, "Why deep students stalled").
        model.initialize(init=mx.init.Normal(INIT_STD), ctx=ctx or mx.cpu())
    return model


def param_dict(model: mx.gluon.Block) -> Dict[str, mx.gluon.Parameter]:
    """Parameters by their structural names (``word_embed.0.weight``, ...), tied ones once."""
    seen, named = set(), {}
    for name, param in model._collect_params_with_prefix().items():  # pylint: disable=protected-access
        if id(param) not in seen:
            seen.add(id(param))
            named[name] = param
    return named


def output_bias(model) -> mx.gluon.Parameter:
    """The (vocab_size,) bias of the decoder's last layer: the logits' offset per token."""
    vocab = model.arch.vocab_size
    found = [p for p in model.decoder.collect_params().values()
             if p.name.endswith('bias') and p.shape == (vocab,)]
    if len(found) != 1:
        raise RuntimeError(f'expected one ({vocab},) decoder bias, found {len(found)}')
    return found[0]


def count_parameters(model: mx.gluon.Block) -> int:
    """Trainable values of a built model (tied parameters counted once)."""
    total = 0
    for param in param_dict(model).values():
        if param.grad_req != 'null':
            size = 1
            for dim in param.shape:
                size *= dim
            total += size
    return total


def _aliases(model: mx.gluon.Block) -> Dict[str, str]:
    """Name -> canonical name, for parameters reachable under several names (tied weights)."""
    canonical, aliases = {}, {}
    for name, param in model._collect_params_with_prefix().items():  # pylint: disable=protected-access
        aliases[name] = canonical.setdefault(id(param), name)
    return aliases


def _shapes_fit(found: Tuple[int, ...], expected: Tuple[int, ...]) -> bool:
    """Equal shapes, where 0 in ``expected`` is a dimension not inferred yet."""
    return len(found) == len(expected) and all(e in (0, f) for f, e in zip(found, expected))


def _read_params(path: str):
    """``mx.nd.load(path)``, a damaged file reported as such, naming it."""
    try:
        return mx.nd.load(path)
    except mx.base.MXNetError:
        # MXNet's message is a C++ stack trace; what the user needs is which file is broken.
        raise CheckpointMismatchError(
            f'{path}: not a readable MXNet weights file (truncated or damaged, e.g. by an '
            f'interrupted copy or a full disk); copy or write it again') from None


def save_arrays(path: str, arrays) -> None:
    """``mx.nd.save(path, arrays)`` through a temporary file renamed once complete.

    Raises
    ------
    OSError
        MXNet's writer failed part-way (a full disk, a quota): ``ENOSPC`` naming ``path``
        instead of MXNet's C++ trace, which names no file; ``path`` is left as it was.
    """
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        mx.nd.save(tmp, arrays)
    except mx.base.MXNetError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        # MXNet's message is a C++ trace ending in "FileStream.Write incomplete".
        code = errno.ENOSPC if 'Write incomplete' in str(err) else errno.EIO
        raise OSError(code, f'{os.strerror(code)} (MXNet could not write the arrays)',
                      path) from None
    os.replace(tmp, path)


def load_params(model: mx.gluon.Block, path: str, ctx=None,
                ignore_extra: Tuple[str, ...] = ()) -> None:
    """Load a weights file strictly: every parameter present, every shape equal, nothing extra.

    Parameters
    ----------
    model : Block
        A built model, initialised or not.
    path : str
        An MXNet ``.params`` file (the released ``bort.params`` layout is accepted as is).
    ctx : mx.Context, optional
    ignore_extra : tuple of str
        Name prefixes in the file that may be left unused (e.g. ``('decoder.',)`` to load a
        pretraining checkpoint into a model without MLM head). Nothing else is skipped.

    Raises
    ------
    CheckpointMismatchError
        Naming every missing, unexpected or wrongly shaped parameter (with both shapes).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f'no weights file at {path}')
    loaded = _read_params(path)
    if not isinstance(loaded, dict):
        raise CheckpointMismatchError(f'{path}: holds an unnamed list of arrays, not a '
                                      f'name -> array mapping')
    # MXNet prefixes names with "arg:"/"aux:" in files written by export().
    loaded = {k.split(':', 1)[1] if k.startswith(('arg:', 'aux:')) else k: v
              for k, v in loaded.items()}
    aliases = _aliases(model)
    expected = param_dict(model)
    problems: List[str] = []
    assigned: Dict[str, mx.nd.NDArray] = {}
    seen = set()  # canonical names present in the file, fitting or not
    for name, array in loaded.items():
        if name not in aliases:
            if not (ignore_extra and name.startswith(tuple(ignore_extra))):
                problems.append(f'unexpected parameter {name} {tuple(array.shape)} in the file')
            continue
        key = aliases[name]
        seen.add(key)
        shape = tuple(expected[key].shape)
        if not _shapes_fit(tuple(array.shape), shape):
            problems.append(f'parameter {name}: file has shape {tuple(array.shape)}, '
                            f'architecture expects {shape}')
            continue
        assigned[key] = array
    problems += [f'missing parameter {key} {tuple(param.shape)} (not in the file)'
                 for key, param in expected.items() if key not in seen]
    if problems:
        raise CheckpointMismatchError(f'{path} does not fit {getattr(model, "arch", "the model")}'
                                      ':\n  ' + '\n  '.join(problems))
    ctx = ctx or mx.cpu()
    for key, param in expected.items():
        value = assigned[key].astype(param.dtype, copy=False)
        if param._data is None:  # pylint: disable=protected-access
            param._load_init(value, ctx)  # pylint: disable=protected-access
        else:
            param.set_data(value)


def save_model(model: BortModel, folder: str) -> str:
    """Write ``model.params`` and ``arch.json`` into ``folder`` (created if needed).

    Tied weights are written under every name they have, as the released checkpoint does.
    """
    os.makedirs(folder, exist_ok=True)
    arrays = {name: param.data().as_in_context(mx.cpu())
              for name, param in model._collect_params_with_prefix().items()}  # pylint: disable=protected-access
    path = os.path.join(folder, PARAMS_FILE)
    save_arrays(path, arrays)
    save_arch(model.arch, os.path.join(folder, 'arch.json'))
    return path


def load_model(folder: str, use_decoder: Optional[bool] = None, ctx=None) -> BortModel:
    """A model from a folder written by :func:`save_model` (its ``arch.json`` and weights).

    Parameters
    ----------
    folder : str
    use_decoder : bool, optional
        None keeps the MLM head when the file has one; False drops it; True requires it.
    ctx : mx.Context, optional
    """
    arch = load_arch(folder)
    path = os.path.join(folder, PARAMS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f'no weights file {PARAMS_FILE} in {folder}')
    has_decoder = any(name.startswith('decoder.') for name in _read_params(path))
    if use_decoder is None:
        use_decoder = has_decoder
    model = build_model(arch, use_decoder=use_decoder, ctx=ctx, initialize=False)
    load_params(model, path, ctx=ctx, ignore_extra=() if use_decoder else ('decoder.',))
    return model
