"""BERT's WordPiece tokenizer (cased or uncased); see :mod:`bort.tokenizers` for the interface."""
from __future__ import annotations

import os
import unicodedata
from typing import Dict, List, Optional, Sequence

from .base import BERT_SPECIALS, Tokenizer, read_vocab_json, require_file

__all__ = ['WordPieceTokenizer']

# -- WordPiece ---------------------------------------------------------------------------------
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith('P')


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer(Tokenizer):
    """BERT's tokenizer: basic tokenisation, then greedy longest-match-first WordPiece.

    Basic tokenisation drops control characters, spaces out CJK characters, strips accents
    (NFD, marks removed) and lower-cases when ``lower``, and splits on whitespace and punctuation.

    Parameters
    ----------
    tokens : sequence of str
        Wordpieces in id order (continuations prefixed ``##``).
    lower : bool
        Uncased model.
    strip_accents : bool, optional
        None follows ``lower`` (as BERT does).
    specials : dict, optional
        Defaults to ``[CLS] [SEP] [PAD] [MASK] [UNK]``.
    """

    kind = 'wordpiece'

    def __init__(self, tokens: Sequence[str], lower: bool = True,
                 strip_accents: Optional[bool] = None, specials: Optional[Dict[str, str]] = None,
                 max_chars_per_word: int = 100):
        super().__init__(tokens, dict(BERT_SPECIALS, **(specials or {})))
        self.lower = lower
        self.strip_accents = lower if strip_accents is None else strip_accents
        self.max_chars_per_word = max_chars_per_word

    @classmethod
    def from_file(cls, vocab_path: str, lower: bool = True, **kwargs) -> 'WordPieceTokenizer':
        """From a ``vocab.txt`` (one wordpiece a line) or a GluonNLP vocabulary JSON."""
        if vocab_path.endswith(('.json', '.vocab')):
            tokens, named = read_vocab_json(vocab_path)
            kwargs['specials'] = dict(named, **(kwargs.get('specials') or {}))
        else:
            with open(require_file(vocab_path, 'WordPiece vocabulary'), encoding='utf-8') as f:
                tokens = [line.rstrip('\r\n') for line in f]
            while tokens and not tokens[-1]:
                tokens.pop()
        return cls(tokens, lower=lower, **kwargs)

    def _basic(self, text: str) -> List[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            cat = unicodedata.category(ch)
            if ch in ' \t\n\r' or cat == 'Zs':
                chars.append(' ')
            elif cat.startswith('C'):
                continue
            elif _is_cjk(cp):
                chars.append(f' {ch} ')
            else:
                chars.append(ch)
        text = ''.join(chars)
        if self.strip_accents:
            text = ''.join(c for c in unicodedata.normalize('NFD', text)
                           if unicodedata.category(c) != 'Mn')
        if self.lower:
            text = text.lower()
        words = []
        for word in text.split():
            start = 0
            for i, ch in enumerate(word):
                if _is_punctuation(ch):
                    if i > start:
                        words.append(word[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(word):
                words.append(word[start:])
        return words

    def _wordpiece(self, word: str) -> List[str]:
        if len(word) > self.max_chars_per_word:
            return [self.specials['unk']]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else '##' + word[start:end]
                if piece in self.token_to_id:
                    break
                end -= 1
            if end == start:
                return [self.specials['unk']]
            pieces.append(piece)
            start = end
        return pieces

    def _tokenize_plain(self, text: str) -> List[str]:
        return [p for word in self._basic(text) for p in self._wordpiece(word)]

    def _detokenize(self, tokens: List[str]) -> str:
        return ' '.join(tokens).replace(' ##', '').strip()

    def _write_files(self, folder: str) -> Dict:
        with open(os.path.join(folder, 'vocab.txt'), 'w', encoding='utf-8') as f:
            f.writelines(t + '\n' for t in self.tokens)
        return {'vocab': 'vocab.txt', 'lower': self.lower, 'strip_accents': self.strip_accents,
                'hf_config': {'tokenizer_class': 'BertTokenizer', 'do_lower_case': self.lower,
                              'strip_accents': self.strip_accents,
                              'tokenize_chinese_chars': True}}


