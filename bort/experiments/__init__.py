"""Experiments that run the whole journey and report whether the paper's claims hold.

- :mod:`~bort.experiments.miniature`: "Bort in miniature", search -> distillation pretraining ->
  fine-tuning (plain and Agora) -> latency, one command (``run_miniature``);
- :mod:`~bort.experiments.config`: its settings and budget presets (:class:`MiniatureConfig`);
- :mod:`~bort.experiments.stages`: stages cached in their folders (``done.json``);
- :mod:`~bort.experiments.verdicts`: claims judged against their noise, in plain words;
- :mod:`~bort.experiments.report`: ``report.md`` and the PNGs.

``run_miniature`` is imported from :mod:`~bort.experiments.miniature` itself, so that
``python -m bort.experiments.miniature`` does not find its module already imported.
"""
from .config import BUDGETS, MiniatureConfig

__all__ = ['MiniatureConfig', 'BUDGETS']
