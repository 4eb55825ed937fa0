"""The cost surrogates of a candidate: parameter size p(ξ) and inference cost i(ξ).

p is exact (:func:`bort.costs.num_parameters`). i is either

- ``measured``: CPU seconds per sample of the hybridized encoder (random weights: the values do
  not change the time), at a stated batch size and sequence length, after warm-up, as the
  paper's Table 1 reports. Architectures are timed in groups with their runs interleaved
  (:func:`bort.inference.latency.compare_latency`) and **the teacher timed in every group**: a
  candidate's i is the median over rounds of its time divided by the teacher's time in the same
  round, times i(T) as first measured. Load from elsewhere slows both calls of a round alike,
  so the ratio, and with it savings(i) = 1 − i/i(T) and the ranking, survives it (absolute
  times do not); the p10–p90 of the ratio is kept as the spread; or
- ``flops``: the operation count of :func:`bort.costs.flops` per sample, deterministic.

Measured figures are kept in ``costs.json`` in the output folder (with their spread, threads and
device), so a resumed search and the final table use the same numbers. Measuring is done by one
process while the others wait (see :class:`~bort.search.evaluate.CandidateEvaluator`): two
workers timing at once on shared cores would measure each other.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np

from ..arch import Architecture
from ..checkpoint import write_json_atomic
from ..costs import flops, num_parameters
from ..errors import read_json
from .config import SearchConfig

__all__ = ['CostModel', 'COSTS_FILE']

log = logging.getLogger(__name__)

COSTS_FILE = 'costs.json'


def _shape_key(arch: Architecture) -> str:
    """Everything about an architecture that changes its cost (the name and where the
    training-only embedding dropout sits do not)."""
    values = arch.to_dict()
    values.pop('name')
    values.pop('embedding_dropout')
    return json.dumps(values, sort_keys=True)


class CostModel:
    """p(ξ) and i(ξ) of architectures, with measured inference costs cached on disk.

    Parameters
    ----------
    config : SearchConfig
        ``cost``, ``latency_batch_size``, ``latency_seq_len``, ``latency_warmup``,
        ``latency_repeats``, ``latency_group``, ``params_with_decoder``.
    folder : str, optional
        Where ``costs.json`` lives; None keeps measurements in memory only.
    ctx : mx.Context, optional
    """

    def __init__(self, config: SearchConfig, folder: Optional[str] = None,
                 ctx: Optional[mx.Context] = None):
        self.kind = config.cost
        self.batch_size = config.latency_batch_size
        self.seq_len = config.latency_seq_len
        self.warmup = config.latency_warmup
        self.repeats = config.latency_repeats
        self.threads = config.latency_threads
        self.clock = config.latency_clock if config.latency_threads else 'wall'
        self.with_decoder = config.params_with_decoder
        self.group = max(1, config.latency_group)
        self.ctx = ctx or mx.cpu()
        self.path = os.path.join(folder, COSTS_FILE) if folder else None
        self.measured: Dict[str, Dict] = {}
        self.environment: Dict = {}
        self.reference: Optional[Architecture] = None
        if self.path and os.path.exists(self.path):
            saved = read_json(self.path, what='cost cache')
            if saved.get('settings') == self.settings:
                self.measured = saved.get('measured', {})
                self.environment = saved.get('environment', {})
        self._dirty = False

    @property
    def settings(self) -> Dict:
        return {'kind': self.kind, 'batch_size': self.batch_size, 'seq_len': self.seq_len,
                'warmup': self.warmup, 'repeats': self.repeats, 'timing': 'ratio-to-teacher',
                'child_threads': self.threads, 'clock': self.clock}

    def set_reference(self, arch: Architecture) -> None:
        """Time ``arch`` (the teacher) in every group; candidates' i become ratios to it."""
        self.reference = arch.replace(use_pooler=False)

    @property
    def unit(self) -> str:
        return 's/sample' if self.kind == 'measured' else 'GFLOP/sample'

    def describe(self) -> Dict:
        """The cost's definition, for results.json and the table's caption."""
        return dict(self.settings, unit=self.unit, **self.environment)

    def params(self, arch: Architecture) -> int:
        """p(ξ): trainable parameters (embeddings and encoder; the MLM head if configured)."""
        return num_parameters(arch, with_decoder=self.with_decoder)

    def cost(self, arch: Architecture) -> float:
        """i(ξ) per sample, in :attr:`unit`."""
        return self.costs([arch])[0]

    def costs(self, archs: Sequence[Architecture]) -> List[float]:
        """i(ξ) of several architectures; the unmeasured ones are timed side by side."""
        if self.kind == 'flops':
            return [flops(a.replace(use_pooler=False), seq_len=self.seq_len) / 1e9 for a in archs]
        missing = list({_shape_key(a): a for a in archs if _shape_key(a) not in self.measured}
                       .values())
        for start in range(0, len(missing), self.group):
            self._measure(missing[start:start + self.group])
        return [self.measured[_shape_key(a)]['seconds_per_sample'] for a in archs]

    def spread(self, arch: Architecture) -> Optional[tuple]:
        """(low, high) of i: p10 and p90 of the per-round ratio to the teacher times i(T);
        None for operation counts."""
        record = self.record(arch) if self.kind == 'measured' else None
        if not record:
            return None
        return record.get('low_s', record['seconds_per_sample']), \
            record.get('high_s', record['seconds_per_sample'])

    def record(self, arch: Architecture) -> Optional[Dict]:
        """The full measurement behind ``cost(arch)`` (median, spread, ...), if measured."""
        return self.measured.get(_shape_key(arch))

    def _measure(self, archs: Sequence[Architecture]) -> None:
        """Time a group of encoders with interleaved repeats (A, B, C, A, B, C, ...), so that
        load from elsewhere on the machine hits them alike."""
        from ..inference.isolated import time_encoders  # pylint: disable=import-outside-toplevel
        ref_key = _shape_key(self.reference) if self.reference is not None else None
        timed = list(archs)
        if ref_key is not None and all(_shape_key(a) != ref_key for a in timed):
            timed.insert(0, self.reference)  # the teacher beside every group
        results = time_encoders({_shape_key(a): a for a in timed}, self.batch_size,
                                self.seq_len, self.warmup, self.repeats, threads=self.threads,
                                clock=self.clock, ctx=self.ctx)
        ref = results.get(ref_key) if ref_key is not None else None
        if ref is not None and ref_key not in self.measured:
            # i(T) is fixed at its first measurement: later groups (a resumed search, BO's
            # rounds) scale their ratios by the same number, so the table stays the same.
            self.measured[ref_key] = {
                'seconds_per_sample': ref.per_sample, 'median_s': ref.median,
                'p10_s': ref.p10, 'p90_s': ref.p90, 'ratio': 1.0, 'ratio_p10': 1.0,
                'ratio_p90': 1.0, 'low_s': ref.per_sample, 'high_s': ref.per_sample,
                'tuple': list(self.reference.tuple), 'reference': True}
        for arch in archs:
            key = _shape_key(arch)
            result = results[key]
            self.environment = {'threads': result.threads, 'device': result.device}
            entry = {'seconds_per_sample': result.per_sample, 'median_s': result.median,
                     'p10_s': result.p10, 'p90_s': result.p90, 'tuple': list(arch.tuple)}
            if ref is not None and key != ref_key:
                ratios = np.asarray(result.samples) / np.asarray(ref.samples)
                base = self.measured[ref_key]['seconds_per_sample']
                entry.update(ratio=float(np.median(ratios)),
                             ratio_p10=float(np.percentile(ratios, 10)),
                             ratio_p90=float(np.percentile(ratios, 90)))
                entry.update(seconds_per_sample=entry['ratio'] * base,
                             low_s=entry['ratio_p10'] * base, high_s=entry['ratio_p90'] * base)
            if key != ref_key:
                self.measured[key] = entry
        del results
        self._dirty = True
        log.info('inference cost: %d encoders timed (batch %d, sequence %d, %d runs each)',
                 len(archs), self.batch_size, self.seq_len, self.repeats)

    def save(self) -> None:
        """Write ``costs.json`` if new measurements were made."""
        if self.path and self._dirty:
            write_json_atomic(self.path, {'settings': self.settings,
                                          'environment': self.environment,
                                          'measured': self.measured})
            self._dirty = False
