"""A fast inference path for the Bort family on CPU (and GPU): same weights, same outputs.

:class:`FastEncoder` is its own graph over the weights of a :class:`~bort.model.BortModel`,
built around what makes MXNet 1.9's run of GluonNLP's ``BERTModel`` slow (profiled with the
operator profiler; README.md "Fast inference on CPU" has the measured figures):

1. **The masked softmax.** ``softmax(..., use_length=True)`` has no oneDNN kernel and runs a
   generic loop. Padded keys are masked here with an additive bias (0 or
   :data:`bort.layers.MASK_VALUE`) before oneDNN's plain softmax, and when no row is padded (a
   length bucket of equal lengths) a second cached graph leaves the mask out altogether.
2. **Per-call weight preparation.** GluonNLP interleaves the query/key/value weights on every
   forward pass; here the interleaved ``(3H, H)`` weight is computed once, when the weights are
   copied in.
3. **oneDNN graph fusion.** Hybridizing with ``backend='MKLDNN'`` fuses GELU into the dense
   layers and turns the two ``interleaved_matmul_selfatt`` operators into oneDNN batched
   matmuls; ``static_alloc``/``static_shape`` plan memory once per input shape.
4. **Zero-padded 1024-wide inputs.** oneDNN 2.4's float32 GEMM left the second thread idle when a
   dense layer's input width K is a multiple of 1024. With ``pad_inputs`` (default on the oneDNN
   backend) such layers get :data:`PAD_CHANNELS` extra input channels with zero weights. The
   first feed-forward layer's extra output units (zero weights and bias, GELU(0) = 0) are the
   second one's zero inputs for free; the other padded inputs are the activations with one
   shared (rows, 16) zero block concatenated in 2-D (a 3-D concat or ``pad`` was far slower).
   ``benchmarks/bench_inference.py``'s ``fast-unpadded`` engine shows the effect side by side.
5. **Fused residual addition + LayerNorm, and a masked softmax.** ``bort_add_layer_norm``
   (:mod:`bort.inference.kernels`, C++ built on first use) adds the residual, normalises and
   writes the zero channels of the next dense layer's input in one pass (with the embeddings it
   takes the position rows as the residual); in the padded graph ``bort_masked_softmax`` reads
   ``valid_length`` and normalises each row over its valid keys. Without a compiler (or with
   ``BORT_FUSED_OPS=0``) the graph keeps MXNet's operators.

What remains is the dense layers. The graph keeps GluonNLP's (length, batch, units) order, which
the interleaved attention operators need, with the rows flattened to 2-D between them, and
transposes once at the end. It is inference only: no dropout, no MLM head. A GPU context is
accepted (``backend`` and the padding are then off; the oneDNN rewrites are CPU-only) but
untested: this project's machines have the CPU wheel.

Mixed-length inputs are batched by :func:`bort.batching.bucket_batches` (a few padded lengths,
so a few cached graphs).

``dtype='bfloat16'`` (CPUs with AVX512-BF16 or AMX, :mod:`bort.hardware`): the four dense layers
of every transformer layer hold bfloat16 weights and biases and run bfloat16 GEMMs (float32
accumulation inside oneDNN); their inputs are cast to bfloat16 and their outputs back to float32,
except the first feed-forward layer's GELU output, which feeds the second one in bfloat16.
Both casts round to nearest (``amp_cast``; MXNet 1.9's ``astype`` to bfloat16 truncates).
Embeddings, residual stream, LayerNorm, attention scores and softmax stay float32 (MXNet 1.9's
interleaved attention matmuls are float32-only on CPU), as does the pooler.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple, Union

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from ..arch import Architecture
from ..hardware import require_bf16
from ..layers import BFLOAT16, COMPUTE_DTYPES, MASK_VALUE
from .kernels import OP_ADD_LAYER_NORM, OP_MASKED_SOFTMAX, load_fused_ops
from ..model import BortModel, load_model
from .weights import fast_weights, load_weights

__all__ = ['FastEncoder', 'FastModel', 'fast_weights', 'load_weights', 'padded_width',
           'load_fast', 'PAD_CHANNELS', 'DTYPES', 'BFLOAT16']

log = logging.getLogger(__name__)

#: Zero channels appended to a dense layer's input whose width is a multiple of 1024.
PAD_CHANNELS = 16
#: Compute types of the dense layers (MXNet's bfloat16 is a structured numpy dtype).
DTYPES = COMPUTE_DTYPES


def padded_width(width: int) -> int:
    """The input width a dense layer gets with ``pad_inputs``: ``width + PAD_CHANNELS`` when
    ``width`` is a multiple of 1024 (oneDNN 2.4's slow case, see the module docstring)."""
    return width + PAD_CHANNELS if width % 1024 == 0 else width


class _AddNorm(HybridBlock):
    """LayerNorm(x + residual): MXNet's two operators, or the fused one (:mod:`bort.inference.kernels`).

    x: (rows, H); residual: (rows, H), or (rows, H + pad) zero-padded when fused, or with
    ``broadcast`` any shape that broadcasts to x's (fused: rows dividing x's rows, see
    ``bort/inference/csrc/fused_ops.cc``); output (rows, H), or (rows, H + pad) with zero channels when
    fused.
    """

    def __init__(self, units: int, eps: float, fused: bool, pad: int, broadcast: bool = False,
                 prefix=None):
        super().__init__(prefix=prefix)
        self._eps, self._fused, self._pad, self._broadcast = eps, fused, pad, broadcast
        with self.name_scope():
            self.gamma = self.params.get('gamma', shape=(units,), init='ones')
            self.beta = self.params.get('beta', shape=(units,), init='zeros')

    def hybrid_forward(self, F, x, residual, gamma, beta):  # pylint: disable=arguments-differ
        if self._fused:
            return getattr(F, OP_ADD_LAYER_NORM)(x, residual, gamma, beta, eps=self._eps,
                                                 pad=self._pad)
        # An elementwise '+' (node '_plus'), as before: INT8 keeps those in float32.
        total = F.broadcast_add(x, residual) if self._broadcast else x + residual
        return F.LayerNorm(total, gamma, beta, axis=-1, eps=self._eps)


class _FastLayer(HybridBlock):
    """One post-LayerNorm transformer layer with a fused, pre-interleaved QKV projection."""

    def __init__(self, arch: Architecture, pad_inputs: bool = False, fused_ops: bool = False,
                 dtype: str = 'float32', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self._heads, self._fused, self._bf16 = arch.num_heads, fused_ops, dtype == 'bfloat16'
        h, eps = arch.units, arch.layer_norm_eps
        # Input widths of the dense layers, padded with zero channels where oneDNN is slow.
        h_in = padded_width(h) if pad_inputs else h
        i_pad = padded_width(arch.hidden_size) if pad_inputs else arch.hidden_size
        # Fused, the normalised outputs carry the zero channels themselves: no widening copy.
        pad_out = h_in - h if fused_ops else 0
        with self.name_scope():
            self.qkv = nn.Dense(3 * h, flatten=False, in_units=h_in, prefix='qkv_')
            self.proj = nn.Dense(h, flatten=False, in_units=h_in, prefix='proj_')
            self.ln_att = _AddNorm(h, eps, fused_ops, pad_out, prefix='ln_att_')
            # A padded FFN width costs no copy: the extra output units have zero weights and
            # bias, GELU(0) = 0, so they are the zero input channels ffn_2 expects.
            self.ffn_1 = nn.Dense(i_pad, flatten=False, in_units=h_in, prefix='ffn_1_')
            self.ffn_2 = nn.Dense(h, flatten=False, in_units=i_pad, prefix='ffn_2_')
            self.ln_ffn = _AddNorm(h, eps, fused_ops, pad_out, prefix='ln_ffn_')

    @staticmethod
    def _widen(F, x, zeros):
        """(rows, H) -> (rows, H_in): the shared zero channels appended (no-op unpadded)."""
        return x if zeros is None else F.concat(x, zeros, dim=1)

    def hybrid_forward(self, F, x, grid, zeros=None, mask=None):
        # pylint: disable=arguments-differ
        """x: (L*B, H), rows in (length, batch) order, or (L*B, H_in) with its zero channels
        when fused; grid: (L, B), gives the shape only; zeros: (L*B, H_in - H) or None;
        mask: (B, 1, 1, L) additive bias, or when fused the valid lengths (B,), or None.
        Returns the same layout as x."""
        wide = (lambda v: v) if self._fused else (lambda v: self._widen(F, v, zeros))
        same = lambda v: v  # noqa: E731
        low = (lambda v: F.amp_cast(v, dtype=BFLOAT16)) if self._bf16 else same  # noqa: E731
        high = (lambda v: F.amp_cast(v, dtype='float32')) if self._bf16 else same  # noqa: E731
        qkv = F.reshape_like(high(self.qkv(low(wide(x)))), grid,
                             lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)  # (L, B, 3H)
        scores = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=self._heads)  # (B*A, L, L)
        if mask is not None and self._fused:
            att = getattr(F, OP_MASKED_SOFTMAX)(scores, mask, heads=self._heads)
        else:
            if mask is not None:
                scores = F.broadcast_add(scores.reshape((-4, -1, self._heads, 0, 0)), mask)
                scores = scores.reshape((-3, 0, 0))
            att = F.softmax(scores, axis=-1)
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv, att, heads=self._heads)
        context = F.reshape(context, shape=(-3, 0))                       # (L*B, H)
        x = self.ln_att(high(self.proj(low(self._widen(F, context, zeros)))), x)
        # GELU (erf form, as GluonNLP's) right after the dense layer so oneDNN fuses it; in
        # bfloat16 it stays bfloat16 for ffn_2.
        hidden = F.LeakyReLU(self.ffn_1(low(wide(x))), act_type='gelu')
        return self.ln_ffn(high(self.ffn_2(hidden)), x)

    def cast_dense(self) -> None:
        """The four dense layers' weights and biases to bfloat16, rounded to nearest (MXNet's
        ``astype``, which ``Parameter.cast`` uses, truncates: twice the error, biased to 0)."""
        for dense in (self.qkv, self.proj, self.ffn_1, self.ffn_2):
            for param in dense.params.values():
                rounded = mx.nd.amp_cast(param.data(), dtype=BFLOAT16)
                param.cast(BFLOAT16)
                param.set_data(rounded)


class FastEncoder(HybridBlock):
    """Inference graph of :class:`bort.model.BortModel` without MLM head.

    Parameters
    ----------
    arch : Architecture
    masked : bool
        Build the graph with ``valid_length`` (padding masked in attention, padded outputs
        zeroed); False builds the unpadded graph whose forward takes the tokens only.
    pad_inputs : bool
        Give dense layers whose input width is a multiple of 1024 that width plus
        ``PAD_CHANNELS`` zero channels (weights zero-padded by :func:`load_weights`); same
        outputs, faster GEMMs with oneDNN 2.4 (see the module docstring).
    fused_ops : bool
        Residual addition + LayerNorm (+ zero channels) as one operator, and the padded graph's
        attention softmax over valid keys only (:func:`bort.inference.kernels.load_fused_ops`); raises
        RuntimeError when they cannot be loaded.
    dtype : {'float32', 'bfloat16'}
        The dense layers' compute type (see the module docstring). The graph is built float32
        throughout; :meth:`cast_dense` turns the dense weights to bfloat16 once they are loaded.

    Inputs
    ------
    In :class:`bort.model.BortModel`'s order (GluonNLP's), each present only when it applies:

    inputs : (batch_size, seq_len) float or int
        Token ids.
    token_types : (batch_size, seq_len), only when the architecture has token types
    valid_length : (batch_size,) float, only when ``masked``

    Outputs
    -------
    sequence_outputs : (batch_size, seq_len, units)
    pooled_output : (batch_size, units), only with a pooler
    """

    def __init__(self, arch: Architecture, masked: bool = True, pad_inputs: bool = False,
                 fused_ops: bool = False, dtype: str = 'float32', prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
        if fused_ops and not load_fused_ops():
            raise RuntimeError('fused_ops=True but the fused operators could not be built or '
                               'loaded (see the warning above); use fused_ops=False')
        self.arch, self.masked = arch, masked
        self.pad_inputs, self.fused_ops, self.dtype = pad_inputs, fused_ops, dtype
        h = arch.units
        self._extra_channels = padded_width(h) - h if pad_inputs else 0
        # Fused, every normalised output carries the zero channels: no widening copy of x.
        pad_out = self._extra_channels if fused_ops else 0
        with self.name_scope():
            self.word_embed = nn.Embedding(arch.vocab_size, h, prefix='word_embed_')
            self.token_type_embed = (nn.Embedding(arch.token_type_vocab_size, h,
                                                  prefix='token_type_embed_')
                                     if arch.token_type_vocab_size else None)
            self.position_weight = self.params.get('position_weight', shape=(arch.max_length, h))
            self.ln_embed = _AddNorm(h, arch.layer_norm_eps, fused_ops, pad_out,
                                     broadcast=True, prefix='ln_embed_')
            self.layers = nn.HybridSequential(prefix='layers_')
            for i in range(arch.num_layers):
                self.layers.add(_FastLayer(arch, pad_inputs, fused_ops, dtype, prefix=f'{i}_'))
            self.pooler = (nn.Dense(h, activation='tanh', flatten=False, in_units=h,
                                    prefix='pooler_') if arch.use_pooler else None)

    def hybrid_forward(self, F, inputs, *args, position_weight=None):
        # pylint: disable=arguments-differ
        args = list(args)
        token_types = args.pop(0) if self.token_type_embed is not None else None
        valid_length = args.pop(0) if self.masked else None
        tokens = F.transpose(inputs)                                       # (L, B)
        x = self.word_embed(tokens)                                        # (L, B, H)
        if token_types is not None:
            x = x + self.token_type_embed(F.transpose(token_types))
        positions = F.slice_like(position_weight, tokens, axes=(0,))       # (L, H)
        if self.fused_ops:  # rows (l, b) meet position row l; out: the layers' width
            x = self.ln_embed(F.reshape(x, shape=(-3, 0)), positions)      # (L*B, H_in)
        else:
            x = F.reshape(self.ln_embed(x, F.expand_dims(positions, axis=1)),
                          shape=(-3, 0))                                   # (L*B, H)
        mask = None
        if valid_length is not None and self.fused_ops:
            mask = valid_length  # the fused softmax reads the lengths directly
        elif valid_length is not None:
            steps = F.contrib.arange_like(tokens, axis=0)                   # (L,)
            padded = F.broadcast_greater_equal(F.reshape(steps, shape=(1, -1)),
                                               F.reshape(valid_length, shape=(-1, 1)))
            mask = F.reshape(padded * MASK_VALUE, shape=(0, 1, 1, -1))     # (B, 1, 1, L)
        zeros = None
        if self._extra_channels:
            # One zero block shared by every widened input: a 2-D concat is a cheap copy.
            zeros = F.zeros_like(F.slice_axis(x, axis=1, begin=0, end=self._extra_channels))
        for layer in self.layers:
            x = layer(x, tokens, zeros, mask)
        if zeros is not None and self.fused_ops:
            x = F.slice_axis(x, axis=1, begin=0, end=self.arch.units)
        x = F.reshape_like(x, tokens, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)
        if valid_length is not None:
            x = F.SequenceMask(x, sequence_length=valid_length, use_sequence_length=True, axis=0)
        outputs = [F.transpose(x, axes=(1, 0, 2))]                         # (B, L, H)
        if self.pooler is not None:
            first = F.reshape(F.slice_axis(x, axis=0, begin=0, end=1), shape=(-3, 0))
            outputs.append(self.pooler(first))                             # (B, H)
        return tuple(outputs) if len(outputs) > 1 else outputs[0]

    def cast_dense(self) -> None:
        """Give the transformer layers' dense weights the encoder's ``dtype`` (after loading
        float32 weights: :func:`load_weights` writes float32)."""
        if self.dtype == 'bfloat16':
            for layer in self.layers:
                layer.cast_dense()


class FastModel:
    """The fast float32 inference engine: two cached graphs (padded / unpadded), shared weights.

    Parameters
    ----------
    arch : Architecture
    weights : dict of str -> numpy array
        As returned by :func:`fast_weights`.
    ctx : mx.Context, optional
        Defaults to the CPU.
    backend : str or None
        Subgraph backend for graph fusion; ``'MKLDNN'`` (default on CPU) or None. Ignored on GPU.
    static : bool
        Hybridize with ``static_alloc`` and ``static_shape``.
    pad_inputs : bool, optional
        See :class:`FastEncoder`; default: on with a oneDNN backend, off otherwise.
    fused_ops : bool, optional
        See :class:`FastEncoder`; default: on for the CPU when :mod:`bort.inference.kernels` can build
        and load its library.
    dtype : {'float32', 'bfloat16'}
        See :class:`FastEncoder`. bfloat16 runs on the CPU only, and only where
        :func:`bort.hardware.cpu_support` says oneDNN has bfloat16 kernels: elsewhere
        :class:`bort.hardware.UnsupportedHardware` is raised before anything is built. Its
        ``pad_inputs`` default is off (the padding answers a float32 GEMM's slow case).

    Call
    ----
    ``fast(inputs, token_types=None, valid_length=None)`` (:class:`bort.model.BortModel`'s order)
    with NDArrays or numpy arrays of shapes (batch, seq_len), (batch, seq_len), (batch,); omitted
    token types are zeros, an omitted length means every row is full. Returns what
    :class:`FastEncoder` returns.
    """

    def __init__(self, arch: Architecture, weights: Dict[str, np.ndarray], ctx=None,
                 backend: Optional[str] = 'MKLDNN', static: bool = True,
                 pad_inputs: Optional[bool] = None, fused_ops: Optional[bool] = None,
                 dtype: str = 'float32'):
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
        self.arch = arch.replace(dropout=0.0)
        self.ctx = ctx or mx.cpu()
        if dtype == 'bfloat16':
            if self.ctx.device_type != 'cpu':
                raise ValueError('dtype bfloat16 is for the CPU (oneDNN kernels)')
            require_bf16('the bfloat16 fast path')
        if self.ctx.device_type != 'cpu':
            backend = None
        self.backend = backend
        if pad_inputs is None:
            pad_inputs = backend is not None and dtype == 'float32'
        if fused_ops is None:
            fused_ops = self.ctx.device_type == 'cpu' and load_fused_ops()
        self.pad_inputs, self.fused_ops, self.dtype = pad_inputs, fused_ops, dtype
        options = dict(pad_inputs=pad_inputs, fused_ops=fused_ops, dtype=dtype, prefix='fast_')
        self.masked = FastEncoder(self.arch, masked=True, **options)
        self.unmasked = FastEncoder(self.arch, masked=False, params=self.masked.collect_params(),
                                    **options)
        # Inference only: no gradient buffers (they would double the weights' memory).
        self.masked.collect_params().setattr('grad_req', 'null')
        self.masked.initialize(ctx=self.ctx)
        load_weights(self.masked, weights)
        self.masked.cast_dense()  # the unmasked graph shares these parameters
        for block in (self.masked, self.unmasked):
            block.hybridize(static_alloc=static, static_shape=static, backend=backend)
        log.debug('fast path for %s on %s: %s, backend %s, static memory %s, padded inputs %s, '
                  'fused LayerNorm %s', self.arch.label, self.ctx, dtype, backend, static,
                  pad_inputs, fused_ops)

    @classmethod
    def from_model(cls, model: BortModel, **kwargs) -> 'FastModel':
        """A fast engine with the weights of a :class:`BortModel` (its MLM head is not used)."""
        return cls(model.arch, fast_weights(model), **kwargs)

    @classmethod
    def from_folder(cls, folder: str, **kwargs) -> 'FastModel':
        """A fast engine from a model folder (``model.params`` + ``arch.json``)."""
        return cls.from_model(load_model(folder, use_decoder=False), **kwargs)

    def weights(self) -> Dict[str, np.ndarray]:
        """The weights, as :func:`fast_weights` gives them (without input padding; float32,
        bfloat16 weights widened exactly)."""
        logical = _param_shapes(FastEncoder(self.arch, pad_inputs=False))
        named = self.masked._collect_params_with_prefix()  # pylint: disable=protected-access
        return {name: param.data().astype('float32').asnumpy()[
                    tuple(slice(0, n) for n in logical[name])]
                for name, param in named.items()}

    def _nd(self, array, dtype='float32') -> mx.nd.NDArray:
        if isinstance(array, mx.nd.NDArray):
            return array.as_in_context(self.ctx)
        return mx.nd.array(np.asarray(array), ctx=self.ctx, dtype=dtype)

    def __call__(self, inputs, token_types=None, valid_length=None):
        inputs = self._nd(inputs)
        args = [inputs]
        if self.arch.token_type_vocab_size:
            args.append(mx.nd.zeros(inputs.shape, ctx=self.ctx) if token_types is None
                        else self._nd(token_types))
        if valid_length is not None:
            lengths = (valid_length.asnumpy() if isinstance(valid_length, mx.nd.NDArray)
                       else np.asarray(valid_length))
            if not np.all(lengths >= inputs.shape[1]):
                return _as_output(self.masked(*args, self._nd(valid_length)))
        return _as_output(self.unmasked(*args))


def _param_shapes(encoder: FastEncoder) -> Dict[str, Tuple[int, ...]]:
    named = encoder._collect_params_with_prefix()  # pylint: disable=protected-access
    return {name: tuple(param.shape) for name, param in named.items()}


def _as_output(out):
    """Hybridized blocks return lists; give a tuple (or the single array) like eager mode."""
    if isinstance(out, (list, tuple)):
        return tuple(out) if len(out) > 1 else out[0]
    return out


def load_fast(folder_or_model: Union[str, BortModel], **kwargs) -> FastModel:
    """:class:`FastModel` from a model folder or a built model."""
    if isinstance(folder_or_model, str):
        return FastModel.from_folder(folder_or_model, **kwargs)
    return FastModel.from_model(folder_or_model, **kwargs)
