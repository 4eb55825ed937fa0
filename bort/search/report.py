"""The outputs of a search: ``results.json``, ``table.md``, ``pareto.png`` and ``best_arch.json``.

``table.md`` follows the paper's Table 1 (rank, W, parameters in M, inference cost, <D, A, H, I>,
e) with reference rows for the teacher (W = 0 by definition) and for the ``reference``
architectures (BERT-base by default) re-shaped onto the teacher's vocabulary, as the paper's
footnote does for RoBERTa-base. Everything in it is derived from the candidates' records and the
cached costs, so a resumed search writes the same table byte for byte.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Sequence

from ..arch import BEST_ARCH_FILE, Architecture, save_arch
from ..checkpoint import write_json_atomic
from .scoring import non_dominated, rank_records, w_coefficient

__all__ = ['score_records', 'format_table', 'plot_pareto', 'write_outputs', 'RESULTS_FILE',
           'TABLE_FILE', 'PLOT_FILE']

log = logging.getLogger(__name__)

RESULTS_FILE = 'results.json'
TABLE_FILE = 'table.md'
PLOT_FILE = 'pareto.png'


def score_records(records: Sequence[Dict], teacher: Dict) -> List[Dict]:
    """Records with ``w`` and ``rank`` set, in rank order (copies; inputs untouched).

    Parameters
    ----------
    records : sequence of dict
        ``params, inference_cost, error`` and the four knobs.
    teacher : dict
        ``params`` and ``inference_cost`` of T.
    """
    scored = []
    for record in records:
        record = dict(record)
        record['w'] = w_coefficient(record['params'], record['inference_cost'], record['error'],
                                    teacher['params'], teacher['inference_cost'])
        scored.append(record)
    return rank_records(scored)


def _num(value: Optional[float], fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '—'
    return format(value, fmt)


def _tuple(r: Dict) -> str:
    return f"<{r['num_layers']}, {r['num_heads']}, {r['units']}, {r['hidden_size']}>"


def format_table(ranked: Sequence[Dict], teacher: Dict, references: Sequence[Dict],
                 cost: Dict, notes: Sequence[str] = (), error: str = 'cross_entropy') -> str:
    """The paper's Table 1 in Markdown.

    Parameters
    ----------
    ranked : sequence of dict
        Scored records in rank order (:func:`score_records`).
    teacher : dict
        ``label``, the four knobs, ``params``, ``inference_cost`` (and ``heldout_entropy``).
    references : sequence of dict
        ``label``, the four knobs, ``params``, ``inference_cost`` and, when the tuple was
        evaluated, ``w`` and ``error``.
    cost : dict
        :meth:`CostModel.describe`.
    notes : sequence of str
        Lines printed under the table.
    error : {'cross_entropy', 'kl'}
        What e is (:attr:`SearchConfig.error`).
    """
    unit = cost['unit']
    lines = [f'| Architecture | W | Parameters (M) | Inference ({unit}) | <D, A, H, I> | e |',
             '|---|---:|---:|---:|---|---:|']
    for r in ranked:
        lines.append(f"| {r['rank']} | {_num(r['w'], '.3f')} | {r['params'] / 1e6:.2f} | "
                     f"{_num(r['inference_cost'], '.4g')} | {_tuple(r)} | "
                     f"{_num(r['error'], '.4f')} |")
    lines.append(f"| {teacher['label']} (T) | 0 | {teacher['params'] / 1e6:.2f} | "
                 f"{_num(teacher['inference_cost'], '.4g')} | {_tuple(teacher)} | — |")
    for ref in references:
        lines.append(f"| {ref['label']} | {_num(ref.get('w'), '.3f')} | "
                     f"{ref['params'] / 1e6:.2f} | {_num(ref['inference_cost'], '.4g')} | "
                     f"{_tuple(ref)} | {_num(ref.get('error'), '.4f')} |")
    if cost['kind'] == 'measured':
        how = (f"inference: median CPU seconds per sample at batch {cost['batch_size']}, "
               f"sequence length {cost['seq_len']}, {cost.get('threads', '?')} threads "
               f"({cost.get('device', 'cpu')}), {cost['repeats']} runs after "
               f"{cost['warmup']} warm-up")
    else:
        how = f"inference: operation count per sample at sequence length {cost['seq_len']}"
    entropy = teacher.get('heldout_entropy')
    if error == 'kl':
        what = (f"KL divergence (nats) from the teacher's to the candidate's masked-LM "
                f"distribution per held-out masked position (the cross-entropy minus the "
                f"teacher's entropy, {entropy:.4f})")
    else:
        what = ("cross-entropy (nats) between the teacher's and the candidate's masked-LM "
                "distributions per held-out masked position"
                + (f" (the teacher's own entropy, its floor: {entropy:.4f})" if entropy else ''))
    lines += ['', f'{how}; e: {what}; W = ((p(T) − p)/p(T))·((i(T) − i)/i(T))/e.']
    lines += list(notes)
    return '\n'.join(lines) + '\n'


def plot_pareto(ranked: Sequence[Dict], teacher: Dict, cost: Dict, path: str) -> List[int]:
    """Parameters vs inference cost, coloured by error; winner starred, non-dominated outlined.

    The non-dominated set is taken over the three minimised objectives (p, i, e).

    Returns
    -------
    list of int
        Indices into ``ranked`` of the non-dominated candidates.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    ok = [r for r in ranked if math.isfinite(r['error'])]
    front = non_dominated([(r['params'], r['inference_cost'], r['error']) for r in ok])
    fig, ax = plt.subplots(figsize=(7, 5))
    if ok:
        xs = [r['params'] / 1e6 for r in ok]
        ys = [r['inference_cost'] for r in ok]
        points = ax.scatter(xs, ys, c=[r['error'] for r in ok], cmap='viridis', s=40, zorder=2)
        fig.colorbar(points, ax=ax, label='surrogate error e (nats)')
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=140, facecolors='none',
                   edgecolors='black', linewidths=1.2, zorder=3, label='non-dominated (p, i, e)')
        best = ok[0]
        ax.scatter([best['params'] / 1e6], [best['inference_cost']], marker='*', s=320,
                   c='red', edgecolors='black', zorder=4,
                   label=f"best W: {_tuple(best)}")
    ax.scatter([teacher['params'] / 1e6], [teacher['inference_cost']], marker='X', s=120,
               c='grey', zorder=2, label=f"teacher {teacher['label']}")
    ax.set_xlabel('parameters (M)')
    ax.set_ylabel(f"inference cost ({cost['unit']})")
    ax.set_title('Candidates of the search')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper left')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    by_id = {id(r): n for n, r in enumerate(ranked)}
    return [by_id[id(ok[i])] for i in front]


def write_outputs(out: str, ranked: List[Dict], teacher: Dict, references: List[Dict],
                  cost: Dict, extra: Dict, best_arch: Optional[Architecture],
                  notes: Sequence[str] = (), error: str = 'cross_entropy') -> str:
    """Write results.json, table.md, pareto.png and best_arch.json; return the table."""
    table = format_table(ranked, teacher, references, cost, notes, error)
    with open(os.path.join(out, TABLE_FILE), 'w') as f:
        f.write(table)
    front = plot_pareto(ranked, teacher, cost, os.path.join(out, PLOT_FILE)) if ranked else []
    if best_arch is not None:
        save_arch(best_arch, os.path.join(out, BEST_ARCH_FILE))
    results = dict(extra, teacher=teacher, references=references, cost=cost,
                   candidates=ranked, non_dominated=[ranked[i]['rank'] for i in front],
                   best=ranked[0] if ranked else None)
    write_json_atomic(os.path.join(out, RESULTS_FILE), results)
    return table
