"""A student built from its teacher's weights: layers, heads, width and FFN neurons sliced out.

The Bort paper trains every candidate from scratch and cites the alternative, "initializing with
the original weights of the larger model" (DistilBERT takes every other layer of BERT;
TinyBERT/AutoTinyBERT inherit a sub-network; DynaBERT keeps the heads and neurons that matter
most). :func:`extract_student` is that alternative for any tuple <D, A, H, I> that fits inside
the teacher; :func:`check_fits` says, in one line naming the dimension, when one does not.

What is kept (the project's reading, each a visible choice):

- **layers** ``even`` (default): layers ``round((k + 1)·D_T / D) − 1`` for k < D, evenly spaced
  and ending with the teacher's last layer (the one its MLM head reads; D_T = 6, D = 3 keeps
  1, 3, 5 as DistilBERT's every other layer); ``first``: layers 0 … D − 1.
- **units** ``magnitude`` (default) or ``first``, for the width H (the residual stream, the
  same dimensions in every layer, the embeddings and both heads), the attention heads and the
  FFN neurons. ``magnitude`` is data-free importance: a width dimension by the summed |scale|
  of every LayerNorm on it (each sub-layer's output passes one), a head by the norm of its
  value-to-output path ‖W_V,h‖·‖W_O,h‖, a neuron by ‖W_1,n‖·‖W_2,n‖ (its in- and out-weights).
  Kept items stay in the teacher's order.
- **heads** of another size: a student head of size d = H/A ≤ the teacher's d_T takes the first
  d query/key/value rows of a kept teacher head (A ≤ A_T needed); a larger one (d > d_T) takes
  d/d_T… whole teacher heads, consecutive in the kept order, whose scores it then adds: an
  initialisation, no longer the teacher's function.

Everything kept as is: the vocabulary (the student must share it), the positions, the token
types, the MLM head's output bias. The teacher's own tuple gives back the teacher exactly.
"""
from __future__ import annotations

import logging
from typing import Dict, List

import mxnet as mx
import numpy as np

from .arch import Architecture, ArchitectureError
from .model import BortModel, build_model, param_dict

__all__ = ['LAYER_CHOICES', 'UNIT_CHOICES', 'check_fits', 'kept_layers', 'extract_student']

log = logging.getLogger(__name__)

LAYER_CHOICES = ('even', 'first')
UNIT_CHOICES = ('magnitude', 'first')

_CELL = 'encoder.transformer_cells.{}.'


def kept_layers(teacher_layers: int, layers: int, how: str = 'even') -> List[int]:
    """Indices of the teacher layers a ``layers``-layer student keeps, ascending."""
    if how not in LAYER_CHOICES:
        raise ValueError(f'unknown layer choice {how!r}; choose from {LAYER_CHOICES}')
    if how == 'first':
        return list(range(layers))
    return [int(round((k + 1) * teacher_layers / layers)) - 1 for k in range(layers)]


def check_fits(student: Architecture, teacher: Architecture) -> None:
    """Raise :class:`~bort.arch.ArchitectureError` (one line naming the dimension) unless
    ``student`` can be sliced out of ``teacher``."""
    pairs = (('num_layers (D)', student.num_layers, teacher.num_layers),
             ('units (H)', student.units, teacher.units),
             ('hidden_size (I)', student.hidden_size, teacher.hidden_size),
             ('max_length', student.max_length, teacher.max_length),
             ('token_type_vocab_size', student.token_type_vocab_size,
              teacher.token_type_vocab_size))
    for name, mine, theirs in pairs:
        if mine > theirs:
            raise ArchitectureError(f'cannot extract {student.label} from the teacher '
                                    f'{teacher.label}: {name} {mine} > the teacher\'s {theirs}')
    if student.vocab_size != teacher.vocab_size:
        raise ArchitectureError(f'cannot extract {student.label}: vocab_size '
                                f'{student.vocab_size} differs from the teacher\'s '
                                f'{teacher.vocab_size}')
    head, teacher_head = student.units // student.num_heads, teacher.units // teacher.num_heads
    if head <= teacher_head and student.num_heads > teacher.num_heads:
        raise ArchitectureError(f'cannot extract {student.label} from {teacher.label}: '
                                f'num_heads (A) {student.num_heads} > the teacher\'s '
                                f'{teacher.num_heads} (heads of {head} units)')
    if head > teacher_head and head % teacher_head:
        raise ArchitectureError(f'cannot extract {student.label} from {teacher.label}: its '
                                f'heads of {head} units are not a whole number of the '
                                f'teacher\'s heads of {teacher_head}')
    if student.use_pooler and not teacher.use_pooler:
        raise ArchitectureError(f'cannot extract {student.label}: the teacher has no pooler')


def _top(scores: np.ndarray, count: int, how: str) -> np.ndarray:
    """Indices of the ``count`` items to keep, ascending (``first`` or by largest score)."""
    if how == 'first':
        return np.arange(count)
    order = np.argsort(-scores, kind='stable')[:count]
    return np.sort(order)


def _width(weights: Dict[str, np.ndarray], units: int, how: str) -> np.ndarray:
    gammas = [w for name, w in weights.items() if name.endswith('gamma')]
    return _top(np.sum(np.abs(gammas), axis=0), units, how)


def _head_rows(weights: Dict[str, np.ndarray], cell: str, teacher: Architecture,
               student: Architecture, how: str) -> np.ndarray:
    """The query/key/value output rows (and output-projection columns) the student keeps."""
    size = teacher.units // teacher.num_heads
    value = weights[cell + 'attention_cell.proj_value.weight'].reshape(
        teacher.num_heads, size, -1)
    out = weights[cell + 'proj.weight'].reshape(-1, teacher.num_heads, size)
    scores = np.linalg.norm(value, axis=(1, 2)) * np.linalg.norm(out, axis=(0, 2))
    head = student.units // student.num_heads
    if head <= size:
        kept = _top(scores, student.num_heads, how)
        return np.concatenate([h * size + np.arange(head) for h in kept])
    kept = _top(scores, student.units // size, how)
    return np.concatenate([h * size + np.arange(size) for h in kept])


def _neurons(weights: Dict[str, np.ndarray], cell: str, count: int, how: str) -> np.ndarray:
    inner = np.linalg.norm(weights[cell + 'ffn.ffn_1.weight'], axis=1)
    outer = np.linalg.norm(weights[cell + 'ffn.ffn_2.weight'], axis=0)
    return _top(inner * outer, count, how)


def _slice(name: str, value: np.ndarray, width: np.ndarray, rows: Dict[str, np.ndarray],
           source_cell: str) -> np.ndarray:
    """One student parameter from the teacher's ``value`` (already renamed to the student's
    layer); ``rows`` holds the kept head rows (``heads``) and neurons (``neurons``)."""
    if name.startswith(('word_embed.', 'token_type_embed.', 'encoder.position_weight')):
        return value[:, width]
    if name.endswith(('gamma', 'beta')):
        return value[width]
    if name == 'decoder.3.bias':
        return value
    if name.startswith(('decoder.0.', 'pooler.')):
        return value[np.ix_(width, width)] if value.ndim == 2 else value[width]
    local = name[len(source_cell):]
    heads, neurons = rows['heads'], rows['neurons']
    if local.startswith('attention_cell.proj_'):
        return value[np.ix_(heads, width)] if value.ndim == 2 else value[heads]
    if local.startswith('proj.'):
        return value[np.ix_(width, heads)] if value.ndim == 2 else value[width]
    if local.startswith('ffn.ffn_1.'):
        return value[np.ix_(neurons, width)] if value.ndim == 2 else value[neurons]
    if local.startswith('ffn.ffn_2.'):
        return value[np.ix_(width, neurons)] if value.ndim == 2 else value[width]
    raise KeyError(f'no slicing rule for parameter {name}')


def extract_student(teacher: BortModel, arch: Architecture, layers: str = 'even',
                    units: str = 'magnitude', ctx=None) -> BortModel:
    """A model of ``arch`` whose every weight is a slice of ``teacher``'s.

    Parameters
    ----------
    teacher : BortModel
        With or without an MLM head; the student gets one when the teacher has one.
    arch : Architecture
        The student's tuple; must fit (:func:`check_fits`). Its dropout and layer-norm epsilon
        are its own.
    layers : {'even', 'first'}
        Which teacher layers (:func:`kept_layers`).
    units : {'magnitude', 'first'}
        How width dimensions, heads and FFN neurons are chosen (module docstring).
    ctx : mx.Context, optional

    Returns
    -------
    BortModel
    """
    if units not in UNIT_CHOICES:
        raise ValueError(f'unknown unit choice {units!r}; choose from {UNIT_CHOICES}')
    check_fits(arch, teacher.arch)
    weights = {name: p.data().asnumpy() for name, p in param_dict(teacher).items()}
    width = _width(weights, arch.units, units)
    student = build_model(arch, use_decoder=teacher.has_decoder, ctx=ctx)
    chosen = kept_layers(teacher.arch.num_layers, arch.num_layers, layers)
    plan = {}
    for mine, theirs in enumerate(chosen):
        cell = _CELL.format(theirs)
        plan[mine] = (cell, {'heads': _head_rows(weights, cell, teacher.arch, arch, units),
                             'neurons': _neurons(weights, cell, arch.hidden_size, units)})
    for name, param in param_dict(student).items():
        source, rows, cell = name, {}, ''
        if name.startswith('encoder.transformer_cells.'):
            index = int(name.split('.')[2])
            cell, rows = plan[index]
            source = cell + name[len(_CELL.format(index)):]
        value = _slice(name, weights[source], width, rows, cell) if source in weights else None
        if value is None:
            raise KeyError(f'the teacher has no parameter {source}')
        if value.shape != param.shape:
            raise AssertionError(f'{name}: sliced {value.shape}, the student needs {param.shape}')
        param.set_data(mx.nd.array(value, ctx=param.list_ctx()[0], dtype=param.dtype))
    log.info('extracted %s from the teacher %s: layers %s, %s units', arch.label,
             teacher.arch.label, chosen, units)
    return student
