"""Fit a masked-LM head onto a frozen encoder that has none (e.g. a sentence-embedding BERT).

The head is GluonNLP's BERT decoder: Dense(H, H) -> GELU -> LayerNorm -> Dense(V) whose weight is
the word embedding (tied, frozen); only the first dense layer, the LayerNorm and the output bias
train. Because the encoder is frozen, its outputs at the masked positions are computed once
(one BERT-style masking per sequence, :func:`bort.pretrain.masking.mask_tokens`: 15 % of the real
tokens, 80 % replaced by the mask token, 10 % by a random token, 10 % kept) and the head is fitted
on those features with Adam, which makes fitting cheap on a CPU. The frozen encoder runs on the
fast inference path (:class:`bort.inference.fast.FastModel`: the same outputs to ~4e-6, several
times faster than the hybridized GluonNLP encoder; README.md gives the measured figure).

The project's reading: the head starts from the identity (dense weight = I, bias 0) with the
output bias set to the smoothed log unigram frequencies of the training targets, so its starting
point is "nearest word embedding, frequency-weighted"; the held-out split is by document; the
reported accuracy is BERT's, over all held-out masked positions (the 10 % random and 10 % kept
included), with beside it the accuracy per kind (at mask tokens alone it says what the context
gives) and the unigram baseline (always the most frequent training target).

``python -m bort.pretrain.mlm_head --model DIR --corpus FILES --out DIR --steps N``
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..cli import (add_dataclass_flags, emit, make_parser, parse_configs, run_main,
                   setup_command_logging)
from ..fields import Range, at_least, check_fields, opt, positive, probability
from ..errors import DataFormatError, UserError
from ..log import progress
from ..model import BortModel, build_model, load_model, param_dict, save_model
from ..tokenizers import Tokenizer, load_tokenizer
from .masking import mask_tokens, masking_for
from .names import DEFAULT_NAMES, imported_hf_dir, minilm_dir

__all__ = ['HeadFitConfig', 'read_documents', 'pack_sequences', 'masked_features',
           'fit_mlm_head', 'main', 'REPORT_FILE']

log = logging.getLogger(__name__)

REPORT_FILE = 'mlm_head.json'


@dataclass(frozen=True)
class HeadFitConfig:
    """Settings of :func:`fit_mlm_head`; the budget is ``max_sequences`` (encoder passes) and
    ``steps`` (head updates of ``batch_size`` masked tokens)."""

    steps: int = opt(400, 'head updates', check=at_least(1))
    batch_size: int = opt(256, 'masked tokens per head update', check=at_least(1))
    learning_rate: float = opt(1e-3, "Adam's learning rate", check=positive)
    seq_len: int = opt(128, 'tokens per packed sequence, CLS and SEP included',
                       check=at_least(3))
    max_sequences: int = opt(1500, 'sequences encoded at most (encoder passes: the budget)',
                             check=at_least(2))
    heldout_fraction: float = opt(0.1, 'share of the documents held out to score the head',
                                  check=Range(low=0, high=1, low_open=True, high_open=True))
    mask_ratio: float = opt(0.15, 'fraction of tokens masked', check=probability)
    encode_batch: int = opt(16, 'sequences per encoder pass', check=at_least(1))
    seed: int = opt(0, 'seed of the split, the masking and the head')

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` naming the flag of a setting out of range."""
        check_fields(self)


def read_documents(files: Sequence[str]) -> List[List[str]]:
    """Documents of text files with one sentence a line and blank lines between documents."""
    docs: List[List[str]] = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'corpus file not found: looked for {os.path.abspath(path)}')
        current: List[str] = []
        with open(path, encoding='utf-8') as f:
            for line in f:
                line = line.strip()
                if line:
                    current.append(line)
                elif current:
                    docs.append(current)
                    current = []
        if current:
            docs.append(current)
    return docs


def pack_sequences(docs: Sequence[Sequence[str]], tokenizer: Tokenizer, seq_len: int,
                   max_sequences: int) -> List[List[int]]:
    """``CLS tokens SEP`` sequences of at most ``seq_len`` ids: whole sentences packed in order,
    crossing document boundaries (RoBERTa's FULL-SENTENCES; docstrings are short), a sentence
    longer than a sequence cut."""
    room = seq_len - 2
    out: List[List[int]] = []
    current: List[int] = []
    for doc in docs:
        for sentence in doc:
            ids = tokenizer.encode(sentence)[:room]
            if current and len(current) + len(ids) > room:
                out.append(tokenizer.build_inputs(current)[0])
                current = []
                if len(out) >= max_sequences:
                    return out
            current += ids
    if current:
        out.append(tokenizer.build_inputs(current)[0])
    return out[:max_sequences]


def masked_features(encoder: BortModel, sequences: Sequence[Sequence[int]],
                    tokenizer: Tokenizer, config: HeadFitConfig, rng: np.random.RandomState,
                    desc: str = 'encoding', engine=None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask each sequence once and run the frozen encoder (a model without decoder).

    Batches are padded to ``config.seq_len`` so a hybridised encoder sees one shape; a
    progress bar (``desc``) counts the sequences. ``engine`` (e.g. a
    :class:`~bort.inference.fast.FastModel` of ``encoder``) computes the encoder's outputs in
    its place when given.

    Returns
    -------
    features : (num_masked, units) float32
        Encoder outputs at the masked positions.
    labels : (num_masked,) int64
        The original token ids there.
    kinds : (num_masked,) int8
        What the encoder saw there: 0 the mask token, 1 a random token, 2 the original.
    """
    masking = masking_for(tokenizer, config.mask_ratio, seq_len=config.seq_len)
    feats, labels, kinds = [], [], []
    bar = progress(total=len(sequences), desc=desc, unit='seq')
    for start in range(0, len(sequences), config.encode_batch):
        rows = sequences[start:start + config.encode_batch]
        lengths = np.asarray([len(s) for s in rows], np.int32)
        tokens = np.full((len(rows), config.seq_len), tokenizer.pad_id, np.int32)
        for row, ids in enumerate(rows):
            tokens[row, :len(ids)] = ids
        masked, positions, originals, weights = mask_tokens(tokens, lengths, masking, rng)
        if engine is not None:
            out = engine(masked.astype(np.float32), None, lengths.astype(np.float32))
        else:
            types = mx.nd.zeros(tokens.shape) if encoder.arch.token_type_vocab_size else None
            out = encoder(mx.nd.array(masked, dtype=np.float32), types, mx.nd.array(lengths))
        seq_out = out[0] if isinstance(out, (list, tuple)) else out
        seq_out = seq_out.asnumpy() if isinstance(seq_out, mx.nd.NDArray) else seq_out
        row_of, col_of = np.nonzero(weights > 0)
        at = positions[row_of, col_of]
        seen, truth = masked[row_of, at], originals[row_of, col_of]
        feats.append(seq_out[row_of, at])
        labels.append(truth)
        kinds.append(np.where(seen == tokenizer.mask_id, 0, np.where(seen == truth, 2, 1)))
        bar.update(len(rows))
    bar.close()
    if not feats:
        return np.zeros((0, encoder.arch.units), np.float32), np.zeros(0, np.int64), \
            np.zeros(0, np.int8)
    return (np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64),
            np.concatenate(kinds).astype(np.int8))


def _evaluate(decoder, feats: np.ndarray, labels: np.ndarray, kinds: Optional[np.ndarray] = None,
              batch: int = 512) -> Dict[str, float]:
    """Accuracy and mean loss over all masked positions, and accuracy per kind of replacement."""
    correct, loss_sum = [], 0.0
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for start in range(0, len(labels), batch):
        logits = decoder(mx.nd.array(feats[start:start + batch]))
        target = mx.nd.array(labels[start:start + batch])
        correct.append((logits.argmax(axis=-1) == target).asnumpy())
        loss_sum += float(loss_fn(logits, target).sum().asscalar())
    hits = np.concatenate(correct) if correct else np.zeros(0)
    out = {'accuracy': float(hits.mean()) if len(hits) else 0.0,
           'loss': loss_sum / max(1, len(labels))}
    if kinds is not None:
        for code, kind in enumerate(('mask', 'random', 'kept')):
            if np.any(kinds == code):
                out[f'accuracy_{kind}'] = float(hits[kinds == code].mean())
    return out


def _with_decoder(encoder: BortModel) -> BortModel:
    """``encoder``'s weights (frozen) under a fresh, identity-initialised decoder."""
    model = build_model(encoder.arch, use_decoder=True)
    source = param_dict(encoder)
    for name, param in param_dict(model).items():
        if name in source:
            param.set_data(source[name].data())
        param.grad_req = 'null'
    units = encoder.arch.units
    model.decoder[0].weight.set_data(mx.nd.eye(units))
    model.decoder[0].bias.set_data(mx.nd.zeros(units))
    model.decoder[2].gamma.set_data(mx.nd.ones(units))
    model.decoder[2].beta.set_data(mx.nd.zeros(units))
    return model


def fit_mlm_head(model_dir: str, corpus: Sequence[str], out_dir: str,
                 config: HeadFitConfig = HeadFitConfig()) -> Dict:
    """Fit an MLM head onto the encoder in ``model_dir`` and save encoder + head to ``out_dir``.

    Parameters
    ----------
    model_dir : str
        A project model folder with a tokenizer (its decoder, if any, is replaced).
    corpus : sequence of str
        Text files, one sentence a line, blank lines between documents.
    out_dir : str
        Written with ``model.params`` (decoder included), ``arch.json``, the tokenizer and
        ``mlm_head.json`` (this report); ``load_model(out_dir)`` returns the model with its head.

    Returns
    -------
    dict
        ``heldout_accuracy``, ``heldout_loss``, ``heldout_accuracy_by_kind`` (``mask``,
        ``random``, ``kept``), ``initial_heldout_accuracy``,
        ``unigram_baseline_accuracy``, ``train_accuracy``, masked-token counts, timings, config.
    """
    config.validate()
    rng = np.random.RandomState(config.seed)
    tokenizer = load_tokenizer(model_dir)
    encoder = load_model(model_dir, use_decoder=False)
    model = _with_decoder(encoder)
    from ..inference.fast import FastModel  # pylint: disable=import-outside-toplevel
    engine = FastModel.from_model(encoder)
    docs = read_documents(corpus)
    order = rng.permutation(len(docs))
    n_held = max(1, int(round(config.heldout_fraction * len(docs))))
    held_docs = [docs[i] for i in sorted(order[:n_held])]
    train_docs = [docs[i] for i in sorted(order[n_held:])]
    n_held_seq = max(1, int(round(config.heldout_fraction * config.max_sequences)))
    start = time.time()
    train = masked_features(encoder, pack_sequences(
        train_docs, tokenizer, config.seq_len, config.max_sequences - n_held_seq), tokenizer,
        config, rng, desc='encoding (training)', engine=engine)
    held = masked_features(encoder, pack_sequences(held_docs, tokenizer, config.seq_len,
                                                 n_held_seq), tokenizer, config, rng,
                           desc='encoding (held-out)', engine=engine)
    encode_seconds = time.time() - start
    if not len(train[1]) or not len(held[1]):
        raise DataFormatError(f'the corpus {", ".join(corpus)} gave no masked tokens for '
                              f'training or held-out evaluation (too little text)')
    counts = np.bincount(train[1], minlength=model.arch.vocab_size).astype(np.float64)
    model.decoder[3].bias.set_data(mx.nd.array(np.log((counts + 0.1) / (counts.sum() + 0.1 *
                                                                          len(counts)))))
    baseline = float(np.mean(held[1] == counts.argmax()))
    initial = _evaluate(model.decoder, *held[:2])
    trainable = [model.decoder[0].weight, model.decoder[0].bias, model.decoder[2].gamma,
                 model.decoder[2].beta, model.decoder[3].bias]
    for param in trainable:
        param.grad_req = 'write'
    trainer = mx.gluon.Trainer(trainable, 'adam', {'learning_rate': config.learning_rate})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    start = time.time()
    bar = progress(total=config.steps, desc='MLM head fit', unit='step')
    for step in range(config.steps):
        idx = rng.randint(0, len(train[1]), config.batch_size)
        with mx.autograd.record():
            loss = loss_fn(model.decoder(mx.nd.array(train[0][idx])), mx.nd.array(train[1][idx]))
        loss.backward()
        trainer.step(config.batch_size)
        bar.update(1)
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f'{loss.mean().asscalar():.3f}')
    bar.close()
    fit_seconds = time.time() - start
    for param in trainable:
        param.grad_req = 'null'
    final = _evaluate(model.decoder, *held)
    report = {
        'heldout_accuracy': final['accuracy'], 'heldout_loss': final['loss'],
        'heldout_accuracy_by_kind': {k[9:]: v for k, v in final.items()
                                     if k.startswith('accuracy_')},
        'initial_heldout_accuracy': initial['accuracy'],
        'unigram_baseline_accuracy': baseline,
        # A sample: scoring every training feature costs a full-vocabulary product each.
        'train_accuracy': _evaluate(model.decoder, train[0][:4096], train[1][:4096])['accuracy'],
        'train_masked': int(len(train[1])), 'heldout_masked': int(len(held[1])),
        'encode_seconds': encode_seconds, 'fit_seconds': fit_seconds,
        'source': os.path.abspath(model_dir), 'corpus': [os.path.abspath(c) for c in corpus],
        'config': asdict(config),
    }
    save_model(model, out_dir)
    tokenizer.save(out_dir)
    with open(os.path.join(out_dir, REPORT_FILE), 'w') as f:
        json.dump(report, f, indent=2, sort_keys=True)
    log.info('MLM head: held-out accuracy %.4f (at mask tokens %.4f; unigram baseline %.4f, '
             'identity start %.4f) on %d masked tokens; encode %.1fs, fit %.1fs',
             final['accuracy'], final.get('accuracy_mask', float('nan')), baseline,
             initial['accuracy'], len(held[1]), encode_seconds, fit_seconds)
    return report


@dataclass
class HeadFitCommand:
    """Flags of ``python -m bort.pretrain.mlm_head`` (the budget of :class:`HeadFitConfig`)."""

    model: str = opt('', 'the encoder: a project model folder (with tokenizer), a Hugging Face '
                     'folder, or minilm (the installed all-MiniLM-L6-v2)', required=True)
    corpus: List[str] = opt([], 'text files, one sentence a line, blank line between documents',
                            required=True, nargs='+')
    out: str = opt('', 'model folder to write', required=True)
    steps: int = opt(HeadFitConfig.steps, 'head updates', check=at_least(1))
    batch_size: int = opt(HeadFitConfig.batch_size, 'masked tokens per head update',
                          check=at_least(1))
    learning_rate: float = opt(HeadFitConfig.learning_rate, "Adam's learning rate",
                               check=positive)
    seq_len: int = opt(HeadFitConfig.seq_len, 'tokens per packed sequence, CLS and SEP '
                       'included', check=at_least(3))
    max_sequences: int = opt(HeadFitConfig.max_sequences, 'sequences encoded at most (encoder '
                             'passes: the budget)', check=at_least(2))
    heldout_fraction: float = opt(HeadFitConfig.heldout_fraction, 'share of the documents '
                                  'held out to score the head',
                                  check=Range(low=0, high=1, low_open=True, high_open=True))
    seed: int = opt(HeadFitConfig.seed, 'seed of the split, the masking and the head')


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.pretrain.mlm_head``."""
    parser = make_parser(prog='python -m bort.pretrain.mlm_head',
                         description='Fit an MLM head onto a frozen encoder.')
    add_dataclass_flags(parser, HeadFitCommand)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """``python -m bort.pretrain.mlm_head``: fit, save, print the report."""
    args = parse_configs(build_parser(), [HeadFitCommand], argv)[0]
    config = HeadFitConfig(**{k: getattr(args, k) for k in (
        'steps', 'batch_size', 'learning_rate', 'seq_len', 'max_sequences', 'heldout_fraction',
        'seed')})
    model = minilm_dir() if args.model in DEFAULT_NAMES else args.model
    if not os.path.isfile(os.path.join(model, 'arch.json')) and os.path.isfile(
            os.path.join(model, 'config.json')):
        model = imported_hf_dir(model)  # a Hugging Face folder, imported once
    report = fit_mlm_head(model, args.corpus, args.out, config)
    emit(json.dumps({k: v for k, v in report.items() if k != 'config'}, indent=2))
    return report


if __name__ == '__main__':
    setup_command_logging()
    run_main(main, (UserError, FileNotFoundError), 'bort.pretrain.mlm_head')
