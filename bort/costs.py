"""Closed-form costs of an architecture: parameter count p(ξ) and operation count i(ξ).

Both are polynomials in <D, A, H, I> (SPEC section 2). The parameter count is exact: it equals the
number of trainable values of the model :func:`bort.model.build_model` builds, which the tests
check for every tuple of the paper's search space.

Run ``python -m bort.costs`` for the paper-style size table.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .cli import add_dataclass_flags, emit, make_parser, parse_configs, run_main
from .fields import opt
from .arch import (ARCHITECTURES, Architecture, BERT_CASED_VOCAB_SIZE, BERT_UNCASED_VOCAB_SIZE,
                   ROBERTA_VOCAB_SIZE, iter_paper_space)

__all__ = ['parameter_breakdown', 'num_parameters', 'flops', 'size_table', 'tuples_with_size',
           'GELU_FLOPS']

#: Operations per GELU evaluation, counted on the tanh form the paper's appendix uses,
#: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): x³ (2), ·0.044715 (1), +x (1), ·√(2/π) (1),
#: tanh (1), +1 (1), ·x (1), ·0.5 (1). The paper leaves the constant symbolic; this is our reading.
GELU_FLOPS = 9


def parameter_breakdown(arch: Architecture, with_decoder: bool = False) -> Dict[str, int]:
    """Trainable parameters per component.

    Parameters
    ----------
    arch : Architecture
    with_decoder : bool
        Count the masked-LM head: Dense(H, H) + LayerNorm + an output bias of V (its weight is
        tied to the word embedding and so adds nothing).

    Returns
    -------
    dict
        ``embeddings`` (V·H + L·H + T·H + 2H: words, positions, token types, LayerNorm),
        ``encoder`` (D layers of 4H²+4H attention, 2HI+I+H feed-forward, 4H LayerNorms),
        ``pooler`` and ``decoder`` (0 when absent), and ``total``.
    """
    d, _, h, i = arch.tuple
    per_layer = (4 * h * h + 4 * h) + (2 * h * i + i + h) + 4 * h
    parts = {
        'embeddings': arch.vocab_size * h + arch.max_length * h + arch.token_type_vocab_size * h
        + 2 * h,
        'encoder': d * per_layer,
        'pooler': h * h + h if arch.use_pooler else 0,
        'decoder': (h * h + h + 2 * h + arch.vocab_size) if with_decoder else 0,
    }
    parts['total'] = sum(parts.values())
    return parts


def num_parameters(arch: Architecture, with_decoder: bool = False) -> int:
    """p(ξ): the exact number of trainable parameters (see :func:`parameter_breakdown`)."""
    return parameter_breakdown(arch, with_decoder)['total']


def flops(arch: Architecture, seq_len: int = 512, batch_size: int = 1,
          with_decoder: bool = False, gelu_flops: int = GELU_FLOPS) -> int:
    """i(ξ) as an operation count: adds plus multiplies of one forward pass.

    The paper's appendix counting: a dense layer ``in -> out`` costs ``2·in·out`` per token
    (multiplies, adds and its bias); LayerNorm and dropout are "rolled in" with the dense layer
    before them; activations are free except GELU, which costs ``gelu_flops`` per element;
    attention adds ``QK^T`` and ``softmax(QK^T)V`` at ``2·L²·H`` each. A is absent, as in the
    paper (heads only split the same products).

    Parameters
    ----------
    arch : Architecture
    seq_len : int
        L, the (padded) sequence length.
    batch_size : int
    with_decoder : bool
        Add the masked-LM head over every position (dense, GELU, output projection to V).
    gelu_flops : int
        Operations per GELU; see :data:`GELU_FLOPS`.

    Returns
    -------
    int
    """
    d, _, h, i = arch.tuple
    length = seq_len
    dense = lambda n_in, n_out: 2 * n_in * n_out * length  # noqa: E731
    per_layer = (4 * dense(h, h)                   # Q, K, V and output projections
                 + 2 * (2 * length * length * h)   # scores and weighted values
                 + dense(h, i) + dense(i, h)       # feed-forward
                 + gelu_flops * i * length)        # GELU on the intermediate activations
    total = d * per_layer
    if arch.use_pooler:
        total += 2 * h * h
    if with_decoder:
        total += dense(h, h) + gelu_flops * h * length + dense(h, arch.vocab_size)
    return batch_size * total


# Published figures the table is checked against (SPEC section 2): millions of parameters.
_PUBLISHED = {
    'bort_paper': 56.14, 'bert_base': 110.0, 'bert_large': 340.0, 'roberta_large': 355.0,
}


def _vocab_label(vocab_size: int) -> str:
    return {ROBERTA_VOCAB_SIZE: 'RoBERTa BPE 50,265', BERT_CASED_VOCAB_SIZE: 'BERT cased 28,996',
            BERT_UNCASED_VOCAB_SIZE: 'BERT uncased 30,522'}.get(vocab_size, f'{vocab_size:,}')


def size_table(names: Sequence[str] = ('bort_paper', 'bort_4_8_768_1024', 'bort_2_16_512_1024',
                                       'bert_base', 'bert_large', 'roberta_base',
                                       'roberta_large')) -> List[Dict]:
    """One row per named architecture: parameters, embeddings, encoder share, published figure.

    Returns
    -------
    list of dict
        Keys ``name, tuple, vocab, params_m, embeddings_m, encoder_share, published_m,
        rel_diff`` (relative difference to the published figure, or None).
    """
    rows = []
    for name in names:
        arch = ARCHITECTURES[name]
        parts = parameter_breakdown(arch)
        published = _PUBLISHED.get(name)
        rows.append({
            'name': name, 'tuple': arch.tuple, 'vocab': _vocab_label(arch.vocab_size),
            'params_m': parts['total'] / 1e6, 'embeddings_m': parts['embeddings'] / 1e6,
            'encoder_share': parts['encoder'] / parts['total'],
            'published_m': published,
            'rel_diff': None if published is None else parts['total'] / 1e6 / published - 1,
        })
    return rows


def tuples_with_size(millions: float, rel_tolerance: float = 0.025,
                     base: Optional[Architecture] = None) -> List[Architecture]:
    """Tuples of the paper's search space within ``rel_tolerance`` of ``millions`` parameters.

    The published sizes are rounded and do not say what was counted (the paper's Bort figure is
    2.5 % above our exact count), so the match is relative. Sorted by distance to the target.
    """
    found = [arch for arch in iter_paper_space(base)
             if abs(num_parameters(arch) / 1e6 / millions - 1) <= rel_tolerance]
    return sorted(found, key=lambda a: (abs(num_parameters(a) / 1e6 - millions), a.tuple))


def format_size_table(rows: List[Dict]) -> str:
    """Markdown rendering of :func:`size_table`."""
    lines = ['| architecture | <D, A, H, I> | vocabulary | params (M) | embeddings (M) | '
             'encoder share | published (M) | diff |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        pub = '' if r['published_m'] is None else f"{r['published_m']:.2f}"
        diff = '' if r['rel_diff'] is None else f"{100 * r['rel_diff']:+.1f} %"
        lines.append(f"| {r['name']} | <{', '.join(map(str, r['tuple']))}> | {r['vocab']} | "
                     f"{r['params_m']:.2f} | {r['embeddings_m']:.2f} | "
                     f"{100 * r['encoder_share']:.1f} % | {pub} | {diff} |")
    return '\n'.join(lines)


@dataclass
class SizeTableCommand:
    """Flags of ``python -m bort.costs``: the paper-style size table."""

    size: float = opt(35.20, 'also list the search-space tuples of this size in millions '
                      '(Table 1: A2 and A3 have 35.20M)')
    tolerance: float = opt(0.025, 'relative tolerance of that match')


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m bort.costs``."""
    parser = make_parser(prog='python -m bort.costs',
                         description='Print the paper-style size table.')
    add_dataclass_flags(parser, SizeTableCommand)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """``python -m bort.costs``: print the size table (and the tuples of ``--size``)."""
    args = parse_configs(build_parser(), [SizeTableCommand], argv)[0]
    text = format_size_table(size_table())
    text += (f'\n\nSearch-space tuples within {100 * args.tolerance:.1f} % of {args.size:.2f}M '
             f'parameters (RoBERTa vocabulary, no pooler, no MLM head; equal sizes differ only '
             f'in A):')
    for arch in tuples_with_size(args.size, args.tolerance):
        text += f"\n  <{', '.join(map(str, arch.tuple))}>  {num_parameters(arch) / 1e6:.2f}M"
    emit(text)
    return text


if __name__ == '__main__':
    run_main(main, (), 'bort.costs')
