"""The prediction command, ``python -m bort.inference.predict``.

A fine-tuned folder and a file of inputs in a task's format give a predictions file in the
task's leaderboard format, on one of three encoder engines with the same call
``encoder(tokens, token_types, valid_length)``: ``fast`` (default;
:class:`bort.inference.fast.FastModel`, fused oneDNN graph, float32 or with ``--dtype bfloat16``
bfloat16 dense layers where the CPU has AVX512-BF16 or AMX), ``int8``
(:class:`bort.inference.quantized.QuantizedModel`, from ``--int8-model`` or quantized on the spot,
calibrated on the first ``--calib-rows`` inputs) or ``plain`` (the GluonNLP model). Inputs are
sorted by length, batched, padded to a few bucket sizes and scored; predictions come back in file
order, with a progress bar and sentences/s at the end::

      python -m bort.inference.predict --model runs/sst2/best --task SST-2 \\
          --input data/glue/SST-2/test.tsv --output SST-2.tsv --engine fast
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __name__ == '__main__':  # python -m bort.inference.predict: thread settings before MXNet starts
    from ..threads import configure_threads
    configure_threads(inference=True)

import mxnet as mx  # noqa: E402
import numpy as np

from ..batching import DEFAULT_BUCKETS, bucket_batches, pad_batch
from ..cli import (add_dataclass_flags, emit, make_parser, parse_configs, run_main,
                   setup_command_logging)
from ..fields import at_least, opt
from ..finetune.castings import aggregate
from ..finetune.classifier import Encoded, encode_examples, encode_pair, load_classifier, read_head_config
from ..finetune.evaluate import BEST
from ..finetune.readers import read_examples
from ..finetune.submission import format_submission
from ..errors import ConfigError
from ..finetune.tasks import get_task
from ..hardware import announce, require_bf16
from ..tokenizers import load_tokenizer
from .fast import DTYPES, FastModel

__all__ = ['ENGINES', 'PredictStats', 'Predictor', 'predict_encoded', 'predict_texts',
           'load_predictor', 'read_inputs', 'predict_file', 'main']

log = logging.getLogger(__name__)

# -- the prediction command ---------------------------------------------------------------------
ENGINES = ('fast', 'int8', 'plain')


@dataclass
class PredictStats:
    """Throughput of one prediction run (model time only, tokenization excluded)."""

    sentences: int
    batches: int
    seconds: float
    real_tokens: int
    padded_tokens: int

    @property
    def sentences_per_second(self) -> float:
        return self.sentences / self.seconds if self.seconds > 0 else float('inf')

    @property
    def padding_overhead(self) -> float:
        """Padded positions computed per real token, minus one (0: no padding)."""
        return self.padded_tokens / max(self.real_tokens, 1) - 1.0

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), sentences_per_second=self.sentences_per_second,
                    padding_overhead=self.padding_overhead)


def _features(outputs, use_pooler: bool) -> mx.nd.NDArray:
    """The head's input, as :class:`TaskClassifier` reads it: pooled output, else first token."""
    if use_pooler:
        return outputs[1]
    seq = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return seq[:, 0, :]


def predict_encoded(encoder: Callable, head: Callable, encoded: Sequence[Encoded], pad_id: int,
                    use_pooler: bool, batch_size: int = 32, use_token_types: bool = False,
                    buckets: Optional[Sequence[int]] = DEFAULT_BUCKETS,
                    progress: bool = True) -> Tuple[np.ndarray, PredictStats]:
    """Scores of every encoded input, in input order, batched by length.

    Parameters
    ----------
    encoder : callable
        ``encoder(tokens (B, L), token_types (B, L) or None, valid_length (B,))`` returning the
        sequence outputs (B, L, H), or a tuple (sequence outputs, pooled output (B, H)).
    head : callable
        ``head(features (B, H)) -> (B, C)`` scores (one column for regression).
    encoded : sequence of (ids, token_types)
    pad_id : int
    use_pooler : bool
        Feed the head the pooled output instead of the first token's state.
    batch_size : int
    use_token_types : bool
        Pass token types (encoders with a token-type embedding); else None.
    buckets : sequence of int or None
        Padded lengths allowed (:func:`bort.batching.bucket_batches`).
    progress : bool
        A tqdm bar counting sentences.

    Returns
    -------
    scores : (N, C) float32
    stats : PredictStats
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    lengths = [len(ids) for ids, _ in encoded]
    batches = bucket_batches(lengths, batch_size, buckets)
    scores = np.zeros((len(encoded), 0), dtype=np.float32)
    padded = 0
    bar = tqdm(total=len(encoded), unit='sent', disable=not progress, desc='predict')
    start = time.perf_counter()
    for rows, length in batches:
        tokens, valid = pad_batch([encoded[i][0] for i in rows], length, pad_id)
        types = (pad_batch([encoded[i][1] for i in rows], length, 0)[0] if use_token_types
                 else None)
        out = head(_features(encoder(tokens, types, valid), use_pooler)).asnumpy()
        if scores.shape[1] != out.shape[1]:
            scores = np.zeros((len(encoded), out.shape[1]), dtype=np.float32)
        scores[rows] = out
        padded += tokens.size
        bar.update(len(rows))
    seconds = time.perf_counter() - start
    bar.close()
    stats = PredictStats(sentences=len(encoded), batches=len(batches), seconds=seconds,
                         real_tokens=int(sum(lengths)), padded_tokens=int(padded))
    log.info('%d sentences in %.2f s: %.1f sentences/s (%d batches, padding overhead %.0f %%)',
             stats.sentences, seconds, stats.sentences_per_second, stats.batches,
             100 * stats.padding_overhead)
    return scores, stats


@dataclass
class Predictor:
    """An encoder engine, a head and a tokenizer, ready to score texts or text pairs.

    ``encoder`` and ``head`` follow :func:`predict_encoded`; ``max_length`` truncates inputs
    (special tokens included) as fine-tuning did; ``task`` is the task the head learnt.
    """

    encoder: Callable
    head: Callable
    tokenizer: Any
    use_pooler: bool
    use_token_types: bool
    max_length: int = 512
    task: Optional[str] = None
    engine: str = 'fast'

    def encode(self, texts: Sequence) -> List[Encoded]:
        """Texts or (text_a, text_b) pairs -> encoded inputs (the fine-tuning encoding)."""
        pairs = [(t, None) if isinstance(t, str) else (t[0], t[1]) for t in texts]
        return [encode_pair(self.tokenizer, a, b, self.max_length) for a, b in pairs]

    def scores(self, encoded: Sequence[Encoded], batch_size: int = 32,
               buckets: Optional[Sequence[int]] = DEFAULT_BUCKETS,
               progress: bool = True) -> Tuple[np.ndarray, PredictStats]:
        return predict_encoded(self.encoder, self.head, encoded, self.tokenizer.pad_id,
                               self.use_pooler, batch_size, self.use_token_types, buckets,
                               progress)


def predict_texts(predictor: Predictor, texts: Sequence, batch_size: int = 32,
                  progress: bool = True) -> Tuple[np.ndarray, PredictStats]:
    """Scores (N, C) of texts or (text_a, text_b) pairs, in input order."""
    return predictor.scores(predictor.encode(texts), batch_size=batch_size, progress=progress)


def _plain_encoder(model, ctx: mx.Context) -> Callable:
    """The GluonNLP model behind the engines' call, taking numpy arrays as they do."""
    model.hybridize(static_alloc=True)

    def encoder(tokens, types, valid):
        types = None if types is None else mx.nd.array(types, ctx=ctx)
        return model(mx.nd.array(tokens, ctx=ctx), types, mx.nd.array(valid, ctx=ctx))
    return encoder


def load_predictor(folder: str, engine: str = 'fast', int8_model: Optional[str] = None,
                   calib_encoded: Optional[Sequence[Encoded]] = None, quantize_config=None,
                   ctx: Optional[mx.Context] = None, dtype: str = 'float32') -> Predictor:
    """A :class:`Predictor` for a fine-tuned folder (or a run folder holding ``best/``).

    Parameters
    ----------
    folder : str
    engine : {'fast', 'int8', 'plain'}
    int8_model : str, optional
        A saved :class:`bort.inference.quantized.QuantizedModel` of this encoder (``int8`` engine).
    calib_encoded : sequence of encoded inputs, optional
        Calibration inputs when the ``int8`` engine quantizes (no ``int8_model``).
    quantize_config : bort.inference.quantize.QuantizeConfig, optional
    ctx : mx.Context, optional
    dtype : {'float32', 'bfloat16'}
        The ``fast`` engine's compute type (:class:`bort.inference.fast.FastModel`).
    """
    if engine not in ENGINES:
        raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}')
    check_dtype(engine, dtype)
    if os.path.isdir(os.path.join(folder, BEST)):
        folder = os.path.join(folder, BEST)
    ctx = ctx or mx.cpu()
    model, tokenizer = load_classifier(folder, ctx), load_tokenizer(folder)
    model.head.hybridize(static_alloc=True)
    arch = model.arch
    if engine == 'plain':
        encoder = _plain_encoder(model.backbone, ctx)
    elif engine == 'fast':
        encoder = FastModel.from_model(model.backbone, ctx=ctx, dtype=dtype)
    else:
        # pylint: disable=import-outside-toplevel
        from .quantize import quantize_encoder
        from .quantized import QuantizedModel
        if int8_model:
            encoder = QuantizedModel.load(int8_model, ctx=ctx)
            if encoder.arch.tuple != arch.tuple:
                raise ValueError(f'{int8_model} holds {encoder.arch.tuple}, the fine-tuned '
                                 f'encoder is {arch.tuple}')
        elif not calib_encoded:
            raise ValueError('the int8 engine needs --int8-model or calibration inputs')
        else:
            length = max(len(ids) for ids, _ in calib_encoded)
            tokens, valid = pad_batch([ids for ids, _ in calib_encoded], length,
                                      tokenizer.pad_id)
            types = (pad_batch([t for _, t in calib_encoded], length, 0)[0]
                     if arch.token_type_vocab_size else None)
            encoder = quantize_encoder(model.backbone, tokens, valid, types,
                                       config=quantize_config, ctx=ctx)
    return Predictor(encoder=encoder, head=model.head, tokenizer=tokenizer,
                     use_pooler=arch.use_pooler, use_token_types=arch.token_type_vocab_size > 0,
                     max_length=model.head_config.max_length, task=model.head_config.task,
                     engine=engine)


def check_dtype(engine: str, dtype: str) -> None:
    """Refuse (one line) a dtype the engine or the CPU cannot run, before anything loads."""
    if dtype not in DTYPES:
        raise ConfigError(f'--dtype must be one of {DTYPES}, got {dtype!r}')
    if dtype == 'bfloat16':
        if engine != 'fast':
            raise ConfigError(f'--dtype bfloat16 is for the fast engine, not {engine}')
        require_bf16('--dtype bfloat16')


def read_inputs(task: str, path: str, split: str = 'test'):
    """Examples of any file in ``task``'s official format (the ``split``'s column layout).

    Returns
    -------
    spec : TaskSpec
        The task's spec, pointed at ``path``.
    examples : list of Example
    """
    spec = get_task(task)
    if split not in spec.files:
        raise ValueError(f'{spec.name} has no {split!r} layout (it has {", ".join(spec.files)})')
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'input file not found: {path}')
    local = dataclasses.replace(spec, files={split: path},
                                layouts={split: spec.layouts[split]} if spec.layouts else {})
    return local, read_examples(local, os.path.dirname(path), split)


def predict_file(folder: str, task: Optional[str], input_path: str, output_path: str,
                 split: str = 'test', engine: str = 'fast', batch_size: int = 32,
                 int8_model: Optional[str] = None, calib_rows: int = 64,
                 progress: bool = True, overwrite: bool = False,
                 dtype: str = 'float32') -> Dict[str, Any]:
    """Score a task file with a fine-tuned folder and write its predictions file.

    The output is the task's leaderboard format (:func:`bort.finetune.submission.format_submission`).
    An existing ``output_path`` is refused (before any scoring) unless ``overwrite``.

    Returns
    -------
    dict
        :class:`PredictStats` figures plus ``output``, ``engine`` and ``task``.
    """
    check_dtype(engine, dtype)
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(f'{output_path} exists; pass --overwrite to replace it')
    if os.path.isdir(os.path.join(folder, BEST)):
        folder = os.path.join(folder, BEST)
    head_config = read_head_config(folder)
    spec, examples = read_inputs(task or head_config.task, input_path, split)
    encoded = encode_examples(load_tokenizer(folder), examples, head_config.max_length)
    predictor = load_predictor(folder, engine, int8_model=int8_model,
                               calib_encoded=encoded[:calib_rows], dtype=dtype)
    scores, stats = predictor.scores(encoded, batch_size=batch_size, progress=progress)
    preds = aggregate(spec, examples, scores)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, 'w', encoding='utf-8') as f:
        f.write(format_submission(spec, preds.ids, preds.predictions))
    return dict(stats.to_dict(), output=output_path, engine=engine, task=spec.name, dtype=dtype)


@dataclass
class PredictCommand:
    """Flags of ``python -m bort.inference.predict``."""

    model: str = opt('', 'fine-tuned folder (or its run folder)', required=True)
    input: str = opt('', "a file in the task's official format", required=True)
    output: str = opt('', 'predictions file to write', required=True)
    task: Optional[str] = opt(None, 'task of the input format (default: the one fine-tuned on)')
    split: str = opt('test', "which of the task's column layouts the file has",
                     choices=('train', 'dev', 'test'))
    engine: str = opt('fast', 'inference engine: fast (bort.inference.fast, float32), int8 '
                      '(bort.inference.quantize) or plain (the Gluon model)', choices=ENGINES)
    dtype: str = opt('float32', 'compute type of the fast engine: bfloat16 runs its dense layers '
                     'in bfloat16 (CPUs with AVX512-BF16 or AMX; refused elsewhere)',
                     choices=DTYPES)
    int8_model: Optional[str] = opt(None, 'a saved INT8 encoder folder')
    calib_rows: int = opt(64, 'int8 without --int8_model: calibrate on this many inputs',
                          check=at_least(1))
    batch_size: int = opt(32, 'sentences per batch', check=at_least(1))
    progress: bool = opt(True, 'a progress bar over the batches')
    overwrite: bool = opt(False, 'replace an existing --output')


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.inference.predict``."""
    parser = make_parser(
        prog='python -m bort.inference.predict',
        description='Predict a task file with a fine-tuned folder.',
        epilog='Threads: OMP_NUM_THREADS defaults to the number of cores and OMP_WAIT_POLICY to '
               'ACTIVE (threads spin between operators: lower latency, busy idle cores); set '
               'either before starting to override.')
    add_dataclass_flags(parser, PredictCommand)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``python -m bort.inference.predict``: predict a file; throughput to stdout."""
    args = parse_configs(build_parser(), [PredictCommand], argv)[0]
    setup_command_logging()
    announce()
    check_dtype(args.engine, args.dtype)
    if not os.environ.get('OMP_NUM_THREADS'):
        log.warning('OMP_NUM_THREADS is not set: MXNet may run single-threaded; set it to the '
                    'number of cores (python -m bort.inference.predict does it for you)')
    log.info('OMP_NUM_THREADS=%s OMP_WAIT_POLICY=%s', os.environ.get('OMP_NUM_THREADS'),
             os.environ.get('OMP_WAIT_POLICY'))
    result = predict_file(args.model, args.task, args.input, args.output, split=args.split,
                          engine=args.engine, batch_size=args.batch_size,
                          int8_model=args.int8_model, calib_rows=args.calib_rows,
                          progress=args.progress, overwrite=args.overwrite, dtype=args.dtype)
    emit(f"{result['sentences']} sentences, {result['sentences_per_second']:.1f} sentences/s "
         f"({args.engine}, {args.dtype}) -> {args.output}")
    return result


if __name__ == '__main__':
    run_main(main, (FileExistsError, FileNotFoundError, ValueError), 'bort.inference.predict')
