"""How far a search's ranking can be trusted: the seed noise of e, the proxy's fidelity, a verdict.

e(ξ) is a measurement: the same candidate trained with another seed (initialisation, dropout)
gives another e. The search therefore measures (SPEC.md section 3, "the project's reading on
trust"):

- **noise**: the top candidates retrained with ``--noise_seeds`` more seeds; the pooled
  standard deviation σ of e over those repeats (:func:`pooled_noise`) is the yardstick for every
  difference of e in the table, and gives each W an interval (:func:`w_interval`);
- **fidelity**: a subset of candidates trained ``--fidelity_factor`` times longer; Kendall's τ
  between the short-run and the long-run e (and W) says whether the s-step proxy ranks
  candidates as longer training would (:func:`fidelity_summary`);
- **sources of the ranking**: Kendall's τ of W with 1/e and with the cost product
  savings(p)·savings(i) (:func:`ranking_sources`), and a plain verdict (:func:`verdict`) on
  whether the top of the ranking is separated beyond noise and whether e or the costs decide it.

Everything here is arithmetic on result records (``error``, ``params``, ``inference_cost``,
``w``, the four knobs); the retraining itself is :class:`~bort.search.evaluate.CandidateEvaluator`
with a :class:`~bort.search.evaluate.Variant`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..pretrain.shards import unigram_log_probs
from .space import arch_key

__all__ = ['kendall_tau', 'pooled_noise', 'w_interval', 'ranking_sources', 'fidelity_summary',
           'verdict', 'noise_choice', 'fidelity_choice', 'unigram_log_probs', 'SEPARATION',
           'Z']

#: e differences below SEPARATION·σ are read as noise (the issue's acceptance asks for a spread
#: of e across candidates of at least 3 σ).
SEPARATION = 3.0
#: Half-width of the intervals in σ: ±2σ covers about 95 % of a normal spread.
Z = 2.0


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
    """Kendall's τ-b between two paired samples and its two-sided p-value (scipy's).

    Returns ``(nan, nan)`` with fewer than two finite pairs or a constant sample.
    """
    from scipy.stats import kendalltau  # pylint: disable=import-outside-toplevel
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float('nan'), float('nan')
    result = kendalltau(a, b)
    return float(result.statistic if hasattr(result, 'statistic') else result[0]), \
        float(result.pvalue if hasattr(result, 'pvalue') else result[1])


def pooled_noise(groups: Sequence[Sequence[float]]) -> Dict:
    """The seed noise of e: the pooled standard deviation over groups of repeats.

    Parameters
    ----------
    groups : sequence of sequence of float
        For each candidate retrained, its e under every seed (the original one included).
        Groups of fewer than two finite values are ignored.

    Returns
    -------
    dict
        ``sigma`` (pooled: sqrt(Σ (n_g − 1) s_g² / Σ (n_g − 1)), s_g the sample standard
        deviation of group g, ddof 1), ``df`` (Σ (n_g − 1)), ``per_group`` (s_g of each group,
        None where undefined), ``max_range`` (the largest max − min within a group).
        ``sigma`` is NaN when no group has two values.
    """
    per_group: List[Optional[float]] = []
    num, df, ranges = 0.0, 0, []
    for group in groups:
        values = np.asarray([v for v in group if v is not None and math.isfinite(v)],
                            dtype=np.float64)
        if len(values) < 2:
            per_group.append(None)
            continue
        s = float(np.std(values, ddof=1))
        per_group.append(s)
        num += (len(values) - 1) * s * s
        df += len(values) - 1
        ranges.append(float(np.ptp(values)))
    return {'sigma': math.sqrt(num / df) if df else float('nan'), 'df': df,
            'per_group': per_group, 'max_range': max(ranges) if ranges else float('nan')}


def w_interval(record: Dict, sigma: float, teacher: Dict) -> Tuple[float, float]:
    """W's interval from e ± Z·σ and, where measured, i's spread (the p10–p90 of the ratio to
    the teacher timed in the same rounds).

    A lower e and a lower i both raise W: the upper end takes e − Zσ (kept positive) and the
    low end of i, the lower end e + Zσ and the high end of i.
    """
    e, p = record['error'], record['params']
    if not (math.isfinite(e) and e > 0):
        return float('nan'), float('nan')
    sigma = sigma if math.isfinite(sigma) else 0.0
    p_t, i_t = teacher['params'], teacher['inference_cost']
    i_lo = record.get('inference_low', record['inference_cost'])
    i_hi = record.get('inference_high', record['inference_cost'])
    save_p = (p_t - p) / p_t
    best = save_p * (i_t - i_lo) / i_t / max(e - Z * sigma, 1e-9)
    worst = save_p * (i_t - i_hi) / i_t / (e + Z * sigma)
    return min(best, worst), max(best, worst)


def _cost_product(record: Dict, teacher: Dict) -> float:
    p_t, i_t = teacher['params'], teacher['inference_cost']
    return (p_t - record['params']) / p_t * (i_t - record['inference_cost']) / i_t


def ranking_sources(ranked: Sequence[Dict], teacher: Dict) -> Dict:
    """How much of the W ranking comes from e and how much from the costs.

    Returns
    -------
    dict
        ``tau_w_inverse_error`` and ``tau_w_costs`` (Kendall τ of W with 1/e and with the cost
        product savings(p)·savings(i), each with its p-value), ``cost_best`` (the tuple the
        cost product alone would rank first) and ``error_best`` (the lowest e).
    """
    ok = [r for r in ranked if math.isfinite(r['w'])]
    if not ok:
        return {}
    w = [r['w'] for r in ok]
    inverse = [1.0 / r['error'] for r in ok]
    costs = [_cost_product(r, teacher) for r in ok]
    tau_e, p_e = kendall_tau(w, inverse)
    tau_c, p_c = kendall_tau(w, costs)
    return {'tau_w_inverse_error': tau_e, 'p_w_inverse_error': p_e,
            'tau_w_costs': tau_c, 'p_w_costs': p_c,
            'cost_best': list(arch_key(ok[int(np.argmax(costs))])),
            'error_best': list(arch_key(ok[int(np.argmin([r['error'] for r in ok]))]))}


def fidelity_summary(short: Sequence[Dict], long: Sequence[Dict], teacher: Dict,
                     factor: int) -> Dict:
    """Kendall τ between short-run and k× longer e (and W) over the same candidates.

    Parameters
    ----------
    short, long : sequence of dict
        Records of the same candidates (matched by tuple) after s and after k·s steps;
        ``error``, ``params``, ``inference_cost``.
    teacher : dict
        ``params``, ``inference_cost`` of T (W of the long run uses the same costs).
    factor : int
        k.
    """
    from .scoring import w_coefficient  # pylint: disable=import-outside-toplevel
    by_key = {arch_key(r): r for r in long}
    pairs = [(r, by_key[arch_key(r)]) for r in short if arch_key(r) in by_key]
    e_short = [a['error'] for a, _ in pairs]
    e_long = [b['error'] for _, b in pairs]

    def w(record):
        return w_coefficient(record['params'], record['inference_cost'], record['error'],
                             teacher['params'], teacher['inference_cost'])
    w_short, w_long = [w(a) for a, _ in pairs], [w(b) for _, b in pairs]
    tau_e, p_e = kendall_tau(e_short, e_long)
    tau_w, p_w = kendall_tau(w_short, w_long)
    return {'factor': factor, 'candidates': len(pairs), 'tau_error': tau_e, 'p_error': p_e,
            'tau_w': tau_w, 'p_w': p_w,
            'best_short': list(arch_key(pairs[int(np.nanargmax(w_short))][0])) if pairs else None,
            'best_long': list(arch_key(pairs[int(np.nanargmax(w_long))][1])) if pairs else None,
            'rows': [{'tuple': list(arch_key(a)), 'error_short': a['error'],
                      'error_long': b['error'], 'w_short': ws, 'w_long': wl}
                     for (a, b), ws, wl in zip(pairs, w_short, w_long)]}


def verdict(ranked: Sequence[Dict], sigma: float, teacher: Dict,
            fidelity: Optional[Dict] = None, context_free: Optional[float] = None) -> Dict:
    """A plain statement of what decides the top of the ranking, in numbers and words.

    Parameters
    ----------
    ranked : sequence of dict
        Scored records in rank order; ``w_low``/``w_high`` used where present (else computed).
    sigma : float
        The seed noise of e (NaN: not measured).
    teacher : dict
    fidelity : dict, optional
        :func:`fidelity_summary`.
    context_free : float, optional
        e of the best model that ignores the context; candidates not below it by SEPARATION·σ
        have learned nothing from the context, and the text says how many.

    Returns
    -------
    dict
        ``error_spread`` (max − min e), ``spread_over_noise``, ``error_is_signal`` (spread of
        at least SEPARATION·σ), ``top_separated`` (rank 1's W interval above rank 2's),
        ``top_error_separated`` (rank 1's e differs from rank 2's by more than SEPARATION·σ),
        ``decided_by`` (``'noise'``: e within noise, costs decide; ``'costs'``: the cost
        product alone picks the same rank 1; ``'error'``: e changes rank 1; ``'unmeasured'``),
        ``sources`` (:func:`ranking_sources`) and ``text`` (one paragraph for table.md).
    """
    ok = [r for r in ranked if math.isfinite(r.get('w', float('nan')))]
    errors = [r['error'] for r in ok]
    spread = float(max(errors) - min(errors)) if len(errors) > 1 else float('nan')
    measured = math.isfinite(sigma) and sigma > 0
    ratio = spread / sigma if measured and math.isfinite(spread) else float('nan')
    sources = ranking_sources(ok, teacher)
    out = {'sigma': sigma, 'error_spread': spread, 'spread_over_noise': ratio,
           'error_is_signal': bool(measured and ratio >= SEPARATION), 'sources': sources,
           'top_separated': None, 'top_error_separated': None}
    if len(ok) >= 2:
        first, second = ok[0], ok[1]
        lo1 = first.get('w_low', w_interval(first, sigma, teacher)[0])
        hi2 = second.get('w_high', w_interval(second, sigma, teacher)[1])
        out['top_separated'] = bool(lo1 > hi2)
        if measured:
            out['top_error_separated'] = bool(abs(first['error'] - second['error'])
                                              >= SEPARATION * sigma)
    if not ok:
        out.update(decided_by='unmeasured', text='No candidate with a finite e: no verdict.')
        return out
    best = list(arch_key(ok[0]))
    name = '<' + ', '.join(map(str, best)) + '>'
    taus = (f"Kendall τ of W with 1/e {sources.get('tau_w_inverse_error', float('nan')):.2f}, "
            f"with the cost product {sources.get('tau_w_costs', float('nan')):.2f}")
    if not measured:
        out['decided_by'] = 'unmeasured'
        text = (f'The seed noise of e was not measured (--noise_seeds 0): whether e separates '
                f'the candidates is unknown. {taus}.')
    elif not out['error_is_signal']:
        out['decided_by'] = 'noise'
        text = (f'**Not separated by e**: e spans {spread:.3f} nats across candidates, '
                f'{ratio:.1f}× its seed noise σ = {sigma:.3f} (below {SEPARATION:g}×); the '
                f'differences of e are noise, so W ranks by size and latency alone and '
                f'{name} is first by its costs. {taus}.')
    elif sources.get('cost_best') == best:
        out['decided_by'] = 'costs'
        text = (f'e is a signal (its spread is {ratio:.1f}× the seed noise σ = {sigma:.3f}), '
                f'but rank 1, {name}, is also first by the cost product alone: the costs '
                f'decide the top, e reorders below it. {taus}.')
    else:
        out['decided_by'] = 'error'
        cost_best = '<' + ', '.join(map(str, sources['cost_best'])) + '>'
        text = (f'**e decides the top**: its spread is {ratio:.1f}× the seed noise '
                f'σ = {sigma:.3f}, and rank 1, {name}, is not the cheapest by the cost product '
                f'({cost_best} is). {taus}.')
    if out['top_separated'] is not None:
        text += (' Rank 1 is separated from rank 2 beyond noise (W intervals disjoint).'
                 if out['top_separated'] else
                 ' Ranks 1 and 2 overlap within noise (W intervals intersect): treat them as '
                 'tied.')
    if fidelity and fidelity.get('candidates', 0) >= 2:
        text += (f" Proxy fidelity: τ(e after s, e after {fidelity['factor']}·s) = "
                 f"{fidelity['tau_error']:.2f} (p = {fidelity['p_error']:.3g}), τ of W "
                 f"{fidelity['tau_w']:.2f} (p = {fidelity['p_w']:.3g}) over "
                 f"{fidelity['candidates']} candidates"
                 + (' — the short run does not rank e as longer training does.'
                    if not fidelity['tau_error'] >= 0.6 else '.'))
    if context_free is not None and math.isfinite(context_free):
        margin = SEPARATION * sigma if measured else 0.0
        learned = sum(1 for e in errors if e < context_free - margin)
        out['below_context_free'] = learned
        rows = (fidelity or {}).get('rows') or []
        long_learned = sum(1 for r in rows if r['error_long'] < context_free - margin)
        out['below_context_free_long'] = long_learned if rows else None
        if learned < len(errors):
            text += (f' **{len(errors) - learned} of {len(errors)} candidates are not below the '
                     f'context-free floor ({context_free:.3f}) by {SEPARATION:g}σ**')
            if long_learned and fidelity.get('tau_error', float('nan')) >= 0.6:
                text += (f" after s steps, but {long_learned} of {len(rows)} are after "
                         f"{fidelity['factor']}·s, in an order that agrees with the s-step one "
                         f"(τ above): e ranks early learning, and that order predicts what "
                         f"longer training learns from the context.")
            else:
                text += (': for them e measures how fast token frequencies are learned, not '
                         'what the architecture learns from context.')
    out['text'] = text
    return out


def noise_choice(ranked: Sequence[Dict], count: int) -> List[tuple]:
    """The candidates retrained for the noise estimate: the top ``count`` by W."""
    return [arch_key(r) for r in ranked if math.isfinite(r.get('w', float('nan')))][:count]


def fidelity_choice(ranked: Sequence[Dict], count: int) -> List[tuple]:
    """The candidates trained k× longer: ``count`` spread evenly over the candidates sorted by
    parameters (smallest and largest included), so τ is taken over the whole range of sizes
    rather than over near-twins."""
    ordered = sorted(ranked, key=lambda r: (r['params'], arch_key(r)))
    if len(ordered) <= count:
        return [arch_key(r) for r in ordered]
    picks = sorted({int(round(x)) for x in np.linspace(0, len(ordered) - 1, count)})
    return [arch_key(ordered[i]) for i in picks]
