"""Tiny tokenizer, text, shards and models for the pretraining tests (all made in tmp_path)."""
import json
import os

import numpy as np

from bort.arch import Architecture
from bort.model import build_model, save_model
from bort.pretrain.prepare import PrepConfig, prepare_pretraining_data
from bort.tokenizers import WordPieceTokenizer

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', 'far', 'a', 'big', 'red', 'blue',
         'house', 'tree', 'sun', 'moon', 'and', 'then', 'it', 'was', '.', ',']


def tiny_tokenizer(words=WORDS):
    return WordPieceTokenizer(SPECIALS + list(words), lower=True)


def write_corpus(folder, files=2, docs=30, seed=0, words=WORDS[:-2]):
    """Text files, one sentence a line, blank lines between documents; returns their paths."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(files):
        path = os.path.join(folder, f'part{k}.txt')
        with open(path, 'w') as f:
            for _ in range(docs):
                for _ in range(rng.randint(1, 6)):
                    f.write(' '.join(rng.choice(words, rng.randint(3, 12))) + ' .\n')
                f.write('\n')
        paths.append(path)
    return paths


def prepared_data(tmp_path, max_seq_length=24, num_workers=2, shard_rows=30,
                  eval_fraction=0.1, **corpus):
    """A prepared data folder (train and eval shards) and its tokenizer."""
    tok = tiny_tokenizer()
    tok_dir = str(tmp_path / 'tok')
    tok.save(tok_dir)
    paths = write_corpus(str(tmp_path / 'text'), **corpus)
    out = str(tmp_path / 'data')
    prepare_pretraining_data(paths, tok_dir, out, PrepConfig(
        max_seq_length=max_seq_length, num_workers=num_workers, shard_rows=shard_rows,
        eval_fraction=eval_fraction, max_predictions=8))
    return out, tok


def student_arch(vocab_size, dropout=0.0, **changes):
    return Architecture(num_layers=2, num_heads=4, units=32, hidden_size=64,
                        vocab_size=vocab_size, max_length=32, dropout=dropout, **changes)


def save_teacher(folder, vocab_size, tokenizer=None, seed=1):
    """A random (but fixed) teacher with an MLM head, wider than the student."""
    import mxnet as mx
    mx.random.seed(seed)
    model = build_model(Architecture(num_layers=2, num_heads=4, units=48, hidden_size=96,
                                     vocab_size=vocab_size, max_length=32, dropout=0.0))
    save_model(model, folder)
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder


def arch_json(arch):
    return json.dumps(arch.to_dict())
