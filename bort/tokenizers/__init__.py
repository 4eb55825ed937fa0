"""Tokenizers and vocabularies, fully offline: byte-level BPE, WordPiece and sentencepiece BPE.

Every tokenizer has the same small interface (:class:`Tokenizer`): ``tokenize``, ``encode``,
``decode``, ``vocab_size``, the special ids ``cls_id, sep_id, pad_id, mask_id, unk_id``,
``build_inputs`` (adds the family's special tokens) and ``save(folder)``;
:func:`load_tokenizer` reads one back from a folder.

- :mod:`~bort.tokenizers.base`: the interface, special-token sets, vocabulary-file readers;
- :mod:`~bort.tokenizers.bpe`: RoBERTa/GPT-2 byte-level BPE and sentencepiece BPE;
- :mod:`~bort.tokenizers.wordpiece`: BERT's WordPiece;
- :mod:`~bort.tokenizers.load`: a folder (this project's descriptor or a Hugging Face layout).
"""
from .base import (BERT_SPECIALS, ROBERTA_SPECIALS, TOKENIZER_FILE, Tokenizer, read_merges,
                   read_vocab_json, require_file)
from .bpe import (ByteBPETokenizer, SentencePieceTokenizer, bytes_to_unicode, gpt2_files,
                  gpt2_tokenizer,
                  train_sentencepiece)
from .load import load_tokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ['Tokenizer', 'ByteBPETokenizer', 'WordPieceTokenizer', 'SentencePieceTokenizer',
           'load_tokenizer', 'gpt2_tokenizer', 'gpt2_files', 'train_sentencepiece', 'bytes_to_unicode',
           'ROBERTA_SPECIALS', 'BERT_SPECIALS', 'TOKENIZER_FILE', 'read_merges', 'read_vocab_json',
           'require_file']
