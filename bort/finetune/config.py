"""The settings of fine-tuning, as flat dataclasses whose fields are ``run_finetune.py``'s flags.

- :class:`FinetuneConfig`: one plain fine-tuning run (:func:`bort.finetune.finetune`);
- :class:`AgoraConfig`: Agora's settings (:func:`bort.finetune.run_agora`);
- :class:`RunOptions`: what a ``run_finetune.py`` job does with the task
  (:func:`bort.finetune.run.run_finetune_job`).

Each field's help text is its flag's (:func:`bort.fields.opt`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import List

from ..fields import (Range, at_least, check_fields, non_negative, opt, positive, probability,
                      unit_interval)
from ..errors import ConfigError
from ..hardware import require_bf16
from ..layers import COMPUTE_DTYPES
from ..pretrain.names import MODEL_SPEC_HELP
from .classifier import HEADS, INITS, HeadConfig
from .pruning import PRUNE_RULES
from .transforms import TRANSFORMS

__all__ = ['FinetuneConfig', 'AgoraConfig', 'RunOptions', 'PATH_FIELDS', 'RESUME_FREE_FIELDS',
           'prune_rules', 'DEFAULT_OUTPUT_DIR', 'with_output_dir', 'RECIPES', 'OPTIMIZERS',
           'BATCHING', 'recipe_defaults']

#: The run folder when --output_dir is empty (and no --finetuned folder says where).
DEFAULT_OUTPUT_DIR = 'runs/finetune'

#: FinetuneConfig fields naming files or folders: a resume compares them resolved.
PATH_FIELDS = ('data_dir', 'model')
#: FinetuneConfig fields a resume may change (they do not change the trained weights).
RESUME_FREE_FIELDS = ('output_dir', 'eval_batch_size')
#: A dropout or fraction that may be 0 but not 1.
_FRACTION = Range(low=0, high=1, high_open=True)
#: Fine-tuning optimizers (:func:`bort.optim.make_trainer`): ``adamw`` is PyTorch's AdamW
#: (bias-corrected), ``bertadam`` the released scripts' (no bias correction), ``adam`` MXNet's
#: (weight decay added to the gradient).
OPTIMIZERS = ('adamw', 'bertadam', 'adam')
#: How an epoch is cut into batches (:func:`bort.finetune.data.epoch_batches`).
BATCHING = ('shuffled', 'bucketed')
#: What ``--recipe`` changes from the field defaults (the ``default`` recipe). ``paper`` is the
#: released Bort recipe (``run_finetune.sh`` and ``BortClassifier``): the settings Bort was
#: fine-tuned with, kept as they were (issue 23 measured what each costs other models).
RECIPES = {
    'default': {},
    'paper': {'optimizer': 'bertadam', 'epsilon': 1e-6, 'init': 'uniform', 'init_range': 0.5,
              'batching': 'bucketed', 'batch_size': 8, 'lr': 5e-5, 'weight_decay': 110.0,
              'warmup_ratio': 0.45, 'max_length': 512},
}


def recipe_defaults(recipe: str) -> dict:
    """The field values ``recipe`` sets (``recipe`` itself included); flags given win."""
    if recipe not in RECIPES:
        raise ConfigError(f'--recipe must be one of {", ".join(RECIPES)}, got {recipe!r}')
    return {'recipe': recipe, **RECIPES[recipe]}


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the flags of ``run_finetune.py``).

    The field defaults are the ``default`` recipe, which fine-tunes any pretrained model
    (a Hugging Face or project folder) as the transformers library does: AdamW with bias
    correction, a head drawn from N(0, 0.02²), shuffled batches, batch 16, lr 5e-5, warm-up
    0.1, weight decay 0.01, length 128. ``recipe='paper'`` (:data:`RECIPES`, built with
    :meth:`for_recipe`) is the released Bort recipe: BERT-Adam without bias correction,
    U(−0.5, 0.5) head, length-bucketed batches, batch 8, lr 5e-5, weight decay 110, warm-up
    0.45, length 512. Weight decay 110 is decoupled (each step shrinks every weight by
    ``lr · wd``, 0.55 % at lr 5e-5); Bort was fine-tuned that way for 50-100 epochs.
    """

    task: str = opt('RTE', 'task name, case-insensitive (bort.finetune.tasks.TASKS)')
    data_dir: str = opt('data/glue', "folder with the benchmark's task folders in their "
                        'official layouts')
    model: str = opt('', 'the pretrained model: ' + MODEL_SPEC_HELP)
    output_dir: str = opt('', 'run folder: best/, checkpoints/, metrics.jsonl, dev_metrics.json '
                          '(empty: runs/finetune; with --finetuned, the folder holding it)')
    head: str = opt('auto', 'classification head (bort.finetune.classifier); auto adds the '
                    "paper's extra layer on the tasks that had it", choices=HEADS)
    recipe: str = opt('default', 'defaults of the settings below: default (any pretrained '
                      "model, as the transformers library fine-tunes) or paper (Bort's released "
                      'recipe: bertadam, uniform init 0.5, bucketed batches, batch 8, lr 5e-5, '
                      'weight decay 110, warm-up 0.45, length 512); flags given win',
                      choices=tuple(RECIPES))
    optimizer: str = opt('adamw', 'adamw (bias-corrected, decoupled weight decay, as PyTorch), '
                         'bertadam (no bias correction: the released recipe) or adam (MXNet, '
                         'weight decay added to the gradient)', choices=OPTIMIZERS)
    head_dropout: float = opt(0.1, 'dropout of the head', check=_FRACTION)
    init: str = opt('normal', "the head's initialisation: normal (N(0, r²), as transformers) "
                    'or uniform (U(-r, r), the released recipe), r = --init_range',
                    choices=INITS)
    init_range: float = opt(0.02, "r of the head's initialisation (transformers 0.02 std, "
                            'released U(-0.5, 0.5))', check=positive)
    batching: str = opt('shuffled', 'shuffled (random batches padded to their longest pair) '
                        'or bucketed (length-sorted within chunks: less padding, the released '
                        'recipe)', choices=BATCHING)
    max_length: int = opt(128, 'tokens per encoded pair, special tokens included',
                          check=at_least(3))
    batch_size: int = opt(16, 'global batch, split over the workers', check=at_least(1))
    lr: float = opt(5e-5, 'peak learning rate (linear warm-up then linear decay)',
                    check=positive)
    weight_decay: float = opt(0.01, 'decoupled weight decay, lr · wd per step, not on biases '
                              'and LayerNorm (released 110)', check=non_negative)
    warmup_ratio: float = opt(0.1, 'warm-up proportion of the training steps',
                              check=unit_interval)
    epsilon: float = opt(1e-8, "Adam's epsilon (PyTorch 1e-8, released 1e-6)", check=positive)
    clip_norm: float = opt(1.0, 'global gradient-norm clip (0: none)', check=non_negative)
    dtype: str = opt('float32', 'float32, or bfloat16 (CPUs with AVX512-BF16 or AMX: every dense '
                     'layer multiplies in bfloat16, float32 weights; refused elsewhere)',
                     choices=COMPUTE_DTYPES)
    epochs: int = opt(3, 'training epochs (the paper found Bort needs 50-100 on small tasks; '
                      'with --max_minutes: at most this many)', check=at_least(1))
    max_minutes: float = opt(0.0, 'wall-clock budget in minutes (0: none): the schedule warms up '
                             'and decays within it and the run ends with a dev evaluation and a '
                             'checkpoint; with --agora, the budget of the whole Agora run',
                             check=non_negative)
    early_stop: int = opt(0, 'stop after this many epochs without improvement of the primary '
                          'metric (0: never)', check=non_negative)
    seed: int = opt(2, 'seed of the head, the data order and the dropout masks')
    eval_batch_size: int = opt(32, 'per-worker batch of dev and test predictions',
                               check=at_least(1))
    balance: bool = opt(False, 'balance the training labels (for the MultiRC/ReCoRD/RACE '
                        'castings)')
    max_train_examples: int = opt(0, 'keep a random subset of this many training examples '
                                  '(0: all)', check=non_negative)

    def validate(self, workers: int = 1) -> None:
        """Raise :class:`~bort.errors.ConfigError` (naming the flag) on settings that cannot
        run: each field's range (also checked when flags are parsed), then their combinations.

        Parameters
        ----------
        workers : int
            The number of workers: each global batch is split over them.
        """
        check_fields(self)
        if not self.model:
            raise ConfigError('no pretrained model: pass --model (a project model folder)')
        if self.dtype == 'bfloat16':
            require_bf16('--dtype bfloat16')
        if self.batch_size < workers:
            raise ConfigError(f'--batch_size {self.batch_size} is smaller than the number of '
                              f'workers ({workers}): every batch is split over the workers')

    def head_config(self) -> HeadConfig:
        """The head these settings build for the task (``head='auto'`` resolved)."""
        return HeadConfig.resolve(self.task, self.head, dropout=self.head_dropout,
                                  init=self.init, init_range=self.init_range,
                                  max_length=self.max_length)

    @classmethod
    def for_recipe(cls, recipe: str = 'default', **values) -> 'FinetuneConfig':
        """Settings with ``recipe``'s defaults (:data:`RECIPES`); ``values`` win."""
        return cls(**{**recipe_defaults(recipe), **values})


def with_output_dir(config: FinetuneConfig, finetuned: str = '') -> FinetuneConfig:
    """``config`` with its run folder decided: ``output_dir`` when set, else the folder that
    holds ``finetuned`` (so ``--finetuned runs/rte/best --predict`` writes into ``runs/rte``),
    else :data:`DEFAULT_OUTPUT_DIR`."""
    if config.output_dir:
        return config
    folder = DEFAULT_OUTPUT_DIR
    if finetuned:  # a fine-tuned folder (run/best) or a run folder holding best/
        folder = (finetuned if os.path.isdir(os.path.join(finetuned, 'best'))
                  else os.path.dirname(os.path.normpath(finetuned)))
    return dataclasses.replace(config, output_dir=folder or '.')


def prune_rules() -> List[str]:
    """The names of Agora's pruning rules (read from the registry when a parser is built)."""
    return sorted(PRUNE_RULES)


@dataclass
class AgoraConfig:
    """Agora's settings (flags of ``run_finetune.py --agora``); the grid defaults are the
    released README's starting Θ (480 sets), the Cartesian product of the five lists in the
    nesting order batch size, warm-up, weight decay, lr, seed (seeds vary fastest).
    """

    teacher: str = opt('', 'fine-tuned folder of the task teacher (or a fine-tuning run folder '
                       'holding best/)')
    min_teacher_accuracy: float = opt(2 / 3, "the teacher's dev accuracy must exceed this "
                                      "(2/3, the method's requirement)", check=unit_interval)
    seeds: List[int] = opt([0, 1, 2, 3, 4], 'seeds of the grid Θ')
    lrs: List[float] = opt([1e-4, 1e-5, 9e-6], 'learning rates of the grid Θ', check=positive)
    weight_decays: List[float] = opt([0.0, 10.0, 100.0, 350.0], 'weight decays of the grid Θ',
                                     check=non_negative)
    warmup_ratios: List[float] = opt([0.35, 0.40, 0.45, 0.50], 'warm-up ratios of the grid Θ',
                                     check=unit_interval)
    batch_sizes: List[int] = opt([8, 16], 'batch sizes of the grid Θ', check=at_least(1))
    transform: str = opt('mlm', 'transformation of the dev mistakes '
                         '(bort.finetune.transforms.TRANSFORMS)',
                         choices=lambda: sorted(TRANSFORMS))
    transform_fraction: float = opt(0.15, 'share of words/tokens a transformation changes',
                                    check=probability)
    copies: int = opt(1, 'new points per dev mistake', check=at_least(1))
    mlm_model: str = opt('', "masked-LM model for --transform mlm (empty: the student's "
                         'pretrained model): ' + MODEL_SPEC_HELP)
    mlm_temperature: float = opt(1.0, 'temperature of the masked-LM draws', check=positive)
    prune: str = opt('worst_ties', 'rule that prunes Θ after each iteration '
                     '(bort.finetune.pruning.PRUNE_RULES: worst_ties, worst_one)',
                     choices=prune_rules)
    replay: int = opt(0, 're-run the last k iterations once Θ is empty (0: no replay)',
                      check=non_negative)
    chs: str = opt('', 'JSON object of one θ (keys seed, lr, weight_decay, warmup_ratio, '
                   'batch_size): run over that set only')
    chs_iterations: int = opt(3, 'iterations in CHS mode (--chs)', check=at_least(1))

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` naming the flag: ranges and choices, an
        empty grid, a --chs that is not a JSON object of one θ."""
        check_fields(self)
        if not self.teacher:
            raise ConfigError('Agora needs --teacher (a fine-tuned folder of the task teacher)')
        if not self.chs:
            for name in ('seeds', 'lrs', 'weight_decays', 'warmup_ratios', 'batch_sizes'):
                if not getattr(self, name):
                    raise ConfigError(f'--{name} is empty: the grid Θ would be empty')
            return
        try:
            theta = self.chs if isinstance(self.chs, dict) else json.loads(self.chs)
        except json.JSONDecodeError as err:
            raise ConfigError(f'--chs is not valid JSON ({err.msg})') from None
        keys = ('seed', 'lr', 'weight_decay', 'warmup_ratio', 'batch_size')
        if not isinstance(theta, dict) or sorted(theta) != sorted(keys):
            raise ConfigError(f'--chs must be a JSON object with exactly the keys '
                              f'{", ".join(keys)}; got {self.chs}')
        checks = {'lr': positive, 'weight_decay': non_negative, 'warmup_ratio': unit_interval,
                  'batch_size': at_least(1)}
        for key, check in checks.items():
            if not check.accepts(theta[key]):
                raise ConfigError(f'--chs {key} must be {check.describe()}, got {theta[key]!r}')


@dataclass
class RunOptions:
    """What a ``run_finetune.py`` job does with the task (the flags not in the other configs)."""

    agora: bool = opt(False, 'fine-tune with Agora (needs --teacher) and write chs.json')
    predict: bool = opt(False, 'also write the leaderboard submission file of the test split')
    finetuned: str = opt('', 'skip training: evaluate this fine-tuned folder on dev (e.g. the '
                         'MNLI model for AX)')
    gpu: bool = opt(False, "run on the GPU (under horovodrun: the local rank's)")
