"""The miniature's pictures (matplotlib, Agg): pretraining curves, score bars, plain bars."""
from __future__ import annotations

from typing import Dict, List, Optional

from .verdicts import spread

__all__ = ['plot_pretraining', 'plot_scores', 'plot_bars']


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def _legend_below(fig, ax, columns: int = 3) -> None:
    """Put ``ax``'s legend under the figure's axes, growing the figure to hold it.

    A legend inside the axes hides curves wherever it is placed; below, it hides nothing.
    """
    handles, labels = ax.get_legend_handles_labels()
    rows = -(-len(labels) // columns)
    width, height = fig.get_size_inches()
    extra = 0.17 * rows + 0.1  # inches: a row of 8-point text, and a margin
    fig.set_size_inches(width, height + extra)
    fig.tight_layout(rect=(0, extra / (height + extra), 1, 1))
    fig.legend(handles, labels, loc='lower center', ncol=columns, fontsize=8, frameon=False)


def plot_pretraining(path: str, pre: Dict[str, Dict], ref: Dict, fill: float) -> None:
    """Held-out top-1 and cross-entropy against real tokens seen; ``pre`` keyed by label."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, figures in pre.items():
        tokens = [p['tokens'] * fill / 1e6 for p in figures['curve']]
        axes[0].plot(tokens, [100 * p['acc'] for p in figures['curve']], 'o-', label=name)
        axes[1].plot(tokens, [p['loss'] for p in figures['curve']], 'o-', label=name)
    axes[0].axhline(100 * ref['most_frequent_rate'], color='grey', ls=':',
                    label='most frequent token')
    axes[0].axhline(100 * ref['teacher_acc'], color='black', ls='--', label='teacher')
    axes[1].axhline(ref['teacher_loss'], color='black', ls='--', label='teacher')
    axes[0].set_title('held-out masked-LM top-1 (%)')
    axes[1].set_title('held-out masked-LM cross-entropy (nats)')
    for ax in axes:
        ax.set_xlabel('real tokens seen (millions, ≈ token slots × fill)')
    _legend_below(fig, axes[0])
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scores(path: str, columns: List[str], table: Dict[str, Dict[str, List[float]]]) -> None:
    """Grouped bars (mean ± sd over seeds, dots per seed): rows × columns of accuracies."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(columns)), 4))
    rows = list(table)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            values = [100 * v for v in table[row].get(column, [])]
            if not values:
                continue
            s = spread(values)
            x = j + (i - (len(rows) - 1) / 2) * width
            ax.bar(x, s.mean, width * 0.9, color=f'C{i}', label=row if j == 0 else None,
                   yerr=s.sd if s.n > 1 else None, capsize=3)
            ax.plot([x] * len(values), values, 'k.', ms=4)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns)
    ax.set_ylabel('accuracy (%), mean ± sd over seeds; dots: seeds')
    low = min((100 * min(v) for r in table.values() for v in r.values() if v), default=0)
    ax.set_ylim(max(0, low - 10), None)
    _legend_below(fig, ax)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(path: str, labels: List[str], values: List[float], errors: Optional[List] = None,
               ylabel: str = '', title: str = '') -> None:
    """One bar per label, with optional error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3,
           color=[f'C{i % 10}' for i in range(len(labels))])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0, ha='right'
                       if len(labels) > 6 else 'center', fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
