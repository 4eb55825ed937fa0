"""The outputs of a search: ``results.json``, ``table.md``, ``pareto.png`` and ``best_arch.json``,
and its live curves (``metrics.jsonl`` and TensorBoard events, :class:`SearchCurves`).

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
from ..distributed import Comm
from ..log import MetricsLog
from .scoring import non_dominated, rank_records, w_coefficient

__all__ = ['score_records', 'format_table', 'plot_pareto', 'write_outputs', 'SearchCurves',
           'RESULTS_FILE', 'TABLE_FILE', 'PLOT_FILE', 'METRICS_FILE']

log = logging.getLogger(__name__)

RESULTS_FILE = 'results.json'
TABLE_FILE = 'table.md'
PLOT_FILE = 'pareto.png'
METRICS_FILE = 'metrics.jsonl'
#: The numbers of a candidate's record that are curves (TensorBoard tag = key).
CURVE_KEYS = ('error', 'cross_entropy', 'train_loss', 'params', 'inference_cost',
              'train_seconds')


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


def _e(r: Dict) -> str:
    sd = r.get('error_sd')
    text = _num(r.get('error'), '.4f')
    return text if sd is None or text == '—' else f'{text} ± {sd:.4f}'


def _w(r: Dict) -> str:
    text = _num(r.get('w'), '.3f')
    if text == '—' or r.get('w_low') is None or not math.isfinite(r['w_low']):
        return text
    return f"{text} [{r['w_low']:.3f}, {r['w_high']:.3f}]"


def _i(r: Dict) -> str:
    text = _num(r.get('inference_cost'), '.4g')
    if 'inference_low' not in r or text == '—':
        return text
    return f"{text} [{r['inference_low']:.3g}, {r['inference_high']:.3g}]"


def format_table(ranked: Sequence[Dict], teacher: Dict, references: Sequence[Dict],
                 cost: Dict, notes: Sequence[str] = (), error: str = 'cross_entropy',
                 trust: Optional[Dict] = None, baseline: Optional[Dict] = None) -> str:
    """The paper's Table 1 in Markdown, with the noise of e, W's interval and a baseline.

    Parameters
    ----------
    ranked : sequence of dict
        Scored records in rank order (:func:`score_records`; ``error_sd``, ``w_low``,
        ``w_high``, ``inference_low``, ``inference_high`` shown where present).
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
    trust : dict, optional
        :func:`bort.search.checks.score_with_trust`'s summary (noise, fidelity, verdict).
    baseline : dict, optional
        :func:`bort.search.checks.unigram_baseline`: ``unigram`` and ``uniform`` e.
    """
    unit = cost['unit']
    floor = (baseline or {}).get('context_free')
    lines = [f'| Rank | W [interval] | Parameters (M) | Inference ({unit}) [p10, p90] | '
             f'<D, A, H, I> | e ± σ | context-free − e |',
             '|---|---:|---:|---:|---|---:|---:|']

    def gain(r):
        e = r.get('error')
        return '—' if floor is None or e is None or not math.isfinite(e) else \
            f'{floor - e:+.4f}'
    for r in ranked:
        lines.append(f"| {r['rank']} | {_w(r)} | {r['params'] / 1e6:.2f} | {_i(r)} | "
                     f"{_tuple(r)} | {_e(r)} | {gain(r)} |")
    lines.append(f"| {teacher['label']} (T) | 0 | {teacher['params'] / 1e6:.2f} | "
                 f"{_num(teacher['inference_cost'], '.4g')} | {_tuple(teacher)} | "
                 f"{'0 (floor)' if error == 'kl' else _num(teacher.get('heldout_entropy'), '.4f') + ' (floor)'} | "
                 f"{gain({'error': 0.0 if error == 'kl' else teacher.get('heldout_entropy')})} |")
    for ref in references:
        lines.append(f"| {ref['label']} | {_num(ref.get('w'), '.3f')} | "
                     f"{ref['params'] / 1e6:.2f} | {_num(ref['inference_cost'], '.4g')} | "
                     f"{_tuple(ref)} | {_num(ref.get('error'), '.4f')} | {gain(ref)} |")
    if baseline:
        for label, key in (('context-free floor', 'context_free'),
                           ('unigram of the training tokens', 'unigram'), ('uniform', 'uniform')):
            lines.append(f"| {label} | — | — | — | — | {baseline[key]:.4f} | "
                         f"{gain({'error': baseline[key]})} |")
    if cost['kind'] == 'measured':
        how = (f"inference: CPU seconds per sample at batch {cost['batch_size']}, "
               f"sequence length {cost['seq_len']}, {cost.get('threads', '?')} thread(s) "
               + (f"in a separate timing process, {cost.get('clock', 'wall')} clock "
                  if cost.get('child_threads') else '') +
               f"({cost.get('device', 'cpu')}), {cost['repeats']} runs after "
               f"{cost['warmup']} warm-up, each candidate timed in the same rounds as the "
               f"teacher: the median ratio to the teacher times i(T) [p10, p90 of the ratio]")
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
    if baseline:
        lines.append(f"context-free − e: how far each candidate is below the best model that "
                     f"ignores the context (one fixed distribution, the teacher's averaged over "
                     f"the held-out positions: e {baseline['context_free']:.4f}); ≤ 0 means "
                     f"the candidate has learned nothing from the context, only which tokens "
                     f"are frequent (the training tokens' unigram: {baseline['unigram']:.4f}; "
                     f"uniform: {baseline['uniform']:.4f}).")
    lines += list(notes)
    if trust:
        lines += _trust_lines(trust)
    return '\n'.join(lines) + '\n'


def _trust_lines(trust: Dict) -> List[str]:
    """The noise, fidelity and verdict paragraphs under the table."""
    lines = ['']
    noise = trust.get('noise', {})
    if noise.get('df'):
        lines.append(f"Seed noise of e: σ = {noise['sigma']:.4f} nats (pooled standard "
                     f"deviation, {noise['seeds']} seeds of each of the top "
                     f"{len(noise['candidates'])} candidates, {noise['df']} degrees of freedom; "
                     f"largest range within one candidate {noise['max_range']:.4f}). W's "
                     f"interval: e ± 2σ and i's p10–p90.")
    else:
        lines.append('Seed noise of e: not measured (--noise_seeds 0, or an incomplete search).')
    fidelity = trust.get('fidelity') or {}
    if fidelity.get('candidates'):
        k = fidelity['factor']
        lines += ['', f'Proxy fidelity (the same candidates trained {k}× longer on fresh '
                      f'batches):', '',
                  f'| <D, A, H, I> | e after s | e after {k}·s | W after s | W after {k}·s |',
                  '|---|---:|---:|---:|---:|']
        for row in fidelity['rows']:
            lines.append(f"| <{', '.join(map(str, row['tuple']))}> | {row['error_short']:.4f} | "
                         f"{row['error_long']:.4f} | {_num(row['w_short'], '.3f')} | "
                         f"{_num(row['w_long'], '.3f')} |")
        lines += ['', f"Kendall τ(e after s, e after {k}·s) = {fidelity['tau_error']:.3f} "
                      f"(p = {fidelity['p_error']:.3g}); τ of W = {fidelity['tau_w']:.3f} "
                      f"(p = {fidelity['p_w']:.3g}); over {fidelity['candidates']} candidates."]
    judged = trust.get('verdict') or {}
    if judged.get('text'):
        lines += ['', 'Verdict: ' + judged['text']]
    return lines


def plot_pareto(ranked: Sequence[Dict], teacher: Dict, cost: Dict, path: str,
                baseline: Optional[Dict] = None) -> List[int]:
    """Two panels: parameters vs inference cost (p10–p90 bars) coloured by e, the winner starred
    and the non-dominated set (p, i, e) outlined; and e ± 2σ against parameters, with the
    context-free floor.

    The colour scale spans at least 6σ (σ the seed noise of e, where measured), so differences
    of e within noise show as near-equal colours.

    Returns
    -------
    list of int
        Indices into ``ranked`` of the non-dominated candidates.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    from matplotlib.colors import Normalize  # pylint: disable=import-outside-toplevel

    ok = [r for r in ranked if math.isfinite(r['error'])]
    front = non_dominated([(r['params'], r['inference_cost'], r['error']) for r in ok])
    fig, (ax, ax_e) = plt.subplots(1, 2, figsize=(12, 5))
    if ok:
        xs = [r['params'] / 1e6 for r in ok]
        ys = [r['inference_cost'] for r in ok]
        errors = [r['error'] for r in ok]
        sigma = ok[0].get('error_sd') or 0.0
        low, high = min(errors), max(errors)
        if high - low < 6 * sigma:  # noise-sized differences get noise-sized colour changes
            middle = (low + high) / 2
            low, high = middle - 3 * sigma, middle + 3 * sigma
        if 'inference_low' in ok[0]:
            ax.errorbar(xs, ys, yerr=[[y - r['inference_low'] for y, r in zip(ys, ok)],
                                      [r['inference_high'] - y for y, r in zip(ys, ok)]],
                        fmt='none', ecolor='grey', elinewidth=1, zorder=1)
        points = ax.scatter(xs, ys, c=errors, cmap='viridis', s=40, zorder=2,
                            norm=Normalize(vmin=low, vmax=high if high > low else low + 1e-9))
        label = 'surrogate error e (nats)' + (f'; σ = {sigma:.3f}' if sigma else '')
        fig.colorbar(points, ax=ax, label=label)
        ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=140, facecolors='none',
                   edgecolors='black', linewidths=1.2, zorder=3, label='non-dominated (p, i, e)')
        best = ok[0]
        ax.scatter([best['params'] / 1e6], [best['inference_cost']], marker='*', s=320,
                   c='red', edgecolors='black', zorder=4,
                   label=f"best W: {_tuple(best)}")
        ax_e.errorbar(xs, errors, yerr=[2 * sigma] * len(xs) if sigma else None, fmt='o',
                      capsize=3, label='e ± 2σ' if sigma else 'e (noise not measured)')
        ax_e.scatter([best['params'] / 1e6], [best['error']], marker='*', s=220, c='red',
                     edgecolors='black', zorder=4)
    if baseline:
        ax_e.axhline(baseline['context_free'], color='orange', linestyle='--',
                     label=f"context-free floor {baseline['context_free']:.3f}")
    if teacher.get('heldout_entropy'):
        ax_e.axhline(teacher['heldout_entropy'], color='grey', linestyle=':',
                     label=f"teacher's entropy {teacher['heldout_entropy']:.3f}")
    ax_e.set_xlabel('parameters (M)')
    ax_e.set_ylabel('surrogate error e (nats)')
    ax_e.set_title('e with its seed noise')
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=8)
    ax.scatter([teacher['params'] / 1e6], [teacher['inference_cost']], marker='X', s=120,
               c='grey', zorder=2, label=f"teacher {teacher['label']}")
    ax.set_xlabel('parameters (M)')
    ax.set_ylabel(f"inference cost ({cost['unit']})")
    ax.set_title('Candidates of the search')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper left')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    by_id = {id(r): n for n, r in enumerate(ranked)}
    return [by_id[id(ok[i])] for i in front]


def write_outputs(out: str, ranked: List[Dict], teacher: Dict, references: List[Dict],
                  cost: Dict, extra: Dict, best_arch: Optional[Architecture],
                  notes: Sequence[str] = (), error: str = 'cross_entropy') -> str:
    """Write results.json, table.md, pareto.png and best_arch.json; return the table.

    ``extra`` goes into results.json as is; its ``trust`` and ``baseline`` entries are also
    shown in the table and the plot.
    """
    table = format_table(ranked, teacher, references, cost, notes, error, extra.get('trust'),
                         extra.get('baseline'))
    with open(os.path.join(out, TABLE_FILE), 'w') as f:
        f.write(table)
    front = plot_pareto(ranked, teacher, cost, os.path.join(out, PLOT_FILE),
                        extra.get('baseline')) if ranked else []
    if best_arch is not None:
        save_arch(best_arch, os.path.join(out, BEST_ARCH_FILE))
    results = dict(extra, teacher=teacher, references=references, cost=cost,
                   candidates=ranked, non_dominated=[ranked[i]['rank'] for i in front],
                   best=ranked[0] if ranked else None)
    write_json_atomic(os.path.join(out, RESULTS_FILE), results)
    return table


class SearchCurves:
    """The search's live curves: one record per evaluated candidate in ``metrics.jsonl`` and
    TensorBoard events beside it (:class:`bort.log.MetricsLog`, rank 0 only).

    Step n is the n-th candidate in the order the strategy evaluated them; each record holds
    :data:`CURVE_KEYS`, ``best_error`` (the smallest finite e so far), the tuple and whether
    training diverged. A resumed search replays its stored candidates in the same order and
    does not log again the steps its folder already has. :meth:`finish` adds the run's summary.
    """

    def __init__(self, out: str, comm: Comm):
        self.metrics = MetricsLog(os.path.join(out, METRICS_FILE), comm)
        self.logged = {r['step'] for r in self.metrics.read()
                       if not r.get('final') and 'step' in r} if comm.is_root else set()
        self.count = 0
        self.best = math.inf

    def candidates(self, records: Sequence[Dict]) -> None:
        """Log the next evaluated ``records`` (as :meth:`CandidateEvaluator.evaluate` gives)."""
        for record in records:
            self.count += 1
            if math.isfinite(record['error']):
                self.best = min(self.best, record['error'])
            if self.count in self.logged:
                continue
            self.metrics.write(dict({k: record[k] for k in CURVE_KEYS if k in record},
                                    step=self.count, best_error=self.best, arch=_tuple(record),
                                    diverged=bool(record.get('diverged'))))

    def finish(self, ranked: Sequence[Dict], wall_seconds: float) -> None:
        """The run's summary record (candidates, best W and e, wall time); closes the events."""
        best = ranked[0] if ranked else {}
        self.metrics.write({'step': self.count, 'final': True, 'candidates': len(ranked),
                            'best_w': best.get('w'), 'best_error': best.get('error'),
                            'wall_seconds': wall_seconds})
        self.metrics.close()
