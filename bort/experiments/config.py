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
from typing import Any, Dict, List, Optional, Tuple

from ..fields import at_least, check_fields, non_negative, opt, positive, unit_interval
from ..errors import ConfigError

__all__ = ['MiniatureConfig', 'BUDGETS', 'COMPARISON_RULES', 'INITS', 'AGORA_TASKS',
           'AGORA_PREMISE', 'Student',
           'students', 'finetuned_models', 'model_labels', 'RESULT_FIELDS', 'RESULT_FREE_FIELDS']

#: How the comparison architecture is chosen from the search's candidates (see
#: :func:`bort.experiments.miniature.choose_comparison`).
COMPARISON_RULES = ('similar_params_worst_e', 'runner_up')

#: How a student starts (:class:`~bort.pretrain.PretrainConfig` ``init``): random weights, or
#: sliced out of the teacher (:mod:`bort.extraction`).
INITS = ('scratch', 'teacher')
#: The GLUE tasks the miniature reads (and Agora may run on).
AGORA_TASKS = ('SST-2', 'RTE')
#: Agora's premise: the teacher (Socrates) must exceed this dev accuracy on the task.
AGORA_PREMISE = 2 / 3


@dataclass(frozen=True)
class Student:
    """One pretraining run of the miniature.

    ``objective`` is ``'kd'`` (the released mixed loss at ``temperature``), ``'mlm'`` (MLM only,
    the same steps) or ``'mlm_time'`` (MLM only, given the wall time of the training loops of
    the same init's KD runs: the equal-time arm of Table 3).
    """

    name: str
    role: str
    init: str
    objective: str
    temperature: Optional[float] = None

    @property
    def distilled(self) -> bool:
        return self.objective == 'kd'

    @property
    def label(self) -> str:
        start = 'from scratch' if self.init == 'scratch' else 'extracted'
        what = {'mlm': 'MLM only, equal steps',
                'mlm_time': 'MLM only, equal wall time'}.get(self.objective)
        what = what or f'KD T={self.temperature:g}'
        return f'{self.role}, {start}, {what}'


def students(config: 'MiniatureConfig') -> List[Student]:
    """The pretraining runs of ``config`` (resolved), in the order they run.

    For every init in ``inits``: the winner distilled at every temperature (the first one's
    run is ``winner_<init>_kd``, the others ``winner_<init>_kd_t<T>``), by MLM only for the
    same steps (``winner_<init>_mlm``) and by MLM only for the wall time of those KD runs
    (``winner_<init>_mlm_time``); then the comparison architecture, distilled at the first
    temperature from the first init (``comparison_<init>_kd``).
    """
    out: List[Student] = []
    first = config.temperatures[0]
    for init in config.inits:
        for t in config.temperatures:
            suffix = '' if t == first else f'_t{t:g}'.replace('.', 'p')
            out.append(Student(f'winner_{init}_kd{suffix}', 'winner', init, 'kd', t))
        out.append(Student(f'winner_{init}_mlm', 'winner', init, 'mlm'))
        out.append(Student(f'winner_{init}_mlm_time', 'winner', init, 'mlm_time'))
    out.append(Student(f'comparison_{config.inits[0]}_kd', 'comparison', config.inits[0], 'kd',
                       first))
    return out


def finetuned_models(config: 'MiniatureConfig') -> Tuple[str, ...]:
    """The models fine-tuned on every task: the teacher, for every init in
    ``finetune_inits`` the winner distilled at the first temperature and by MLM only (equal
    steps), and the comparison."""
    names = ['teacher']
    for init in config.finetune_inits:
        names += [f'winner_{init}_kd', f'winner_{init}_mlm']
    return tuple(names) + (f'comparison_{config.inits[0]}_kd',)


def socrates_stage(config: 'MiniatureConfig', task: str) -> str:
    """The stage of Agora's teacher (Socrates) on ``task``: the teacher fine-tuned with the
    first seed."""
    return f'finetune/teacher_{task}_s{config.seeds[0]}'


def model_labels(config: 'MiniatureConfig') -> Dict[str, str]:
    """Every model's name -> its words in the report."""
    return dict({'teacher': 'teacher'}, **{s.name: s.label for s in students(config)})

#: Named budgets: the preset value of every field left unset. ``search`` holds
#: :class:`~bort.search.SearchConfig` settings over its defaults (``full``: the default search).
BUDGETS: Dict[str, Dict[str, Any]] = {
    'small': {
        'search': {'epsilon': 12, 'noise_seeds': 1, 'noise_candidates': 2,
                   'fidelity_factor': 0},
        'corpus_bytes': 2_000_000, 'pretrain_steps': 500, 'pretrain_batch_size': 16,
        'seq_len': 64, 'eval_batches': 20, 'temperatures': (2.0,), 'inits': ('scratch',),
        'finetune_inits': ('scratch',), 'seeds': (0, 1), 'epochs': 2,
        'max_train_examples': 1000, 'agora_models': ('winner_scratch_kd',),
        'agora_tasks': ('SST-2', 'RTE'), 'agora_lrs': (1e-4, 5e-5), 'agora_unmet': 'run',
        'latency_repeats': 10, 'teacher_steps': (), 'teacher': 'minilm',
    },
    'full': {
        'search': {},
        'corpus_bytes': 5_000_000, 'pretrain_steps': 1000, 'pretrain_batch_size': 32,
        'seq_len': 64, 'eval_batches': 60, 'temperatures': (2.0, 1.0),
        'inits': ('scratch', 'teacher'), 'finetune_inits': ('scratch', 'teacher'),
        'seeds': (0, 1, 2), 'epochs': 3, 'max_train_examples': 4000,
        'agora_models': ('winner_scratch_kd', 'winner_teacher_kd'),
        'agora_tasks': ('SST-2', 'RTE'), 'agora_lrs': (1e-4, 5e-5, 2e-4),
        # Agora is not run where its teacher fails the check (RTE so far): its verdicts would not
        # count, and its 12 minutes do not fit the 3 hours (the premise is still reported).
        'agora_unmet': 'skip', 'latency_repeats': 20, 'teacher_steps': (), 'teacher': 'minilm-1000',
    },
}

#: Fields that do not change any result: a rerun on the same --out may change them.
RESULT_FREE_FIELDS = ('out', 'progress', 'report_only', 'teacher_table_only')


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
    teacher: Optional[str] = opt(None, "the teacher: 'minilm' (all-MiniLM-L6-v2 MLM-adapted in "
                                 "400 steps, built once in the cache), 'minilm-<steps>' (the "
                                 'same adapted in that many steps: a stronger teacher, see '
                                 '--teacher_steps), a project model folder with an MLM head, or '
                                 "a Hugging Face folder (preset: small 'minilm', full "
                                 "'minilm-1000')")
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
    teacher_steps: Tuple[int, ...] = opt((), 'MLM adaptation steps of the teacher-strength '
                                         "table: the built-in teacher built with each ('minilm-"
                                         "<steps>', 10+ minutes per 1,000 steps on 2 cores, "
                                         'cached) and scored on the students\' held-out '
                                         'positions; empty: no table (preset)', nargs='*',
                                         type=int, check=at_least(1))
    teacher_table_only: bool = opt(False, 'run only the stages of the teacher-strength table '
                                   '(teacher, data, reference, teacher_strength/*) and write '
                                   'the report: to choose --teacher before the full run')
    # -- 2. pretraining (runs of the same budget) ----------------------------------------------
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
    pretrain_lr: float = opt(5e-4, "peak learning rate of pretraining (run_pretraining's "
                             'defaults otherwise: AdamW, unigram output bias)', check=positive)
    pretrain_warmup: float = opt(0.1, 'warm-up share of pretraining, then linear decay',
                                 check=unit_interval)
    kd_weight: float = opt(0.5, 'distillation weight (the released 0.5)', check=positive)
    mlm_weight: float = opt(0.1, 'MLM weight of the distilled runs (the released 0.1); the '
                            'MLM-only run uses 1.0', check=non_negative)
    temperatures: Tuple[float, ...] = opt((), 'distillation temperatures, one distilled winner '
                                          'each; the first (the released 2.0) is also the '
                                          "comparison's and the fine-tuned one's (preset)",
                                          nargs='*', type=float, check=positive)
    inits: Tuple[str, ...] = opt((), "how the winner starts, one set of runs each: 'scratch' "
                                 "(the paper) or 'teacher' (extracted from the teacher, "
                                 'bort/extraction.py); the first is also the comparison\'s '
                                 '(preset)', nargs='*', choices=INITS)
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
    ft_init: str = opt('normal', "the head's initialisation: 'normal' (N(0, r²), "
                       "transformers') or 'uniform' (U(-r, r), the released recipe)",
                       choices=('normal', 'uniform'))
    init_range: float = opt(0.02, "r of the head's initialisation (run_finetune's default: "
                            'N(0, 0.02²))', check=positive)
    finetune_inits: Tuple[str, ...] = opt((), 'inits (of --inits) whose winner is fine-tuned '
                                          'twice, distilled at the first temperature and by '
                                          'MLM only (equal steps); the teacher and the '
                                          'comparison always are (preset)', nargs='*',
                                          choices=INITS)
    max_length: int = opt(128, 'tokens per fine-tuning example', check=at_least(8))
    rte_heldout: int = opt(500, 'RTE training rows set aside as a held-out test set that no '
                           'model trains or is selected on (Agora selects on dev and learns '
                           'from its dev mistakes, so dev favours it)', check=non_negative)
    sst2_heldout: int = opt(1000, 'SST-2 training rows set aside the same way',
                            check=non_negative)
    agora_models: Tuple[str, ...] = opt((), 'fine-tuned students also trained with Agora, e.g. '
                                        "'winner_scratch_kd' (preset)", nargs='*')
    agora_tasks: Tuple[str, ...] = opt((), 'tasks of the Agora runs (preset)', nargs='*',
                                       choices=AGORA_TASKS)
    agora_lrs: Tuple[float, ...] = opt((), "learning rates of Agora's Θ (one seed per run, the "
                                       "recipe's other settings) (preset)", nargs='*',
                                       type=float, check=positive)
    agora_transform: str = opt('mlm', 'transformation of the dev mistakes', choices=(
        'mlm', 'delete', 'swap', 'delete_swap'))
    agora_min_teacher_accuracy: float = opt(AGORA_PREMISE, "Agora's teacher check: the teacher "
                                            '(the teacher fine-tuned on the task, first seed) '
                                            'must exceed this dev accuracy (the method: 2/3)',
                                            check=unit_interval)
    agora_unmet: Optional[str] = opt(None, "a task whose teacher fails the check: 'run' Agora "
                                     'there with the check off, reported as premise not met '
                                     "(its verdicts are not counted), or 'skip' it (preset: "
                                     "small 'run', full 'skip')", choices=('run', 'skip'))
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
        for name in ('corpus', 'tasks', 'seeds', 'agora_models', 'agora_lrs', 'agora_tasks',
                     'temperatures', 'inits', 'finetune_inits', 'teacher_steps'):
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
        for name in ('temperatures', 'inits'):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f'--{name} is empty')
            if len(set(values)) != len(values):
                raise ConfigError(f'--{name} repeats a value: {values}')
        if set(self.finetune_inits) - set(self.inits):
            raise ConfigError(f'--finetune_inits {self.finetune_inits} names an init that '
                              f'--inits {self.inits} does not pretrain')
        if len(set(self.teacher_steps)) != len(self.teacher_steps):
            raise ConfigError(f'--teacher_steps repeats a value: {self.teacher_steps}')
        models = finetuned_models(self)
        for name in self.agora_models:
            if name == 'teacher' or name not in models:
                raise ConfigError(f'--agora_models {name!r} is not a fine-tuned student (one '
                                  f'of {", ".join(models[1:])})')
        if self.agora_models:
            missing = [t for t in self.agora_tasks if t not in self.tasks]
            if missing or not self.agora_tasks:
                raise ConfigError(f'--agora_tasks {self.agora_tasks}: Agora needs tasks that '
                                  f'are fine-tuned (--tasks {self.tasks}); or pass '
                                  f'--agora_models with no value')
            if not self.agora_lrs:
                raise ConfigError("--agora_lrs is empty: Agora's Θ would be empty")
        self.search_settings()

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), search_settings=self.search_settings())

    def heldout_rows(self) -> Dict[str, int]:
        """Training rows set aside per task (tasks with none left out)."""
        rows = {'RTE': self.rte_heldout, 'SST-2': self.sst2_heldout}
        return {t: rows[t] for t in self.tasks if rows.get(t)}

    def tokens_per_run(self) -> int:
        """The pretraining budget of each run in token slots (steps x batch x length)."""
        return int(self.pretrain_steps) * int(self.pretrain_batch_size) * int(self.seq_len)


#: Every other field changes results: a rerun on the same --out must keep them.
RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(MiniatureConfig)
                      if f.name not in RESULT_FREE_FIELDS)
