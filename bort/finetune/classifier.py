"""The fine-tuning head, the encoding of text pairs, and fine-tuned model folders.

A :class:`TaskClassifier` is a pretrained encoder (any :class:`~bort.model.BortModel`
architecture) plus a small head on the representation of the first token:

* ``linear`` (the paper, section 5.1): dropout → Dense(classes);
* ``two_layer`` (the paper's CoLA head, "an extra linear layer"): dropout → Dense(H) →
  dropout → Dense(classes), no activation in between;
* ``released`` (the released ``BortClassifier``): dropout → Dense(H, tanh) → dropout →
  Dense(classes).

``auto`` picks ``two_layer`` for the tasks in :data:`EXTRA_LAYER_TASKS` and ``linear`` otherwise.
The head's weights are drawn from N(0, r²) (``init='normal'``, transformers' initialisation,
r = 0.02 there) or U(−r, r) (``init='uniform'``, released: 0.5, as ``mx.init.Uniform(0.5)``),
``r = init_range``; biases start at 0. U(−0.5, 0.5) over a 384-wide first token gives logits of
standard deviation ~3 at the start (N(0, 0.02²): ~0.2), a head that bias-corrected Adam at lr
1e-4 moves by at most ~1e-4 a step: the encoder then has to learn to fit a random head
(issue 23 measured what it costs). The project's reading for encoders that carry
BERT's pooler: the head reads the pooler's output (itself a function of the first token only),
so that no pretrained weight is left without a gradient; otherwise it reads the first token's
final hidden state.

Text pairs are encoded with the tokenizer's own special tokens (:meth:`Tokenizer.build_inputs`):
``[CLS] a [SEP] b [SEP]`` for WordPiece, ``<s> a </s></s> b </s>`` for byte-level BPE
(RoBERTa, Bort). Over-long pairs are cut longest-first, one token at a time, as BERT did.

A fine-tuned folder holds ``model.params`` and ``arch.json`` (:func:`bort.model.save_model`),
``classifier.json`` (the :class:`HeadConfig`) and the tokenizer's files: it is everything a
teacher, a prediction run or a resumed run needs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from ..arch import load_arch
from ..distributed import Comm
from ..errors import DataFormatError, read_json
from ..batching import bucket_batches, pad_batch
from ..model import BortModel, build_model, load_model, load_params, save_model, PARAMS_FILE
from .tasks import Example, TaskSpec, get_task

__all__ = ['HEADS', 'INITS', 'EXTRA_LAYER_TASKS', 'HeadConfig', 'ClassifierHead', 'TaskClassifier',
           'Encoded', 'encode_pair', 'encode_examples', 'make_batch', 'task_loss',
           'predict_scores', 'build_classifier', 'save_classifier', 'load_classifier',
           'read_head_config', 'CLASSIFIER_FILE']

log = logging.getLogger(__name__)

HEADS = ('auto', 'linear', 'two_layer', 'released')
#: Initialisations of the head's weights: N(0, r²) or U(−r, r).
INITS = ('normal', 'uniform')
#: Tasks that get the extra linear layer under ``head='auto'`` (the paper, section 5.1).
EXTRA_LAYER_TASKS = frozenset({'CoLA'})
CLASSIFIER_FILE = 'classifier.json'


@dataclass(frozen=True)
class HeadConfig:
    """What a fine-tuned folder needs, besides the encoder, to be rebuilt.

    Parameters
    ----------
    task : str
        Task name (:mod:`bort.finetune.tasks`).
    num_classes : int
        Output width (1 for regression).
    kind : {'linear', 'two_layer', 'released'}
        The head (see the module docstring); resolve ``'auto'`` with :meth:`resolve`.
    dropout : float
        Dropout before each Dense layer of the head.
    init : {'normal', 'uniform'}
        The weights' initialisation, N(0, r²) or U(−r, r) (a folder written before the choice
        existed was uniform, hence the default).
    init_range : float
        r of the head's initialisation.
    max_length : int
        Encoded pairs are truncated to this many tokens, special tokens included.
    """

    task: str
    num_classes: int
    kind: str = 'linear'
    dropout: float = 0.1
    init_range: float = 0.5
    max_length: int = 512
    init: str = 'uniform'

    def __post_init__(self):
        if self.kind not in HEADS[1:]:
            raise ValueError(f'unknown head {self.kind!r}; choose from {HEADS[1:]}')
        if self.init not in INITS:
            raise ValueError(f'unknown head initialisation {self.init!r}; choose from {INITS}')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'head dropout must be in [0, 1), got {self.dropout}')

    @classmethod
    def resolve(cls, task: Any, kind: str = 'auto', **kwargs) -> 'HeadConfig':
        """The head for ``task``; ``kind='auto'`` applies :data:`EXTRA_LAYER_TASKS`."""
        spec = get_task(task)
        if kind == 'auto':
            kind = 'two_layer' if spec.name in EXTRA_LAYER_TASKS else 'linear'
        return cls(task=spec.name, num_classes=spec.num_classes, kind=kind, **kwargs)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class ClassifierHead(HybridBlock):
    """The head over the first token's representation.

    Inputs: ``x`` (batch_size, units). Outputs: (batch_size, num_classes) logits, or the
    regression score in a single column.
    """

    def __init__(self, config: HeadConfig, units: int, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.config = config
        with self.name_scope():
            self.layers = nn.HybridSequential()
            if config.kind != 'linear':
                activation = 'tanh' if config.kind == 'released' else None
                self.layers.add(nn.Dropout(config.dropout),
                                nn.Dense(units, activation=activation, in_units=units))
            self.layers.add(nn.Dropout(config.dropout),
                            nn.Dense(config.num_classes, in_units=units))

    def hybrid_forward(self, F, x):  # pylint: disable=arguments-differ
        return self.layers(x)


class TaskClassifier(HybridBlock):
    """An encoder and a :class:`ClassifierHead` on its first token.

    Parameter names are ``backbone.*`` (the encoder's own names, e.g.
    ``backbone.word_embed.0.weight``) and ``head.layers.*``.

    Inputs
    ------
    inputs : (batch_size, seq_len) int
    token_types : (batch_size, seq_len) int, optional
        Ignored when the encoder has no token-type embedding.
    valid_length : (batch_size,) float32, optional

    Outputs
    -------
    (batch_size, num_classes) float32
    """

    def __init__(self, backbone: BortModel, config: HeadConfig, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        if backbone.has_decoder:
            raise ValueError('the backbone of a classifier carries no MLM decoder; load it '
                             'with use_decoder=False')
        self.arch = backbone.arch
        self.head_config = config
        self.backbone = backbone
        with self.name_scope():
            self.head = ClassifierHead(config, backbone.arch.units)

    @property
    def uses_token_types(self) -> bool:
        return self.arch.token_type_vocab_size > 0

    def hybrid_forward(self, F, inputs, token_types=None, valid_length=None):
        # pylint: disable=arguments-differ
        if not self.uses_token_types:
            token_types = None
        out = self.backbone(inputs, token_types, valid_length)
        if self.arch.use_pooler:
            first = out[1]
        else:
            seq = out[0] if isinstance(out, (list, tuple)) else out
            first = F.squeeze(F.slice_axis(seq, axis=1, begin=0, end=1), axis=1)
        return self.head(first)


# -- encoding ----------------------------------------------------------------------------------
#: One encoded pair: (token ids, token types), special tokens included.
Encoded = Tuple[List[int], List[int]]


def encode_pair(tokenizer, text_a: str, text_b: Optional[str], max_length: int) -> Encoded:
    """Encode one text (pair) with the tokenizer's special tokens, cut to ``max_length``.

    The longer segment loses its last token until the pair fits (longest first, BERT's rule).

    Returns
    -------
    ids, token_types : list of int, list of int
        Both of length ≤ ``max_length``.
    """
    ids_a = tokenizer.encode(text_a)
    ids_b = tokenizer.encode(text_b) if text_b is not None else None
    specials = len(tokenizer.build_inputs([], [] if ids_b is not None else None)[0])
    budget = max_length - specials
    if budget < (2 if ids_b is not None else 1):
        raise ValueError(f'max_length {max_length} leaves no room for text after '
                         f'{specials} special tokens')
    if ids_b is None:
        ids_a = ids_a[:budget]
    else:
        len_a, len_b = len(ids_a), len(ids_b)
        while len_a + len_b > budget:
            if len_a > len_b:
                len_a -= 1
            else:
                len_b -= 1
        ids_a, ids_b = ids_a[:len_a], ids_b[:len_b]
    return tokenizer.build_inputs(ids_a, ids_b)


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int) -> List[Encoded]:
    """:func:`encode_pair` over examples, in order."""
    return [encode_pair(tokenizer, ex.text_a, ex.text_b, max_length) for ex in examples]


def make_batch(encoded: Sequence[Encoded], indices: Sequence[int], length: int, pad_id: int,
               ctx: mx.Context, token_types: bool = True
               ) -> Tuple[mx.nd.NDArray, Optional[mx.nd.NDArray], mx.nd.NDArray]:
    """Pad the selected pairs into model inputs.

    Returns
    -------
    inputs : (batch_size, length) int32
    token_types : (batch_size, length) int32, or None when ``token_types`` is False (encoders
        without a token-type embedding, which would leave the input unused)
    valid_length : (batch_size,) float32
    """
    ids, valid = pad_batch([encoded[i][0] for i in indices], length, pad_id)
    types = None
    if token_types:
        types = mx.nd.array(pad_batch([encoded[i][1] for i in indices], length, 0)[0], ctx=ctx,
                            dtype='int32')
    return (mx.nd.array(ids, ctx=ctx, dtype='int32'), types,
            mx.nd.array(valid, ctx=ctx, dtype='float32'))


def task_loss(task: Any):
    """Per-example loss ``fn(scores (B, C), labels (B,)) -> (B,)``.

    Softmax cross-entropy for classification; squared error ``(score − label)²`` for
    regression (STS-B; not Gluon's ``L2Loss``, which halves it).
    """
    spec: TaskSpec = get_task(task)
    if spec.is_regression:
        def squared_error(scores, labels):
            return mx.nd.square(scores.reshape((-1,)) - labels)
        return squared_error
    return mx.gluon.loss.SoftmaxCrossEntropyLoss()


def predict_scores(model: TaskClassifier, encoded: Sequence[Encoded], pad_id: int,
                   batch_size: int = 32, comm: Optional[Comm] = None) -> np.ndarray:
    """Scores of every encoded pair, inference mode (no dropout).

    Under several workers each scores its shard (every ``size``-th pair) and the results are
    gathered, so every worker returns the full array.

    Returns
    -------
    (N, num_classes) float32, in the order of ``encoded``.
    """
    comm = comm or Comm()
    mine = np.arange(len(encoded))[comm.rank::comm.size]
    scores = np.zeros((len(mine), model.head_config.num_classes), dtype=np.float32)
    lengths = [len(encoded[i][0]) for i in mine]
    for rows, length in bucket_batches(lengths, batch_size):
        inputs, types, valid = make_batch(encoded, mine[rows], length, pad_id, comm.ctx,
                                          model.uses_token_types)
        scores[rows] = model(inputs, types, valid).asnumpy()
    if not comm.distributed:
        return scores
    full = np.zeros((len(encoded), scores.shape[1]), dtype=np.float32)
    for rank, part in enumerate(comm.allgather_object(scores)):
        full[rank::comm.size] = part
    return full


# -- folders -----------------------------------------------------------------------------------
def build_classifier(pretrained: str, config: HeadConfig, ctx: Optional[mx.Context] = None,
                     seed: Optional[int] = None) -> TaskClassifier:
    """A pretrained encoder folder plus a freshly initialised head.

    Parameters
    ----------
    pretrained : str
        A project model folder (``model.params``, ``arch.json``); an MLM decoder in it is
        dropped.
    config : HeadConfig
    ctx : mx.Context, optional
    seed : int, optional
        Seeds MXNet before drawing the head's weights.
    """
    ctx = ctx or mx.cpu()
    backbone = load_model(pretrained, use_decoder=False, ctx=ctx)
    model = TaskClassifier(backbone, config)
    if seed is not None:
        mx.random.seed(seed)
    init = (mx.init.Normal(config.init_range) if config.init == 'normal'
            else mx.init.Uniform(config.init_range))
    model.head.initialize(init, ctx=ctx)  # biases: zeros (MXNet's rule for '*bias')
    return model


def save_classifier(model: TaskClassifier, folder: str, tokenizer=None) -> str:
    """Write a fine-tuned folder (weights, ``arch.json``, ``classifier.json``, tokenizer).

    The folder is written under a temporary name and renamed, replacing any previous one.
    """
    tmp = folder.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    with open(os.path.join(tmp, CLASSIFIER_FILE), 'w') as f:
        json.dump(model.head_config.to_dict(), f, indent=2, sort_keys=True)
        f.write('\n')
    if tokenizer is not None:
        tokenizer.save(tmp)
    old = folder.rstrip('/') + '.old'
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def read_head_config(folder: str) -> HeadConfig:
    """The :class:`HeadConfig` of a fine-tuned folder."""
    path = os.path.join(folder, CLASSIFIER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{folder} is not a fine-tuned classifier folder: no '
                                f'{CLASSIFIER_FILE} (write one with save_classifier)')
    saved = read_json(path, what='classifier head file')
    try:
        return HeadConfig(**saved)
    except TypeError as err:  # fields missing or unknown
        raise DataFormatError(f'{path}: not a valid classifier head file ({err})') from None


def load_classifier(folder: str, ctx: Optional[mx.Context] = None) -> TaskClassifier:
    """A fine-tuned folder written by :func:`save_classifier`, loaded strictly."""
    ctx = ctx or mx.cpu()
    config = read_head_config(folder)
    backbone = build_model(load_arch(folder), use_decoder=False, ctx=ctx, initialize=False)
    model = TaskClassifier(backbone, config)
    load_params(model, os.path.join(folder, PARAMS_FILE), ctx=ctx)
    return model
