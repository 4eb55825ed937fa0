"""The settings of fine-tuning, as flat dataclasses whose fields are ``run_finetune.py``'s flags.

- :class:`FinetuneConfig`: one plain fine-tuning run (:func:`bort.finetune.finetune`);
- :class:`AgoraConfig`: Agora's settings (:func:`bort.finetune.run_agora`);
- :class:`RunOptions`: what a ``run_finetune.py`` job does with the task
  (:func:`bort.finetune.run.run_finetune_job`).

Each field's help text is its flag's (:func:`bort.cli.opt`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..cli import opt
from .classifier import HEADS, HeadConfig
from .transforms import TRANSFORMS

__all__ = ['FinetuneConfig', 'AgoraConfig', 'RunOptions']


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (the flags of ``run_finetune.py``).

    Released defaults (``run_finetune.sh``): batch 8, lr 5e-5, weight decay 110, warm-up 0.45,
    max length 512, seed 2. Weight decay 110 with BERT-Adam's decoupled decay shrinks each
    weight by ``lr · wd`` = 0.55 % a step at lr 5e-5; it is the default because it is the
    released value (see :mod:`bort.finetune.loop`).
    """

    task: str = opt('RTE', 'task name, case-insensitive (bort.finetune.tasks.TASKS)')
    data_dir: str = opt('data/glue', "folder with the benchmark's task folders in their "
                        'official layouts')
    model: str = opt('', 'pretrained project model folder (model.params, arch.json, tokenizer '
                     'files)')
    output_dir: str = opt('runs/finetune', 'run folder: best/, checkpoints/, metrics.jsonl, '
                          'dev_metrics.json')
    head: str = opt('auto', 'classification head (bort.finetune.classifier); auto adds the '
                    "paper's extra layer on the tasks that had it", choices=HEADS)
    head_dropout: float = opt(0.1, 'dropout of the head')
    init_range: float = opt(0.5, "r of the head's U(-r, r) initialisation (released 0.5)")
    max_length: int = opt(512, 'tokens per encoded pair, special tokens included')
    batch_size: int = opt(8, 'global batch, split over the workers')
    lr: float = opt(5e-5, 'peak learning rate (BERT-Adam, linear warm-up then linear decay)')
    weight_decay: float = opt(110.0, "BERT-Adam's decoupled weight decay (lr · wd per step; "
                              'released 110, use e.g. 0.01 for ordinary fine-tuning)')
    warmup_ratio: float = opt(0.45, 'warm-up proportion of the training steps')
    epsilon: float = opt(1e-6, "Adam's epsilon")
    clip_norm: float = opt(1.0, 'global gradient-norm clip (0: none)')
    epochs: int = opt(3, 'training epochs (the budget; the paper found Bort needs 50-100 on '
                      'small tasks)')
    early_stop: int = opt(0, 'stop after this many epochs without improvement of the primary '
                          'metric (0: never)')
    seed: int = opt(2, 'seed of the head, the data order and the dropout masks')
    eval_batch_size: int = opt(32, 'per-worker batch of dev and test predictions')
    balance: bool = opt(False, 'balance the training labels (for the MultiRC/ReCoRD/RACE '
                        'castings)')
    max_train_examples: int = opt(0, 'keep a random subset of this many training examples '
                                  '(0: all)')

    def head_config(self) -> HeadConfig:
        """The head these settings build for the task (``head='auto'`` resolved)."""
        return HeadConfig.resolve(self.task, self.head, dropout=self.head_dropout,
                                  init_range=self.init_range, max_length=self.max_length)


@dataclass
class AgoraConfig:
    """Agora's settings (flags of ``run_finetune.py --agora``); the grid defaults are the
    released README's starting Θ (480 sets), the Cartesian product of the five lists in the
    nesting order batch size, warm-up, weight decay, lr, seed (seeds vary fastest).
    """

    teacher: str = opt('', 'fine-tuned folder of the task teacher (or a fine-tuning run folder '
                       'holding best/)')
    min_teacher_accuracy: float = opt(2 / 3, "the teacher's dev accuracy must exceed this "
                                      "(2/3, the method's requirement)")
    seeds: List[int] = opt([0, 1, 2, 3, 4], 'seeds of the grid Θ')
    lrs: List[float] = opt([1e-4, 1e-5, 9e-6], 'learning rates of the grid Θ')
    weight_decays: List[float] = opt([0.0, 10.0, 100.0, 350.0], 'weight decays of the grid Θ')
    warmup_ratios: List[float] = opt([0.35, 0.40, 0.45, 0.50], 'warm-up ratios of the grid Θ')
    batch_sizes: List[int] = opt([8, 16], 'batch sizes of the grid Θ')
    transform: str = opt('mlm', 'transformation of the dev mistakes '
                         '(bort.finetune.transforms.TRANSFORMS)',
                         choices=lambda: sorted(TRANSFORMS))
    transform_fraction: float = opt(0.15, 'share of words/tokens a transformation changes')
    copies: int = opt(1, 'new points per dev mistake')
    mlm_model: str = opt('', "masked-LM folder for --transform mlm (empty: the student's "
                         'pretrained folder)')
    mlm_temperature: float = opt(1.0, 'temperature of the masked-LM draws')
    prune: str = opt('worst_ties', 'rule that prunes Θ after each iteration '
                     '(bort.finetune.agora.PRUNE_RULES: worst_ties, worst_one)')
    replay: int = opt(0, 're-run the last k iterations once Θ is empty (0: no replay)')
    chs: str = opt('', 'JSON object of one θ (keys seed, lr, weight_decay, warmup_ratio, '
                   'batch_size): run over that set only')
    chs_iterations: int = opt(3, 'iterations in CHS mode (--chs)')


@dataclass
class RunOptions:
    """What a ``run_finetune.py`` job does with the task (the flags not in the other configs)."""

    agora: bool = opt(False, 'fine-tune with Agora (needs --teacher) and write chs.json')
    predict: bool = opt(False, 'also write the leaderboard submission file of the test split')
    finetuned: str = opt('', 'skip training: evaluate this fine-tuned folder on dev (e.g. the '
                         'MNLI model for AX)')
    gpu: bool = opt(False, "run on the GPU (under horovodrun: the local rank's)")
