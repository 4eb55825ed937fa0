"""Plain-words verdicts on measured numbers, always with their noise.

A claim such as "distillation beats MLM-only" is judged from two samples (one score per seed,
or one accuracy measured on N held-out items) by the difference of their means and its
standard error; the answer is one of three words, never more than the numbers allow:

- ``yes``: the difference favours the claim by more than :data:`Z` standard errors;
- ``no``: it goes the other way by more than :data:`Z` standard errors;
- ``within noise``: anything in between (the claim is neither shown nor refuted).

The standard error of a difference is ``sqrt(sd_a²/n_a + sd_b²/n_b)`` over seeds, but never
below a stated floor: the sampling error of one accuracy on the evaluation set
(:func:`binomial_se`), so that two seeds that happen to agree cannot make a 0.3-point gap on 277
RTE dev examples look real.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

__all__ = ['Spread', 'spread', 'binomial_se', 'compare', 'mean_or_nan', 'left_rate',
           'levels_off', 'Z', 'YES', 'NO', 'WITHIN_NOISE', 'UNKNOWN_NOISE']

#: Differences within Z standard errors are called noise (about 95 % two-sided).
Z = 2.0
YES, NO, WITHIN_NOISE, UNKNOWN_NOISE = 'yes', 'no', 'within noise', 'noise not measured'


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of repeated measurements (seeds).

    ``sd`` is NaN with one value (a spread needs two).
    """

    mean: float
    sd: float
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``'81.2 ± 0.4 (n=2)'`` (values scaled, e.g. accuracies to points)."""
        if self.n == 0:
            return '—'
        if self.n == 1 or not math.isfinite(self.sd):
            return f'{self.mean * scale:.{digits}f} (n=1)'
        return f'{self.mean * scale:.{digits}f} ± {self.sd * scale:.{digits}f} (n={self.n})'

    def to_dict(self) -> Dict[str, float]:
        return {'mean': self.mean, 'sd': self.sd, 'n': self.n}


def spread(values: Sequence[float]) -> Spread:
    """The :class:`Spread` of ``values`` (NaNs dropped)."""
    ok = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not ok:
        return Spread(float('nan'), float('nan'), 0)
    mean = sum(ok) / len(ok)
    if len(ok) < 2:
        return Spread(mean, float('nan'), 1)
    var = sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)
    return Spread(mean, math.sqrt(var), len(ok))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent items."""
    if n <= 0 or not math.isfinite(p):
        return float('nan')
    p = min(max(p, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def compare(a: Sequence[float], b: Sequence[float], claim: str, *, floor: float = 0.0,
            scale: float = 100.0, unit: str = 'points', digits: int = 1,
            higher_is_better: bool = True) -> Dict:
    """Judge the claim "``a`` is better than ``b``" from their measurements.

    Parameters
    ----------
    a, b : sequence of float
        Repeated measurements (e.g. dev accuracy per seed) of the two sides.
    claim : str
        The claim in words, e.g. ``'KD ahead of MLM-only on SST-2 dev'``.
    floor : float
        The smallest standard error of the difference to assume (unscaled), e.g. the sampling
        error of an accuracy on the evaluation set; also used alone when neither side has two
        measurements.
    scale, unit, digits
        How the difference is written (accuracy 0.031 -> ``'3.1 points'``).
    higher_is_better : bool
        False for losses and latencies: then "better" means smaller.

    Returns
    -------
    dict
        ``answer`` (``'yes'``, ``'no'``, ``'within noise'``, ``'noise not measured'`` or
        ``'not measured'``), ``diff``
        (mean of a minus mean of b, unscaled), ``se`` (its standard error), ``a``/``b``
        (:meth:`Spread.to_dict`), ``text`` (one sentence).
    """
    sa, sb = spread(a), spread(b)
    out = {'claim': claim, 'a': sa.to_dict(), 'b': sb.to_dict()}
    if sa.n == 0 or sb.n == 0:
        return dict(out, answer='not measured', diff=float('nan'), se=float('nan'),
                    text=f'{claim}: not measured (a side has no result).')
    diff = sa.mean - sb.mean
    terms = [s.sd ** 2 / s.n for s in (sa, sb) if s.n > 1 and math.isfinite(s.sd)]
    se = math.sqrt(sum(terms)) if terms else 0.0
    floor = floor if math.isfinite(floor) else 0.0
    se = max(se, floor)
    gain = diff if higher_is_better else -diff
    amount = f'{diff * scale:+.{digits}f} ± {se * scale:.{digits}f} {unit}'
    sides = f'{sa.text(scale, digits)} vs {sb.text(scale, digits)}'
    if se == 0 and diff == 0:
        return dict(out, answer=WITHIN_NOISE, diff=diff, se=se,
                    text=f'{claim}: within noise (no difference at all; {sides}).')
    if se == 0:  # one measurement a side and no floor: a difference without a yardstick
        return dict(out, answer=UNKNOWN_NOISE, diff=diff, se=se,
                    text=f'{claim}: noise not measured ({diff * scale:+.{digits}f} {unit}; '
                         f'{sides}).')
    if abs(diff) <= Z * se:
        answer = WITHIN_NOISE
    else:
        answer = YES if gain > 0 else NO
    if answer == WITHIN_NOISE:
        words = f'within noise ({amount}, under {Z:g} standard errors; {sides})'
    elif answer == YES:
        words = f'yes, by {amount} ({sides})'
    else:
        words = f'**no**, the other way by {amount} ({sides})'
    return dict(out, answer=answer, diff=diff, se=se, text=f'{claim}: {words}.')


def mean_or_nan(values: Sequence[Optional[float]]) -> float:
    """The mean of the finite values, NaN when there is none."""
    return spread([v for v in values if v is not None]).mean


def left_rate(acc: float, rate: float, n: int) -> bool:
    """Whether an accuracy ``acc`` measured on ``n`` items is above a fixed ``rate`` (e.g. the
    most-frequent-token rate on the same positions) by more than :data:`Z` standard errors of
    a proportion (taken at the larger of the two, so that 0 still has a yardstick)."""
    if acc is None or not math.isfinite(acc):
        return False
    return acc - rate > Z * binomial_se(max(acc, rate), n)


def levels_off(points: Sequence[Tuple[float, float]], n: int) -> Optional[float]:
    """The smallest budget whose accuracy is within noise of the best one's.

    Parameters
    ----------
    points : sequence of (budget, accuracy)
        E.g. (adaptation steps, held-out top-1), each accuracy measured on the same ``n`` items.
    n : int

    Returns
    -------
    float or None
        The first budget (in increasing order) whose gap to the best accuracy is at most
        :data:`Z` standard errors of the difference of two proportions on ``n`` items
        (``sqrt(2)`` times one's, at the best accuracy); None without points.
    """
    ok = sorted((b, a) for b, a in points if a is not None and math.isfinite(a))
    if not ok:
        return None
    best = max(a for _, a in ok)
    se = math.sqrt(2.0) * binomial_se(best, n)
    return next(b for b, a in ok if best - a <= Z * se)
