"""Reading a tokenizer from a folder: this project's descriptor or a Hugging Face layout.

A model folder's ``tokenizer.json`` is this project's descriptor (``{"format": "bort-tokenizer"}``),
not Hugging Face's fast-tokenizer file; :func:`load_tokenizer` also reads plain Hugging Face
folders (``vocab.json`` + ``merges.txt``, ``vocab.txt``, or a sentencepiece ``*.model``).
"""
from __future__ import annotations

import json
import os
from typing import Dict

from .base import ROLES, TOKENIZER_FILE, TOKENIZER_FORMAT, Tokenizer
from .bpe import ByteBPETokenizer, SentencePieceTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ['load_tokenizer']


def _hf_specials(folder: str) -> Dict[str, str]:
    names: Dict[str, str] = {}
    for name in ('tokenizer_config.json', 'special_tokens_map.json'):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
            for role in ROLES:
                value = data.get(f'{role}_token')
                if isinstance(value, dict):
                    value = value.get('content')
                if isinstance(value, str):
                    names[role] = value
    return names


def _hf_config(folder: str) -> Dict:
    path = os.path.join(folder, 'tokenizer_config.json')
    if not os.path.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def load_tokenizer(folder: str) -> Tokenizer:
    """The tokenizer saved in ``folder``: this project's ``tokenizer.json`` descriptor, else a
    Hugging Face layout (``vocab.json`` + ``merges.txt``, ``vocab.txt``, or a sentencepiece
    ``*.model``)."""
    desc_path = os.path.join(folder, TOKENIZER_FILE)
    desc = None
    if os.path.isfile(desc_path):
        with open(desc_path, encoding='utf-8') as f:
            data = json.load(f)
        if data.get('format') == TOKENIZER_FORMAT:
            desc = data
    if desc is not None:
        kind, specials = desc['kind'], desc['specials']
        if kind == 'byte_bpe':
            return ByteBPETokenizer.from_files(os.path.join(folder, desc['vocab']),
                                               os.path.join(folder, desc['merges']), specials)
        if kind == 'wordpiece':
            return WordPieceTokenizer.from_file(os.path.join(folder, desc['vocab']),
                                                lower=desc['lower'],
                                                strip_accents=desc['strip_accents'],
                                                specials=specials)
        if kind == 'sentencepiece':
            return SentencePieceTokenizer(os.path.join(folder, desc['model']), specials)
        raise ValueError(f'{desc_path}: unknown tokenizer kind {kind!r}')
    specials = _hf_specials(folder)
    if os.path.isfile(os.path.join(folder, 'vocab.json')):
        return ByteBPETokenizer.from_files(os.path.join(folder, 'vocab.json'),
                                           os.path.join(folder, 'merges.txt'), specials)
    if os.path.isfile(os.path.join(folder, 'vocab.txt')):
        config = _hf_config(folder)
        return WordPieceTokenizer.from_file(os.path.join(folder, 'vocab.txt'),
                                            lower=config.get('do_lower_case', True),
                                            strip_accents=config.get('strip_accents'),
                                            specials=specials)
    models = sorted(n for n in os.listdir(folder) if n.endswith('.model')) \
        if os.path.isdir(folder) else []
    if models:
        return SentencePieceTokenizer(os.path.join(folder, models[0]), specials)
    raise FileNotFoundError(
        f'no tokenizer in {os.path.abspath(folder)}: looked for {TOKENIZER_FILE} (bort '
        f'descriptor), vocab.json + merges.txt, vocab.txt and *.model')
