"""A separable toy task in GLUE's RTE layout, a tiny WordPiece tokenizer and tiny model folders.

Shared by the fine-tuning and Agora tests (not a test module itself). The task: the label is
``entailment`` exactly when the hypothesis holds the word ``yes`` (it holds ``no`` otherwise);
everything else is filler drawn from :data:`FILLER`.
"""
import os
import shutil
import sys
from typing import Optional, Sequence

import numpy as np

from bort.arch import Architecture
from bort.model import build_model, save_model
from bort.tokenizers import WordPieceTokenizer

FILLER = ['the', 'cat', 'dog', 'sat', 'on', 'mat', 'a', 'big', 'small', 'red', 'blue', 'green',
          'house', 'tree', 'car', 'ran', 'saw', 'ate', 'fish', 'bird', 'sun', 'moon', 'day',
          'night', 'man', 'woman', 'child', 'old', 'new', 'fast', 'slow', 'hot', 'cold']
SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
VOCAB = SPECIALS + FILLER + ['yes', 'no', '.']
LABELS = ('not_entailment', 'entailment')


def tiny_arch(**changes) -> Architecture:
    """vocab 99, width 32: every code path in milliseconds."""
    values = dict(num_layers=2, num_heads=4, units=32, hidden_size=64, vocab_size=99,
                  max_length=40, dropout=0.0)
    values.update(changes)
    return Architecture(**values)


def tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer(VOCAB, lower=True)


def pretrained_folder(folder: str, seed: int = 0, **arch_changes) -> str:
    """A project model folder with an MLM decoder and the toy tokenizer (random weights)."""
    import mxnet as mx
    mx.random.seed(seed)
    model = build_model(tiny_arch(**arch_changes), use_decoder=True)
    save_model(model, folder)
    tokenizer().save(folder)
    return folder


def sentence(rng, n: int) -> str:
    return ' '.join(rng.choice(FILLER, size=n)) + ' .'


def example(rng, label: int):
    """(premise, hypothesis) of one toy pair with the given label index."""
    hypothesis = sentence(rng, int(rng.randint(2, 5))).split()
    hypothesis.insert(int(rng.randint(0, len(hypothesis))), 'yes' if label else 'no')
    return sentence(rng, int(rng.randint(3, 8))), ' '.join(hypothesis)


def write_rte(data_dir: str, n_train: int = 64, n_dev: int = 32, n_test: int = 16,
              seed: int = 0, flip_dev: Sequence[int] = ()) -> str:
    """RTE/{train,dev,test}.tsv under ``data_dir`` (balanced labels, official columns).

    ``flip_dev``: dev rows whose gold label is written the wrong way round (the rule says
    one label, the file the other), to tell a teacher's labels from dev gold labels.
    """
    rng = np.random.RandomState(seed)
    folder = os.path.join(data_dir, 'RTE')
    os.makedirs(folder, exist_ok=True)
    for split, n in (('train', n_train), ('dev', n_dev), ('test', n_test)):
        rows = ['index\tsentence1\tsentence2' + ('' if split == 'test' else '\tlabel')]
        for i in range(n):
            label = i % 2
            a, b = example(rng, label)
            gold = 1 - label if split == 'dev' and i in flip_dev else label
            rows.append(f'{i}\t{a}\t{b}' + ('' if split == 'test' else f'\t{LABELS[gold]}'))
        with open(os.path.join(folder, f'{split}.tsv'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return data_dir


def finetune_config(tmp_path, **changes):
    """A FinetuneConfig that learns the toy task in a second (data and model made if missing)."""
    from bort.finetune.config import FinetuneConfig
    data, model = str(tmp_path / 'data'), str(tmp_path / 'pretrained')
    if not os.path.isdir(data):
        write_rte(data)
    if not os.path.isdir(model):
        pretrained_folder(model)
    values = dict(task='RTE', data_dir=data, model=model, output_dir=str(tmp_path / 'run'),
                  max_length=32, batch_size=8, lr=1e-2, weight_decay=0.0, warmup_ratio=0.1,
                  epochs=4, init_range=0.1, head_dropout=0.0, seed=0)
    values.update(changes)
    return FinetuneConfig(**values)


def horovodrun() -> Optional[str]:
    """The horovodrun next to this Python, or on PATH; None when Horovod is not installed."""
    local = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return local if os.path.exists(local) else shutil.which('horovodrun')


def write_stsb(data_dir: str, n_train: int = 64, n_dev: int = 32, seed: int = 0) -> str:
    """STS-B/{train,dev}.tsv (official 10 columns): score 4.0 with ``yes``, 1.0 with ``no``."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(data_dir, 'STS-B')
    os.makedirs(folder, exist_ok=True)
    header = ('index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t'
              'sentence2\tscore')
    for split, n in (('train', n_train), ('dev', n_dev)):
        rows = [header]
        for i in range(n):
            a, b = example(rng, i % 2)
            score = (4.0 if i % 2 else 1.0) + rng.uniform(-0.3, 0.3)
            rows.append(f'{i}\tmain-news\tfile\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score:.3f}')
        with open(os.path.join(folder, f'{split}.tsv'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return data_dir
