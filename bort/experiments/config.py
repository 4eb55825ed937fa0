"""The settings of "Bort in miniature" (:mod:`bort.experiments.miniature`): one flat dataclass.

Every number the experiment uses is a field. Fields left at ``None`` (or an empty list) take
the value of the chosen budget preset (:data:`BUDGETS`: ``small`` for trying it out in under
half an hour, ``full`` for the run the report is about); flags win over the preset. The
resolved values are written to ``config.json`` and printed in ``report.md``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..cli import at_least, check_fields, non_negative, opt, positive, unit_interval
from ..errors import ConfigError

__all__ = ['MiniatureConfig', 'BUDGETS', 'COMPARISON_RULES', 'MODELS', 'STUDENTS',
           'RESULT_FIELDS', 'RESULT_FREE_FIELDS']

#: How the comparison architecture is chosen from the search's candidates (see
#: :func:`bort.experiments.miniature.choose_comparison`).
COMPARISON_RULES = ('similar_params_worst_e', 'runner_up')

#: The pretrained students: (name, architecture role, distilled?).
STUDENTS = (('winner_kd', 'winner', True), ('winner_mlm', 'winner', False),
            ('comparison_kd', 'comparison', True))
#: Every model that is fine-tuned: the three students and the teacher.
MODELS = ('teacher',) + tuple(s[0] for s in STUDENTS)

#: Named budgets: the preset value of every field left unset. ``search`` holds
#: :class:`~bort.search.SearchConfig` settings over its defaults (``full``: the default search).
BUDGETS: Dict[str, Dict[str, Any]] = {
    'small': {
        'search': {'epsilon': 12, 'noise_seeds': 1, 'noise_candidates': 2,
                   'fidelity_factor': 0},
        'corpus_bytes': 2_000_000, 'pretrain_steps': 500, 'pretrain_batch_size': 16,
        'seq_len': 64, 'eval_batches': 20, 'seeds': (0, 1), 'epochs': 2,
        'max_train_examples': 1000, 'agora_models': ('winner_kd',), 'agora_lrs': (1e-4, 5e-5),
        'latency_repeats': 10,
    },
    'full': {
        'search': {},
        'corpus_bytes': 5_000_000, 'pretrain_steps': 3000, 'pretrain_batch_size': 32,
        'seq_len': 64, 'eval_batches': 60, 'seeds': (0, 1, 2), 'epochs': 3,
        'max_train_examples': 4000,
        'agora_models': ('winner_kd', 'winner_mlm', 'comparison_kd'),
        'agora_lrs': (1e-4, 5e-5, 2e-4), 'latency_repeats': 20,
    },
}

#: Fields that do not change any result: a rerun on the same --out may change them.
RESULT_FREE_FIELDS = ('out', 'progress', 'report_only')


@dataclass
class MiniatureConfig:
    """Settings of one miniature run (the flags of ``python -m bort.experiments.miniature``)."""

    # -- inputs and outputs --------------------------------------------------------------------
    glue_dir: str = opt('', 'folder holding the official GLUE task folders (SST-2/, RTE/ with '
                        'train.tsv and dev.tsv)', required=True)
    out: str = opt('runs/miniature', 'output folder: every stage is cached in it (a rerun '
                   'continues), report.md and the PNGs at its top')
    budget: str = opt('small', "preset of every setting left unset: 'small' (under 30 minutes "
                      "on 2 cores) or 'full' (the report's run, about 3 hours)",
                      choices=tuple(BUDGETS))
    teacher: str = opt('minilm', "the teacher: 'minilm' (all-MiniLM-L6-v2 MLM-adapted, built "
                       'once in the cache), a project model folder with an MLM head, or a '
                       'Hugging Face folder')
    cache_dir: str = opt('', 'cache of the default teacher and corpus ($BORT_CACHE or '
                         '~/.cache/bort when empty)')
    corpus: Tuple[str, ...] = opt((), 'text files for pretraining (one sentence a line, blank '
                                  "line between documents); empty: the installed Python's "
                                  'docstrings after --corpus_skip_bytes', nargs='*')
    corpus_skip_bytes: int = opt(2_000_000, 'bytes at the start of the docstring corpus left '
                                 'out of pretraining: the text the default teacher was '
                                 'MLM-adapted on (the whole corpus of this machine\'s Python is '
                                 'about 6.8 MB)', check=non_negative)
    tasks: Tuple[str, ...] = opt(('SST-2', 'RTE'), 'GLUE tasks to fine-tune on',
                                 nargs='*', choices=('SST-2', 'RTE'))
    # -- 1. search -----------------------------------------------------------------------------
    search: str = opt('', "JSON object of run_search settings over the budget's (e.g. "
                      '\'{"space": "paper"}\')')
    comparison_rule: str = opt('similar_params_worst_e', 'the comparison architecture: '
                               "'similar_params_worst_e' (among the other candidates within "
                               '--params_band of the winner\'s parameter count, the one with '
                               'the worst e; none there: the nearest in parameters) or '
                               "'runner_up' (rank 2 by W)", choices=COMPARISON_RULES)
    params_band: float = opt(0.25, 'relative parameter-count band of similar_params_worst_e',
                             check=positive)
    # -- 2. pretraining (three runs of the same budget) ----------------------------------------
    corpus_bytes: Optional[int] = opt(None, 'bytes of docstring text for pretraining, at most '
                                      '(less when the installed Python has less) (preset)',
                                      check=at_least(1))
    pretrain_steps: Optional[int] = opt(None, 'optimizer steps of each pretraining run; the '
                                        'budget in tokens is steps x batch x seq_len (preset)',
                                        check=at_least(1))
    pretrain_batch_size: Optional[int] = opt(None, 'sequences per pretraining step (preset)',
                                             check=at_least(1))
    seq_len: Optional[int] = opt(None, 'tokens per pretraining sequence (preset)',
                                 check=at_least(8))
    pretrain_lr: float = opt(1e-3, 'peak learning rate of pretraining (BERT-Adam; '
                             "benchmarks/kd_vs_mlm.py's value for students from scratch)",
                             check=positive)
    pretrain_warmup: float = opt(0.1, 'warm-up share of pretraining, then linear decay',
                                 check=unit_interval)
    kd_weight: float = opt(0.5, 'distillation weight (the released 0.5)', check=positive)
    mlm_weight: float = opt(0.1, 'MLM weight of the distilled runs (the released 0.1); the '
                            'MLM-only run uses 1.0', check=non_negative)
    temperature: float = opt(2.0, 'distillation temperature (the released 2.0)', check=positive)
    eval_points: int = opt(10, 'held-out evaluations per pretraining run', check=at_least(1))
    eval_batches: Optional[int] = opt(None, 'held-out batches of each evaluation (preset)',
                                      check=at_least(1))
    # -- 3. fine-tuning (one recipe for every model) -------------------------------------------
    seeds: Tuple[int, ...] = opt((), 'fine-tuning seeds, at least 2 (preset)', nargs='*',
                                 type=int, check=non_negative)
    epochs: Optional[int] = opt(None, 'fine-tuning epochs (best dev epoch kept) (preset)',
                                check=at_least(1))
    max_train_examples: Optional[int] = opt(None, 'training rows kept per task, at random '
                                            '(0: all) (preset)', check=non_negative)
    ft_batch_size: int = opt(16, 'fine-tuning batch', check=at_least(1))
    ft_lr: float = opt(1e-4, 'fine-tuning learning rate (benchmarks/agora_vs_plain.py)',
                       check=positive)
    ft_weight_decay: float = opt(0.01, 'fine-tuning weight decay', check=non_negative)
    ft_warmup: float = opt(0.1, 'fine-tuning warm-up share', check=unit_interval)
    init_range: float = opt(0.05, "r of the head's U(-r, r) initialisation", check=positive)
    max_length: int = opt(128, 'tokens per fine-tuning example', check=at_least(8))
    rte_heldout: int = opt(500, 'RTE training rows set aside as a held-out test set that no '
                           'model trains or is selected on (Agora selects on dev and learns '
                           'from its dev mistakes, so dev favours it)', check=non_negative)
    agora_models: Tuple[str, ...] = opt((), 'students fine-tuned with Agora on RTE (preset)',
                                        nargs='*', choices=tuple(s[0] for s in STUDENTS))
    agora_lrs: Tuple[float, ...] = opt((), "learning rates of Agora's Θ (one seed per run, the "
                                       "recipe's other settings) (preset)", nargs='*',
                                       type=float, check=positive)
    agora_transform: str = opt('mlm', 'transformation of the dev mistakes', choices=(
        'mlm', 'delete', 'swap', 'delete_swap'))
    agora_min_teacher_accuracy: float = opt(0.0, "Agora's teacher check (the method asks for "
                                            'dev accuracy > 2/3); 0 runs Agora whatever the '
                                            "teacher's accuracy, and the report states it "
                                            'next to 2/3', check=unit_interval)
    # -- 4. latency ----------------------------------------------------------------------------
    latency_batch_size: int = opt(1, 'batch of the latency measurement', check=at_least(1))
    latency_seq_len: int = opt(128, 'sequence length of the latency measurement',
                               check=at_least(1))
    latency_repeats: Optional[int] = opt(None, 'timed rounds, models interleaved (preset)',
                                         check=at_least(1))
    # -- run -----------------------------------------------------------------------------------
    seed: int = opt(0, 'seed of the search, the data and pretraining', check=non_negative)
    progress: bool = opt(False, 'tqdm bars of the stages')
    report_only: bool = opt(False, 'run nothing: write report.md from the stages finished so '
                            'far (also while the run goes on), listing the missing ones')

    def __post_init__(self):
        for name in ('corpus', 'tasks', 'seeds', 'agora_models', 'agora_lrs'):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(',') if v]
            setattr(self, name, tuple(value))

    def resolved(self) -> 'MiniatureConfig':
        """A copy with every unset field taken from the budget preset."""
        preset = BUDGETS[self.budget]
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in preset and field.name != 'search' and value in (None, ()):
                changes[field.name] = preset[field.name]
        return dataclasses.replace(self, **changes)

    def search_settings(self) -> Dict[str, Any]:
        """The preset's run_search settings with ``--search`` over them."""
        values = dict(BUDGETS[self.budget]['search'])
        if self.search:
            try:
                extra = json.loads(self.search) if isinstance(self.search, str) else self.search
            except json.JSONDecodeError as err:
                raise ConfigError(f'--search is not valid JSON ({err.msg})') from None
            if not isinstance(extra, dict):
                raise ConfigError('--search must be a JSON object of run_search settings')
            values.update(extra)
        return values

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` naming the flag (after :meth:`resolved`)."""
        check_fields(self)
        if not self.glue_dir:
            raise ConfigError('--glue_dir is required: the folder of the official GLUE files')
        if len(self.seeds) < 2:
            raise ConfigError(f'--seeds needs at least 2 seeds for a spread, got {self.seeds}')
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f'--seeds repeats a seed: {self.seeds}')
        if not self.tasks:
            raise ConfigError('--tasks is empty')
        if self.agora_models and 'RTE' not in self.tasks:
            raise ConfigError('Agora runs on RTE: add RTE to --tasks or pass --agora_models '
                              'with no value')
        if self.agora_models and not self.agora_lrs:
            raise ConfigError("--agora_lrs is empty: Agora's Θ would be empty")
        self.search_settings()

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), search_settings=self.search_settings())

    def tokens_per_run(self) -> int:
        """The pretraining budget of each run in token slots (steps x batch x length)."""
        return int(self.pretrain_steps) * int(self.pretrain_batch_size) * int(self.seq_len)


#: Every other field changes results: a rerun on the same --out must keep them.
RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(MiniatureConfig)
                      if f.name not in RESULT_FREE_FIELDS)
