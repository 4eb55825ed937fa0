"""INT8 post-training quantization of the encoder with MXNet's oneDNN quantization flow.

The float32 graph is :class:`bort.inference.fast.FastEncoder` (padding-masked variant). MXNet's
``quantize_net_v2`` partitions it for the ``MKLDNN_QUANTIZE`` backend, replaces the dense layers
(with their fused GELU), the two interleaved attention matmuls, the residual additions and the
word-embedding lookup by INT8 oneDNN kernels, and, with calibration, fixes every requantization
range from the float32 activations seen on a few calibration batches:

- ``naive``: the min/max observed on the calibration data;
- ``entropy``: the threshold that minimises the KL divergence between the float32 and the
  quantized activation histograms (slower to calibrate, clips outliers);
- ``percentile`` (this project's): per layer, the ``percentile``-th and ``(100 - percentile)``-th
  percentiles of the values, so rare outliers (BERT-family residual streams and GELU outputs have
  them) do not stretch the INT8 grid; fed to MXNet as a custom collector (``customize``);
- ``none``: no calibration; ranges are computed at run time (slower inference). The attention
  value matmul then stays float32: its INT8 kernel needs a calibrated unsigned softmax input.

What to keep in float32 was chosen by measurement on a real pretrained encoder
(``benchmarks/int8_accuracy.py``; the figures are in README.md): the residual additions carry the
residual stream's outlier dimensions onto one INT8 grid, so they stay float32
(``exclude=('_plus',)``, the default) and weight scales are per channel (the default with
calibration). The next largest error is the input of the second feed-forward layer (GELU
outputs, long-tailed): ``exclude=('_plus', 'ffn_2')`` trades part of the speed-up for it.

LayerNorm and softmax stay in float32 (there is no INT8 kernel for them in MXNet 1.9). With the
fused operator (``fused_ops``, :mod:`bort.inference.kernels`) the residual additions are inside the
float32 ``bort_add_layer_norm`` nodes, which the quantization pass leaves as they are: the same
choice as ``exclude=('_plus',)``, whose pattern then matches nothing.

A quantized model is a deployable folder: ``encoder-symbol.json`` and ``encoder-0000.params``
(the partitioned INT8 graph with its calibrated ranges, loadable by any MXNet 1.9 oneDNN build
through ``SymbolBlock.imports``), ``arch.json`` and ``quantization.json`` (how it was made and,
when measured, its agreement with float32).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

if __name__ == '__main__':  # python -m bort.inference.quantize: thread settings before MXNet starts
    from ..threads import configure_threads
    configure_threads(inference=True)

import mxnet as mx  # noqa: E402
import numpy as np
from mxnet.base import NDArrayHandle, py_str
from mxnet.contrib.quantization import quantize_net_v2
from mxnet.ndarray import NDArray

from ..cli import (add_dataclass_flags, emit, make_parser, parse_configs, run_main,
                   setup_command_logging)
from ..fields import Range, at_least, non_negative, opt
from ..errors import ConfigError, DataFormatError
from ..runlock import building_folder, hold_folder, replace_folder
from ..arch import Architecture
from .fast import FastEncoder, FastModel, _as_output, fast_weights, load_weights
from .kernels import load_fused_ops
from .quantized import INPUT_ORDER, SYMBOL_FILE, QuantizedModel, graph_inputs
from ..model import BortModel

__all__ = ['QuantizeConfig', 'quantize_encoder', 'compare_outputs', 'load_float_encoder', 'main',
           'CALIB_MODES']

log = logging.getLogger(__name__)

CALIB_MODES = ('naive', 'entropy', 'percentile', 'none')
_PREFIX = 'q_'


@dataclass
class QuantizeConfig:
    """How to quantize.

    Attributes
    ----------
    calib_mode : str
        ``naive``, ``entropy``, ``percentile`` or ``none`` (see the module docstring).
    percentile : float
        For ``percentile`` calibration: the upper percentile kept (the lower is its mirror).
    quantized_dtype : str
        ``auto`` (uint8 where the calibrated range is non-negative, else int8), ``int8``,
        ``uint8``.
    granularity : str or None
        ``tensor-wise`` or ``channel-wise`` weight scales; None (default) picks channel-wise
        with calibration and tensor-wise without (MXNet 1.9's channel-wise kernels need
        calibrated ranges: uncalibrated channel-wise crashed, so it is refused).
    exclude : tuple of str
        Layers kept in float32, matched as substrings of the float32 graph's node names
        (``_plus`` the residual additions, ``ffn_2``, ``qkv``, ``proj``, ``word_embed``,
        ``q_0_`` a whole layer, ...).
    num_calib_examples : int, optional
        Use at most this many calibration rows.
    calib_batch_size : int
    fused_ops : bool, optional
        Residual addition + LayerNorm, and the masked attention softmax, as float32 operators
        of :mod:`bort.inference.kernels`; default: when they can be loaded. An artefact made with
        it needs the operator library where it is loaded (built there on first use).
    """

    calib_mode: str = 'naive'
    percentile: float = 99.99
    quantized_dtype: str = 'auto'
    granularity: Optional[str] = None
    exclude: Tuple[str, ...] = ('_plus',)
    num_calib_examples: Optional[int] = None
    calib_batch_size: int = 8
    fused_ops: Optional[bool] = None

    def __post_init__(self):
        if self.calib_mode not in CALIB_MODES:
            raise ConfigError(f'--calib_mode must be one of {", ".join(CALIB_MODES)}, got '
                              f'{self.calib_mode!r}')
        if self.granularity is None:
            self.granularity = 'tensor-wise' if self.calib_mode == 'none' else 'channel-wise'
        if self.granularity not in ('tensor-wise', 'channel-wise'):
            raise ConfigError(f'--granularity must be tensor-wise or channel-wise, '
                              f'got {self.granularity!r}')
        if self.granularity == 'channel-wise' and self.calib_mode == 'none':
            raise ConfigError('--granularity channel-wise needs calibration: use '
                              '--calib_mode naive, entropy or percentile, or '
                              '--granularity tensor-wise')
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f'--percentile must be in (50, 100], got {self.percentile}')
        self.exclude = tuple(self.exclude)


class _PercentileCollector:
    """A calibration collector (MXNet's ``customize`` mode): per layer output, the running
    extremes of each batch's low and high percentiles."""

    def __init__(self, percentile: float):
        self.percentile = percentile
        self.min_max_dict: Dict[str, Tuple[float, float]] = {}

    def collect(self, name, arr) -> None:
        name = py_str(name)
        if not name.endswith('_output'):
            return
        values = NDArray(ctypes.cast(arr, NDArrayHandle), writable=False).asnumpy().ravel()
        if values.size == 0 or values.dtype.kind != 'f':
            return
        low, high = np.percentile(values, [100 - self.percentile, self.percentile])
        old = self.min_max_dict.get(name, (float(low), float(high)))
        self.min_max_dict[name] = (min(old[0], float(low)), max(old[1], float(high)))


def _float_encoder(model: Union[BortModel, FastModel], fused_ops: bool = False
                   ) -> Tuple[Architecture, FastEncoder]:
    """A fresh, un-partitioned, masked FastEncoder holding ``model``'s weights.

    Its dense-layer inputs are not padded: with oneDNN's INT8 kernels padding measured no gain
    (``bort_4_8_768_1024`` 9.1 vs 10.0 ms at 1 x 128, 32.3 vs 33.3 ms at 1 x 512).
    """
    if isinstance(model, FastModel):
        arch, weights = model.arch, model.weights()
    else:
        arch, weights = model.arch.replace(dropout=0.0), fast_weights(model)
    encoder = FastEncoder(arch, masked=True, fused_ops=fused_ops, prefix=_PREFIX)
    encoder.initialize()
    load_weights(encoder, weights)
    return arch, encoder


def quantize_encoder(model: Union[BortModel, FastModel], tokens: np.ndarray,
                     valid_length: np.ndarray, token_types: Optional[np.ndarray] = None,
                     config: Optional[QuantizeConfig] = None,
                     ctx: Optional[mx.Context] = None) -> QuantizedModel:
    """Post-training INT8 quantization of an encoder, calibrated on real inputs.

    Parameters
    ----------
    model : BortModel or FastModel
        The float32 model (a BortModel's MLM head, if any, is not quantized nor kept).
    tokens : (N, seq_len) int
        Calibration token ids (a few batches of real text or task data), padded.
    valid_length : (N,) int
    token_types : (N, seq_len) int, optional
        Only for architectures with token types (zeros when omitted).
    config : QuantizeConfig, optional
    ctx : mx.Context, optional
        Quantization runs on the CPU (oneDNN); only CPU is supported.

    Returns
    -------
    QuantizedModel
    """
    config = config or QuantizeConfig()
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise ValueError('INT8 quantization uses oneDNN kernels: CPU only')
    fused = load_fused_ops() if config.fused_ops is None else config.fused_ops
    arch, encoder = _float_encoder(model, fused)
    tokens = np.asarray(tokens, dtype=np.float32)
    values = {'inputs': tokens, 'valid_length': np.asarray(valid_length, dtype=np.float32),
              'token_types': (np.zeros_like(tokens) if token_types is None
                              else np.asarray(token_types, dtype=np.float32))}
    order = graph_inputs(arch, {'inputs': INPUT_ORDER})
    data = {f'data{i}': values[name] for i, name in enumerate(order)}
    batch = min(config.calib_batch_size, len(tokens))
    # Whole batches only: the calibration module is bound to one batch shape.
    usable = (len(tokens) // batch) * batch
    calib = mx.io.NDArrayIter(data={k: mx.nd.array(v[:usable]) for k, v in data.items()},
                              batch_size=batch, shuffle=False, last_batch_handle='discard')
    log.info('quantizing %s: calibration %s on %d rows of length %d', arch.label,
             config.calib_mode, usable, tokens.shape[1])
    # The pooler (one tanh Dense on one row a sequence: no measurable time) stays float32:
    # quantized, its small pre-activations lost up to 40 % of the pooled output.
    exclude = list(config.exclude) + ['pooler']
    collector, mode = None, config.calib_mode
    if mode == 'percentile':
        collector, mode = _PercentileCollector(config.percentile), 'customize'
    elif mode == 'none':
        exclude.append('selfatt_valatt')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        qnet = quantize_net_v2(
            encoder, quantized_dtype=config.quantized_dtype, quantize_mode='full',
            quantize_granularity=config.granularity, exclude_layers_match=exclude,
            calib_data=calib, calib_mode=mode,
            num_calib_examples=config.num_calib_examples or usable, ctx=ctx,
            LayerOutputCollector=collector, logger=None)
    qnet.hybridize(static_alloc=True, static_shape=True)
    info = {'calib_mode': config.calib_mode, 'percentile': config.percentile,
            'quantized_dtype': config.quantized_dtype,
            'granularity': config.granularity, 'exclude': list(config.exclude),
            'calib_rows': int(usable), 'calib_seq_len': int(tokens.shape[1]),
            'fused_ops': bool(fused), 'inputs': list(INPUT_ORDER),
            'mxnet': mx.__version__}
    return QuantizedModel(arch, qnet, info, ctx)


def compare_outputs(reference: Sequence, candidate: Sequence,
                    valid_length: Optional[np.ndarray] = None) -> Dict[str, float]:
    """How close quantized outputs are to float32 ones.

    Parameters
    ----------
    reference, candidate : array-like of the same shape
        (N, classes) logits, (N, units) pooled features or (N, seq_len, units) sequences.
    valid_length : (N,), optional
        For sequences: only positions below it are compared.

    Returns
    -------
    dict
        ``max_abs``, ``mean_abs``, ``rel_max`` (max_abs / max |reference|), ``cosine`` (mean
        over rows; over real tokens for sequences), and for 2-D inputs ``argmax_agreement``
        (fraction of rows whose argmax is the same).
    """
    ref = reference.asnumpy() if hasattr(reference, 'asnumpy') else np.asarray(reference)
    out = candidate.asnumpy() if hasattr(candidate, 'asnumpy') else np.asarray(candidate)
    if ref.shape != out.shape:
        raise ValueError(f'shapes differ: {ref.shape} vs {out.shape}')
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    logits = ref.ndim == 2
    if ref.ndim == 3 and valid_length is not None:
        keep = np.arange(ref.shape[1])[None, :] < np.asarray(valid_length)[:, None]
        ref, out = ref[keep], out[keep]
    diff = np.abs(ref - out)
    flat_r, flat_o = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    norms = np.linalg.norm(flat_r, axis=1) * np.linalg.norm(flat_o, axis=1)
    cosine = np.sum(flat_r * flat_o, axis=1) / np.maximum(norms, 1e-30)
    result = {'max_abs': float(diff.max()), 'mean_abs': float(diff.mean()),
              'rel_max': float(diff.max() / max(np.abs(ref).max(), 1e-30)),
              'cosine': float(cosine.mean())}
    if logits:
        result['argmax_agreement'] = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return result


def load_float_encoder(folder: str) -> BortModel:
    """The float32 encoder of a model folder or of a fine-tuned classifier folder."""
    if os.path.exists(os.path.join(folder, 'classifier.json')):
        from ..finetune.classifier import load_classifier  # pylint: disable=import-outside-toplevel
        return load_classifier(folder).backbone
    from ..model import load_model  # pylint: disable=import-outside-toplevel
    return load_model(folder, use_decoder=False)


def _read_lines(path: str, tokenizer, rows: int, max_length: int):
    """Token ids and types of the first ``rows`` non-empty lines ("a" or "a<TAB>b")."""
    from ..finetune.classifier import encode_pair  # pylint: disable=import-outside-toplevel
    from ..batching import pad_batch  # pylint: disable=import-outside-toplevel
    encoded = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            parts = line.rstrip('\n').split('\t')
            if parts[0].strip():
                encoded.append(encode_pair(tokenizer, parts[0], parts[1] if len(parts) > 1
                                           else None, max_length))
            if len(encoded) == rows:
                break
    if not encoded:
        raise DataFormatError('no text lines', path)
    length = max(len(ids) for ids, _ in encoded)
    tokens, valid = pad_batch([ids for ids, _ in encoded], length, tokenizer.pad_id)
    return tokens, valid, pad_batch([t for _, t in encoded], length, 0)[0]


@dataclass
class QuantizeCommand:
    """Flags of ``python -m bort.inference.quantize``."""

    model: str = opt('', 'fine-tuned classifier folder, or a model: minilm (the built-in default '
                     'teacher), a project model folder or a Hugging Face folder', required=True)
    calib_text: str = opt('', 'real text, one input a line ("a" or "a<TAB>b"); the first '
                          '--calib_rows lines calibrate, the next --eval_rows are compared',
                          required=True)
    out: str = opt('', 'artefact folder to write', required=True)
    calib_rows: int = opt(64, 'calibration lines', check=at_least(1))
    eval_rows: int = opt(128, 'held-out lines on which INT8 and float32 outputs are compared',
                         check=non_negative)
    max_length: int = opt(128, 'tokens per line at most', check=at_least(3))
    calib_mode: str = opt('naive', 'calibration of the activation ranges (QuantizeConfig)',
                          choices=CALIB_MODES)
    percentile: float = opt(99.99, '--calib_mode percentile: the upper percentile kept',
                            check=Range(low=50, high=100, low_open=True))
    granularity: Optional[str] = opt(None, 'weight scales per tensor or per channel (none: '
                                     'channel-wise with calibration, tensor-wise without)',
                                     choices=('tensor-wise', 'channel-wise'))
    exclude: List[str] = opt(['_plus'], 'node-name substrings kept in float32')
    overwrite: bool = opt(False, 'replace an artefact already in --out')


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.inference.quantize``."""
    parser = make_parser(prog='python -m bort.inference.quantize',
                         description='Quantize a model folder, calibrated on a text file.')
    add_dataclass_flags(parser, QuantizeCommand)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """``python -m bort.inference.quantize``: quantize a model folder, calibrated on a text file."""
    args = parse_configs(build_parser(), [QuantizeCommand], argv)[0]
    setup_command_logging()
    config = QuantizeConfig(calib_mode=args.calib_mode, percentile=args.percentile,
                            granularity=args.granularity, exclude=tuple(args.exclude))
    with hold_folder(args.out, what='python -m bort.inference.quantize'):
        return _quantize_command(args, config)


def _quantize_command(args: 'QuantizeCommand', config: QuantizeConfig) -> Dict:
    """:func:`main` once the settings are checked and ``args.out`` is held: the artefact is
    written aside and swapped in whole, so a failure keeps an earlier one intact."""
    from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
    if os.path.exists(os.path.join(args.out, SYMBOL_FILE)) and not args.overwrite:
        raise FileExistsError(f'{args.out} already holds a quantized model; pass --overwrite '
                              'to replace it')
    # pylint: disable=import-outside-toplevel
    from ..pretrain.default_teacher import resolve_model_dir
    folder = resolve_model_dir(args.model, what='--model', other_folders=True)
    model, tokenizer = load_float_encoder(folder), load_tokenizer(folder)
    rows = args.calib_rows + args.eval_rows
    tokens, valid, types = _read_lines(args.calib_text, tokenizer, rows, args.max_length)
    n = min(args.calib_rows, len(tokens))
    qmodel = quantize_encoder(model, tokens[:n], valid[:n], types[:n], config=config)
    if len(tokens) > n:
        fp32 = FastModel.from_model(model)
        ref = _as_output(fp32(tokens[n:], types[n:], valid[n:]))
        got = _as_output(qmodel(tokens[n:], types[n:], valid[n:]))
        first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
        agreement = compare_outputs(first(ref), first(got), valid[n:])
        qmodel.info['agreement_on_held_out_lines'] = dict(agreement, rows=int(len(tokens) - n))
        log.info('INT8 vs float32 on %d held-out lines: %s', len(tokens) - n, agreement)
    building = building_folder(args.out)
    try:
        qmodel.save(building)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    # The lock file stays with the folder that is swapped out; the new one needs none after.
    replace_folder(building, args.out)
    emit(json.dumps(qmodel.info, indent=2, sort_keys=True))
    return qmodel.info


if __name__ == '__main__':
    run_main(main, (FileExistsError, FileNotFoundError, ValueError), 'bort.inference.quantize')
