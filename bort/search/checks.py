"""The trust measurements of a search, run after its candidates: retraining and scoring.

:func:`measure_trust` retrains, across the workers, the top ``--noise_candidates`` candidates
with ``--noise_seeds`` more seeds and ``--fidelity_candidates`` candidates for
``--fidelity_factor`` times the steps (each a :class:`~bort.search.evaluate.Variant`, stored in
its own sub-folder of ``--out/candidates/`` so a killed search resumes them too);
:func:`score_with_trust` turns those records into the noise σ beside every e, W's interval,
the proxy's Kendall τ and the verdict (arithmetic in :mod:`bort.search.trust`);
:func:`unigram_baseline` gives the "learned nothing but frequencies" e.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..distributed import Comm
from .config import SearchConfig
from .data import original_tokens
from .evaluate import CandidateEvaluator, Variant
from .report import score_records
from .space import arch_key
from .targets import TeacherTargets
from .trust import (SEPARATION, fidelity_choice, fidelity_summary, noise_choice, pooled_noise,
                    verdict, w_interval)

__all__ = ['train_batches', 'measure_trust', 'score_with_trust', 'unigram_baseline']

log = logging.getLogger(__name__)


def train_batches(config: SearchConfig) -> int:
    """Distinct training batches: ``--train_batches``, else one per step of the longest run
    (with the fidelity check, the k× longer one: it sees fresh batches, not the s-step run's
    batches k times; the s-step runs use the first s, exactly as without the check)."""
    if config.train_batches:
        return config.train_batches
    return config.steps * max(1, config.fidelity_factor)


def measure_trust(config: SearchConfig, comm: Comm, evaluator: CandidateEvaluator,
                  records: Sequence[Dict], teacher: Dict, archs: Dict,
                  complete: bool) -> Dict:
    """Retrain for the noise and fidelity checks (collective: every worker calls it).

    Parameters
    ----------
    records : sequence of dict
        The search's records (rank 0's are used to choose).
    teacher : dict
        ``params`` and ``inference_cost`` of T.
    archs : dict
        Tuple -> Architecture for every evaluated tuple.
    complete : bool
        Checks run only after a complete search (an interrupted one continues first).

    Returns
    -------
    dict
        ``noise``: {seed offset: records}, ``fidelity``: records (empty when off).
    """
    plan = None
    if comm.is_root and complete and records:
        ranked = score_records(records, teacher)
        plan = {'noise': noise_choice(ranked, config.noise_candidates)
                if config.noise_seeds else [],
                'fidelity': fidelity_choice(ranked, config.fidelity_candidates)
                if config.fidelity_factor else []}
    plan = comm.broadcast_object(plan)
    out: Dict = {'noise': {}, 'fidelity': []}
    if not plan:
        return out
    noise = [archs[tuple(t)] for t in plan['noise']]
    for offset in range(1, config.noise_seeds + 1 if noise else 1):
        log.info('seed noise: %d candidates with seed +%d', len(noise), offset)
        out['noise'][offset] = evaluator.evaluate(noise, Variant.seed(offset))
    if plan['fidelity']:
        log.info('proxy fidelity: %d candidates for %d × %d steps', len(plan['fidelity']),
                 config.fidelity_factor, config.steps)
        out['fidelity'] = evaluator.evaluate([archs[tuple(t)] for t in plan['fidelity']],
                                             Variant.longer(config.fidelity_factor))
    return out


def score_with_trust(records: Sequence[Dict], teacher: Dict, repeats: Dict,
                     config: SearchConfig, baseline: Optional[Dict] = None
                     ) -> Tuple[List[Dict], Dict]:
    """Ranked records with σ and W's interval, and the trust summary for results.json.

    Each ranked record gains ``error_sd`` (the pooled seed noise σ), ``w_low``/``w_high``
    (:func:`~bort.search.trust.w_interval`) and, where retrained, ``error_seeds`` (e under
    every seed, the search's first) and ``error_long`` (e after k·s steps).
    """
    ranked = score_records(records, teacher)
    by_key = {arch_key(r): r for r in ranked}
    groups: Dict[tuple, List[float]] = {}
    for offset in sorted(repeats.get('noise', {})):
        for r in repeats['noise'][offset]:
            key = arch_key(r)
            if key in by_key:
                groups.setdefault(key, [by_key[key]['error']]).append(r['error'])
    noise = pooled_noise(list(groups.values()))
    sigma = noise['sigma']
    noise['candidates'] = [{'tuple': list(k), 'errors': v,
                            'sd': float(np.std(v, ddof=1)) if len(v) > 1 else None}
                           for k, v in groups.items()]
    noise['seeds'] = config.noise_seeds + 1
    for r in ranked:
        r['error_sd'] = sigma if math.isfinite(sigma) else None
        r['w_low'], r['w_high'] = w_interval(r, sigma, teacher)
        if arch_key(r) in groups:
            r['error_seeds'] = groups[arch_key(r)]
    fidelity: Dict = {}
    if repeats.get('fidelity'):
        fidelity = fidelity_summary([by_key[arch_key(r)] for r in repeats['fidelity']
                                     if arch_key(r) in by_key], repeats['fidelity'], teacher,
                                    config.fidelity_factor)
        for row in repeats['fidelity']:
            if arch_key(row) in by_key:
                by_key[arch_key(row)]['error_long'] = row['error']
    judged = verdict(ranked, sigma, teacher, fidelity or None,
                     (baseline or {}).get('context_free'))
    acceptance = {
        'spread_over_noise': judged['spread_over_noise'], 'spread_over_noise_target': SEPARATION,
        'tau_error': fidelity.get('tau_error'), 'tau_target': 0.6,
        'fidelity_candidates': fidelity.get('candidates', 0)}
    log.info('trust: σ(e) = %.4f over %d seeds of %d candidates; e spread %.4f (%.1f σ); %s',
             sigma, noise['seeds'], len(groups), judged['error_spread'],
             judged['spread_over_noise'], judged.get('decided_by'))
    return ranked, {'noise': noise, 'fidelity': fidelity, 'verdict': judged,
                    'acceptance': acceptance}


def unigram_baseline(targets: TeacherTargets, steps: int, offset: float = 0.0) -> Dict:
    """e of models that learned nothing from context, on the same held-out positions:
    ``context_free``, the teacher's own distribution averaged over those positions (the lowest
    e any model ignoring the context can reach: a candidate above it has learned nothing from
    the context); ``unigram``, the training tokens' frequencies; ``uniform``, log V.

    Parameters
    ----------
    targets : TeacherTargets
    steps : int
        s: the unigram is that of the batches an s-step candidate trains on.
    offset : float
        Subtracted as from every e (the teacher's entropy with ``--error kl``).
    """
    data = targets.data
    log_q = data.unigram_log_probs(steps)
    return {'context_free': targets.heldout_cross_entropy_of(targets.heldout_mean_log_probs())
            - offset,
            'unigram': targets.heldout_cross_entropy_of(log_q) - offset,
            'uniform': math.log(data.vocab_size) - offset, 'smoothing': 0.5,
            'tokens': int(sum(len(original_tokens(b)) for b in data.trained_on(steps)))}
