"""An INT8 encoder made by :mod:`bort.inference.quantize`: the deployable artefact, loaded and run.

A quantized model is a folder: ``encoder-symbol.json`` and ``encoder-0000.params`` (the
partitioned INT8 graph with its calibrated ranges, loadable by any MXNet 1.9 oneDNN build
through ``SymbolBlock.imports``), ``arch.json`` and ``quantization.json`` (how it was made,
the order of the graph's inputs and, when measured, its agreement with float32).
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional

import mxnet as mx
import numpy as np

from ..arch import Architecture, load_arch, save_arch
from .fast import _as_output
from .kernels import load_fused_ops

__all__ = ['QuantizedModel', 'graph_inputs', 'SYMBOL_FILE', 'PARAMS_FILE', 'CONFIG_FILE',
           'INPUT_ORDER']

SYMBOL_FILE = 'encoder-symbol.json'
PARAMS_FILE = 'encoder-0000.params'
CONFIG_FILE = 'quantization.json'
#: The graph's inputs in order (:class:`bort.model.BortModel`'s), recorded in CONFIG_FILE;
#: token_types only for architectures that have them.
INPUT_ORDER = ('inputs', 'token_types', 'valid_length')
#: The order of artefacts written before CONFIG_FILE recorded it.
_LEGACY_INPUT_ORDER = ('inputs', 'valid_length', 'token_types')


class QuantizedModel:
    """An INT8 encoder: a partitioned MXNet graph plus its architecture.

    Call
    ----
    ``qmodel(inputs, token_types=None, valid_length=None)`` (:class:`bort.model.BortModel`'s
    order): inputs (batch, seq_len) token ids, token_types (batch, seq_len) when the architecture
    has them (omitted: zeros), valid_length (batch,) (omitted: every row full). Returns the sequence outputs (batch, seq_len, units), and the pooled
    output (batch, units) as a second element when the architecture has a pooler; float32.
    """

    def __init__(self, arch: Architecture, block: mx.gluon.SymbolBlock, info: Dict,
                 ctx: Optional[mx.Context] = None):
        self.arch, self.block, self.info = arch, block, info
        self.ctx = ctx or mx.cpu()

    def _nd(self, array) -> mx.nd.NDArray:
        if isinstance(array, mx.nd.NDArray):
            return array.as_in_context(self.ctx)
        return mx.nd.array(np.asarray(array), ctx=self.ctx, dtype='float32')

    def __call__(self, inputs, token_types=None, valid_length=None):
        inputs = self._nd(inputs)
        values = {'inputs': inputs,
                  'token_types': (mx.nd.zeros(inputs.shape, ctx=self.ctx) if token_types is None
                                  else self._nd(token_types)),
                  'valid_length': (mx.nd.full((inputs.shape[0],), inputs.shape[1], ctx=self.ctx)
                                   if valid_length is None else self._nd(valid_length))}
        return _as_output(self.block(*[values[name] for name in self.graph_inputs]))

    @property
    def graph_inputs(self) -> List[str]:
        """What the graph's inputs ``data0, data1, ...`` are, in order."""
        return graph_inputs(self.arch, self.info)

    @property
    def input_names(self) -> List[str]:
        return [f'data{i}' for i in range(len(self.graph_inputs))]

    def save(self, folder: str) -> str:
        """Write the deployable artefact into ``folder``; returns the folder."""
        os.makedirs(folder, exist_ok=True)
        # Written by hand rather than with ``export``, which needs a forward pass first (an
        # un-run block exported an empty parameter file).
        graph = self.block(*[mx.sym.var(name) for name in self.input_names])
        graph = mx.sym.Group(graph) if isinstance(graph, (list, tuple)) else graph
        graph.save(os.path.join(folder, SYMBOL_FILE), remove_amp_cast=False)
        aux = set(graph.list_auxiliary_states())
        arrays = {('aux:' if name in aux else 'arg:') + name: param.data().as_in_context(mx.cpu())
                  for name, param in self.block.collect_params().items()}
        mx.nd.save(os.path.join(folder, PARAMS_FILE), arrays)
        save_arch(self.arch, os.path.join(folder, 'arch.json'))
        with open(os.path.join(folder, CONFIG_FILE), 'w') as f:
            json.dump(self.info, f, indent=2, sort_keys=True)
            f.write('\n')
        return folder

    @classmethod
    def load(cls, folder: str, ctx: Optional[mx.Context] = None,
             static: bool = True) -> 'QuantizedModel':
        """Load an artefact written by :meth:`save` (hybridized with static memory)."""
        ctx = ctx or mx.cpu()
        for name in (SYMBOL_FILE, PARAMS_FILE):
            if not os.path.exists(os.path.join(folder, name)):
                raise FileNotFoundError(f'no {name} in {folder}: not a quantized model folder')
        arch = load_arch(folder)
        info = {}
        if os.path.exists(os.path.join(folder, CONFIG_FILE)):
            with open(os.path.join(folder, CONFIG_FILE)) as f:
                info = json.load(f)
        if info.get('fused_ops') and not load_fused_ops():
            raise RuntimeError(f'{folder} was quantized with the fused LayerNorm operator, '
                               'which could not be built or loaded here (see the warning above)')
        names = [f'data{i}' for i in range(len(graph_inputs(arch, info)))]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # "Cannot decide type" for integer-valued inputs
            block = mx.gluon.SymbolBlock.imports(os.path.join(folder, SYMBOL_FILE), names,
                                                 os.path.join(folder, PARAMS_FILE), ctx=ctx)
        block.hybridize(static_alloc=static, static_shape=static)
        return cls(arch, block, info, ctx)


def graph_inputs(arch: Architecture, info: Dict) -> List[str]:
    """The graph's inputs in order: ``info['inputs']`` (older artefacts: the legacy order),
    without token_types for architectures that have none."""
    order = info.get('inputs', _LEGACY_INPUT_ORDER)
    return [name for name in order if name != 'token_types' or arch.token_type_vocab_size]
