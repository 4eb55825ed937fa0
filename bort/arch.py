"""Architectures as data: the <D, A, H, I> tuple of the Bort paper and its named presets.

An :class:`Architecture` is a frozen value. It travels with every weights file as
``arch.json`` (see :func:`save_arch` / :func:`load_arch`), so a checkpoint always knows its shape.

Naming follows GluonNLP: ``num_layers`` = D, ``num_heads`` = A, ``units`` = H (model width) and
``hidden_size`` = I (feed-forward size; GluonNLP's "hidden_size" is the FFN size, not the width).
Released checkpoint names read ``bort_{D}_{A}_{I}_{H}``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import UserError

__all__ = ['Architecture', 'ArchitectureError', 'ARCHITECTURES', 'get_arch', 'register_arch',
           'save_arch', 'load_arch', 'search_space', 'PAPER_SEARCH_SPACE', 'ROBERTA_VOCAB_SIZE',
           'ARCH_FILE', 'BEST_ARCH_FILE', 'SIZE_LIMITS', 'MAX_PARAMETERS']

#: Size of RoBERTa's byte-level BPE vocabulary (GluonNLP ``openwebtext_ccnews_stories_books_cased``).
ROBERTA_VOCAB_SIZE = 50265
#: Where the embeddings' dropout sits relative to their LayerNorm (GluonNLP's order first).
EMBEDDING_DROPOUTS = ('before_norm', 'after_norm')
#: BERT's cased and uncased WordPiece vocabularies.
BERT_CASED_VOCAB_SIZE = 28996
BERT_UNCASED_VOCAB_SIZE = 30522

ARCH_FILE = 'arch.json'
#: What a search writes for its chosen architecture (``run_pretraining.py --arch`` reads it).
BEST_ARCH_FILE = 'best_arch.json'


class ArchitectureError(UserError, ValueError):
    """An architecture tuple that cannot be built."""


#: The largest value of each size field: far above any BERT-family model (BERT-large: 24
#: layers, H 1024, I 4096; RoBERTa's 50,265 tokens), far below what would exhaust memory
#: before any check ran (100,000 layers or 2^30 units grew the process to 3.5-9.5 GB first).
SIZE_LIMITS = {'num_layers': 1024, 'num_heads': 1024, 'units': 65536, 'hidden_size': 262144,
               'vocab_size': 2 ** 24, 'max_length': 65536}
#: The most parameters an architecture may have (80 GB of float32 weights).
MAX_PARAMETERS = 2e10


@dataclass(frozen=True)
class Architecture:
    """A BERT-family encoder, parametrised by the tuple <D, A, H, I> and its embedding switches.

    Parameters
    ----------
    num_layers : int
        D, the number of encoder layers.
    num_heads : int
        A, the number of attention heads; must divide ``units``.
    units : int
        H, the model width.
    hidden_size : int
        I, the feed-forward (intermediate) size.
    vocab_size : int
        Rows of the word embedding (and of the tied MLM decoder).
    max_length : int
        Rows of the position embedding; positions start at 0 (BERT style).
    embed_size : int or None
        Width of the embeddings; ``None`` means ``units``. GluonNLP's BERTModel has no projection
        between embedding and encoder, so any other value is rejected.
    dropout : float
        Dropout on embeddings, attention weights and residual branches.
    layer_norm_eps : float
        Epsilon of every LayerNorm (1e-5 for Bort and RoBERTa, 1e-12 for Google's BERT).
    token_type_vocab_size : int
        Rows of the token-type (segment) embedding; 0 means no token-type embedding (Bort, RoBERTa).
    use_pooler : bool
        Whether the model carries BERT's tanh pooler over the first token.
    embedding_dropout : {'before_norm', 'after_norm'}
        Where the embeddings' dropout sits: before their LayerNorm as GluonNLP's encoder (and so
        the released Bort) has it, or after it as Google's BERT and Hugging Face's models do
        (models imported from Hugging Face get this). A training-time difference only: at
        inference there is no dropout.
    name : str
        A label for tables and logs; not part of the shape.
    """

    num_layers: int
    num_heads: int
    units: int
    hidden_size: int
    vocab_size: int = ROBERTA_VOCAB_SIZE
    max_length: int = 512
    embed_size: Optional[int] = None
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    token_type_vocab_size: int = 0
    use_pooler: bool = False
    embedding_dropout: str = 'before_norm'
    name: str = ''

    def __post_init__(self):
        sizes = {'num_layers': self.num_layers, 'num_heads': self.num_heads, 'units': self.units,
                 'hidden_size': self.hidden_size, 'vocab_size': self.vocab_size,
                 'max_length': self.max_length}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ArchitectureError(f'{key} must be a positive integer, got {value!r}')
        for key, value in sizes.items():
            if value > SIZE_LIMITS[key]:
                raise ArchitectureError(f'{key} must be at most {SIZE_LIMITS[key]}, got {value} '
                                        f'(a limit against absurd sizes, checked before '
                                        f'anything is allocated)')
        approx = (self.num_layers * (4 * self.units ** 2 + 2 * self.units * self.hidden_size)
                  + (self.vocab_size + self.max_length) * self.units)
        if approx > MAX_PARAMETERS:
            raise ArchitectureError(f'about {approx:.2g} parameters ({4 * approx / 1e9:.3g} GB of '
                                    f'float32 weights), more than the at most {MAX_PARAMETERS:g} '
                                    f'an architecture may have')
        if self.units % self.num_heads:
            raise ArchitectureError(f'units (H={self.units}) must be divisible by num_heads '
                                    f'(A={self.num_heads})')
        if self.embed_size is not None and self.embed_size != self.units:
            raise ArchitectureError(f'embed_size={self.embed_size} differs from units='
                                    f'{self.units}: the encoder has no embedding projection')
        if self.embed_size is not None and (isinstance(self.embed_size, bool)
                                            or not isinstance(self.embed_size, int)):
            raise ArchitectureError(f'embed_size must be an integer or null, got '
                                    f'{self.embed_size!r}')
        for key in ('dropout', 'layer_norm_eps'):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArchitectureError(f'{key} must be a number, got {value!r}')
        if not 0.0 <= self.dropout < 1.0:
            raise ArchitectureError(f'dropout must be in [0, 1), got {self.dropout}')
        if self.layer_norm_eps <= 0:
            raise ArchitectureError(f'layer_norm_eps must be positive, got {self.layer_norm_eps}')
        if (isinstance(self.token_type_vocab_size, bool)
                or not isinstance(self.token_type_vocab_size, int)
                or self.token_type_vocab_size < 0):
            raise ArchitectureError(f'token_type_vocab_size must be an integer >= 0, got '
                                    f'{self.token_type_vocab_size!r}')
        if not isinstance(self.use_pooler, bool):
            raise ArchitectureError(f'use_pooler must be true or false, got {self.use_pooler!r}')
        if self.embedding_dropout not in EMBEDDING_DROPOUTS:
            raise ArchitectureError(f'embedding_dropout must be one of {EMBEDDING_DROPOUTS}, '
                                    f'got {self.embedding_dropout!r}')
        if not isinstance(self.name, str):
            raise ArchitectureError(f'name must be a string, got {self.name!r}')

    @property
    def tuple(self) -> Tuple[int, int, int, int]:
        """The paper's <D, A, H, I>."""
        return (self.num_layers, self.num_heads, self.units, self.hidden_size)

    @property
    def label(self) -> str:
        """``name`` if set, else the released naming ``bort_{D}_{A}_{I}_{H}``."""
        d, a, h, i = self.tuple
        return self.name or f'bort_{d}_{a}_{i}_{h}'

    def replace(self, **changes) -> 'Architecture':
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict) -> 'Architecture':
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ArchitectureError(f'unknown architecture fields {unknown}; known: {sorted(known)}')
        missing = [f.name for f in fields if f.default is dataclasses.MISSING
                   and f.name not in values]
        if missing:
            raise ArchitectureError(f'architecture fields {missing} missing (required: '
                                    f'num_layers, num_heads, units, hidden_size)')
        return cls(**values)


ARCHITECTURES: Dict[str, Architecture] = {}


def register_arch(arch: Architecture) -> Architecture:
    """Add a named architecture to the registry (its ``name`` is the key)."""
    if not arch.name:
        raise ArchitectureError('a registered architecture needs a name')
    ARCHITECTURES[arch.name] = arch
    return arch


def get_arch(value: str) -> Architecture:
    """The one way to name an architecture: every ``--arch`` goes through here.

    Parameters
    ----------
    value : str
        A registered name (see :data:`ARCHITECTURES`); an inline JSON object; a JSON file; or a
        folder holding ``arch.json`` (a model folder) or ``best_arch.json`` (a search's output
        folder). JSON may hold the fields directly or under ``arch`` / ``architecture`` (a row
        of a search's ``results.json``).

    Raises
    ------
    ArchitectureError
        When ``value`` is none of these, or the JSON does not describe a valid architecture.
    """
    if value in ARCHITECTURES:
        return ARCHITECTURES[value]
    if value.lstrip().startswith('{'):
        return _arch_from_json(value, 'the inline architecture')
    path = value
    if os.path.isdir(path):
        path = os.path.join(value, ARCH_FILE)
        best = os.path.join(value, BEST_ARCH_FILE)
        if not os.path.isfile(path) and os.path.isfile(best):
            path = best
        if not os.path.isfile(path):
            raise ArchitectureError(f'{value}: a folder with neither {ARCH_FILE} (a model folder) '
                                    f'nor {BEST_ARCH_FILE} (a search\'s output)')
    if not os.path.isfile(path):
        raise ArchitectureError(f'unknown architecture {value!r}: neither a registered name '
                                f'({", ".join(sorted(ARCHITECTURES))}) nor a JSON file, folder '
                                f'or object')
    with open(path) as f:
        return _arch_from_json(f.read(), path)


def _arch_from_json(text: str, source: str) -> Architecture:
    """An architecture from JSON text, its fields at the top or under ``arch``/``architecture``.
    """
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArchitectureError(f'{source}: not valid JSON ({err})') from None
    if not isinstance(values, dict):
        raise ArchitectureError(f'{source}: expected a JSON object of architecture fields')
    for key in ('arch', 'architecture'):
        if isinstance(values.get(key), dict):
            values = values[key]
    try:
        return Architecture.from_dict(values)
    except ArchitectureError as err:
        # Name the file (or say the text was inline) so the user knows what to fix.
        raise ArchitectureError(f'{source}: {err}') from None


def save_arch(arch: Architecture, path: str) -> str:
    """Write ``arch`` as JSON; ``path`` is a file or a folder (then ``folder/arch.json``)."""
    if os.path.isdir(path):
        path = os.path.join(path, ARCH_FILE)
    with open(path, 'w') as f:
        json.dump(arch.to_dict(), f, indent=2, sort_keys=True)
        f.write('\n')
    return path


def load_arch(path: str) -> Architecture:
    """Read a model's architecture; ``path`` is a JSON file or a folder holding ``arch.json``."""
    if os.path.isdir(path):
        path = os.path.join(path, ARCH_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f'no architecture file at {path}')
    with open(path) as f:
        return _arch_from_json(f.read(), path)


# The released checkpoint (bort.params): width 1024, FFN 768.
register_arch(Architecture(4, 8, 1024, 768, name='bort_4_8_768_1024'))
register_arch(Architecture(2, 16, 1024, 512, name='bort_2_16_512_1024'))
# The paper's own naming of Bort: <4, 8, 768, 1024>, width 768. Only this reading gives the
# paper's 56.14M parameters; the maintainers called the paper's naming a typo.
register_arch(Architecture(4, 8, 768, 1024, name='bort_paper'))
register_arch(Architecture(12, 12, 768, 3072, vocab_size=BERT_CASED_VOCAB_SIZE,
                           layer_norm_eps=1e-12, token_type_vocab_size=2, use_pooler=True,
                           name='bert_base'))
register_arch(Architecture(24, 16, 1024, 4096, vocab_size=BERT_UNCASED_VOCAB_SIZE,
                           layer_norm_eps=1e-12, token_type_vocab_size=2, use_pooler=True,
                           name='bert_large'))
# RoBERTa: 514 position rows in fairseq/HF of which the first two are the padding offset; here
# positions start at 0, so 512 rows. One token type, as in the Hugging Face checkpoints.
register_arch(Architecture(12, 12, 768, 3072, token_type_vocab_size=1, use_pooler=True,
                           name='roberta_base'))
register_arch(Architecture(24, 16, 1024, 4096, token_type_vocab_size=1, use_pooler=True,
                           name='roberta_large'))

#: The paper's search space (section 3.3).
PAPER_SEARCH_SPACE = {
    'num_layers': (2, 4, 6, 8, 10, 12),
    'num_heads': (4, 8, 12, 16),
    'units': (512, 768, 1024),
    'hidden_size': (256, 512, 768, 1024, 3072),
}


def search_space(num_layers: Sequence[int], num_heads: Sequence[int], units: Sequence[int],
                 hidden_size: Sequence[int], base: Optional[Architecture] = None
                 ) -> Tuple[List[Architecture], List[Tuple[int, int, int, int]]]:
    """Every valid architecture of a grid, and the tuples that were skipped as invalid.

    Parameters
    ----------
    num_layers, num_heads, units, hidden_size : sequences of int
        The values of each knob.
    base : Architecture, optional
        Supplies the non-searched fields (vocabulary, max length, ...); defaults to Bort's.

    Returns
    -------
    valid : list of Architecture
        In the order of the Cartesian product.
    skipped : list of (D, A, H, I)
        Tuples rejected by :class:`Architecture` (for instance H not divisible by A).
    """
    base = base or ARCHITECTURES['bort_4_8_768_1024']
    valid, skipped = [], []
    for d, a, h, i in itertools.product(num_layers, num_heads, units, hidden_size):
        try:
            valid.append(base.replace(num_layers=d, num_heads=a, units=h, hidden_size=i, name=''))
        except ArchitectureError:
            skipped.append((d, a, h, i))
    return valid, skipped


def iter_paper_space(base: Optional[Architecture] = None) -> Iterator[Architecture]:
    """The 300 valid tuples of the paper's search space."""
    return iter(search_space(**PAPER_SEARCH_SPACE, base=base)[0])
