"""Every setting of a pretraining run, as one flat dataclass: :class:`PretrainConfig`.

It is what ``run_pretraining.py`` fills from flags and ``--config FILE.json`` (each field's help
text is its flag's) and what every checkpoint saves as ``config.json``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..fields import (Range, at_least, check_fields, non_negative, opt, positive, probability,
                      unit_interval)
from ..errors import ConfigError
from ..hardware import require_bf16
from ..extraction import LAYER_CHOICES, UNIT_CHOICES
from ..optim import OPTIMIZERS, SCHEDULES
from .names import MODEL_SPEC_HELP

__all__ = ['PretrainConfig', 'OPTIMIZERS', 'DECODER_BIASES', 'INITS', 'DTYPES', 'PATH_FIELDS', 'RESUME_FREE_FIELDS']

#: How a student starts.
INITS = ('scratch', 'teacher')
#: Initial output biases of a student's masked-LM head.
DECODER_BIASES = ('zero', 'unigram')
#: Training precisions: float16 is mixed precision on the GPU (float16 weights, float32 master
#: copy, loss scaling); bfloat16 on CPUs with bfloat16 kernels (float32 weights, dense layers
#: multiplied in bfloat16: :func:`bort.layers.set_compute_dtype`).
DTYPES = ('float32', 'float16', 'bfloat16')
#: Settings that name files or folders: a resume compares them resolved (``./x/`` is ``x``).
PATH_FIELDS = ('data', 'eval_data', 'teacher', 'init_from', 'tokenizer')
#: Settings a resume may change: they do not change the trained weights (logging, evaluation,
#: checkpoint cadence, where the run folder is, the device). Every other one must match.
RESUME_FREE_FIELDS = ('resume', 'output_dir', 'log_interval', 'eval_interval', 'eval_batches',
                      'eval_data', 'checkpoint_interval', 'keep_checkpoints', 'plot',
                      'hybridize', 'gpu')


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run (saved as ``config.json`` in each checkpoint).

    The loss is the released Bort script's (weights 0.1/0.5, T=2, eps 1e-6, wd 0.01, linear
    decay, clip 1.0); the start and the optimizer are this project's measured recipe (README,
    "Why students stalled"): AdamW lr 5e-4, warm-up 10 %, 32 sequences, an output bias at the
    unigram. The released ones: ``--optimizer bertadam --lr 1e-4 --warmup_ratio 0.01
    --batch_size 8 --decoder_bias zero``.
    """

    # -- inputs and outputs ----------------------------------------------------------------------
    data: str = opt('', 'folder written by `python -m bort.pretrain.prepare` (or a glob of '
                    'shards)')
    eval_data: str = opt('', "held-out shards (default: the data folder's eval-* shards)")
    output_dir: str = opt('runs/pretrain', 'run folder: checkpoints, metrics.jsonl, curves')
    arch: str = opt('bort_4_8_768_1024', 'student: registered name, arch JSON file/folder, '
                    'search result, or inline JSON')
    teacher: str = opt('', 'the teacher, with an MLM head (needed unless --kd_weight is 0): '
                       + MODEL_SPEC_HELP)
    init_from: str = opt('', 'a model whose weights (and arch) start the student, e.g. to '
                         'MLM-adapt a teacher: ' + MODEL_SPEC_HELP)
    tokenizer: str = opt('', 'tokenizer folder, only for shards without meta.json')
    # -- the objective ---------------------------------------------------------------------------
    mlm_weight: float = opt(0.1, 'weight of the masked-LM term', check=non_negative)
    kd_weight: float = opt(0.5, 'weight of the distillation term (0: self-supervised baseline)',
                           check=non_negative)
    temperature: float = opt(2.0, 'distillation temperature T (the term is scaled by T²)',
                             check=positive)
    released_quirks: bool = opt(False, "the released script's loss (softmax twice, vocabulary "
                                'mean)')
    init: str = opt('scratch', "how the student starts: 'scratch' (random weights, the paper's "
                    "reading) or 'teacher' (sliced out of --teacher's weights: "
                    'bort.extraction; needs a tuple that fits inside the teacher)',
                    choices=INITS)
    extract_layers: str = opt('even', "with --init teacher: which teacher layers, 'even' "
                              "(evenly spaced, ending with the last) or 'first'",
                              choices=LAYER_CHOICES)
    extract_units: str = opt('magnitude', "with --init teacher: which width dimensions, heads "
                             "and FFN neurons, 'magnitude' (data-free importance) or 'first'",
                             choices=UNIT_CHOICES)
    decoder_bias: str = opt('unigram', "initial output bias of the student's masked-LM head: "
                            "'zero' (the paper's from-scratch start) or 'unigram' (the log "
                            'frequencies of the training tokens: the student starts where '
                            'learning frequencies would take it)', choices=DECODER_BIASES)
    mask_ratio: float = opt(0.15, 'fraction of tokens masked (dynamic masking, 80/10/10)',
                            check=probability)
    max_predictions: int = opt(76, 'masked positions per sequence at most', check=at_least(1))
    # -- the optimizer ---------------------------------------------------------------------------
    optimizer: str = opt('adamw', "optimizer (bort.optim.make_trainer): 'adamw' (bias-corrected; "
                          "the released scripts' 'bertadam' has no bias correction)",
                          choices=OPTIMIZERS)
    lr: float = opt(5e-4, 'peak learning rate (released: 1e-4; at 1e-3, 6-layer students fell '
                    'back to the most-frequent-token answer over 1,000 steps: README)',
                    check=positive)
    weight_decay: float = opt(0.01, 'decoupled weight decay (none on LayerNorm and biases)',
                              check=non_negative)
    adam_epsilon: float = opt(1e-6, "Adam's epsilon", check=positive)
    adam_beta2: float = opt(0.999, "Adam's second-moment decay (BERT: 0.999; RoBERTa: 0.98)",
                            check=Range(low=0, high=1, high_open=True))
    warmup_ratio: float = opt(0.1, 'warm-up proportion of --total_steps (released: 0.01)',
                              check=unit_interval)
    schedule: str = opt('linear', 'decay after warm-up (bort.optim.learning_rate)',
                        choices=SCHEDULES)
    max_grad_norm: float = opt(1.0, 'global gradient-norm clipping (0: none)', check=non_negative)
    total_steps: int = opt(1000, 'optimizer steps (with --max_minutes: at most this many)',
                           check=at_least(1))
    max_minutes: float = opt(0.0, 'wall-clock budget of the training steps in minutes (0: '
                             'none; held-out evaluations and checkpoints not counted): the '
                             'schedule warms up and decays within it, and the run ends with a '
                             'checkpoint, an evaluation and the final model',
                             check=non_negative)
    batch_size: int = opt(32, 'sequences per worker per micro-batch (released: 8 a GPU)',
                          check=at_least(1))
    accumulate: int = opt(1, 'micro-batches per optimizer step', check=at_least(1))
    data_parts: int = opt(0, 'data order parts (0: number of workers); keep fixed to compare '
                          'worker counts (bort.pretrain.stream)', check=non_negative)
    dtype: str = opt('float32', 'float32; float16 (GPU only, dynamic loss scaling); bfloat16 '
                     '(CPUs with AVX512-BF16 or AMX: the dense layers of student and teacher '
                     'multiply in bfloat16, float32 weights; refused elsewhere)', choices=DTYPES)
    loss_scale: float = opt(2.0 ** 15, 'initial dynamic loss scale (float16 only)', check=positive)
    # -- the run ---------------------------------------------------------------------------------
    gpu: bool = opt(False, 'train on the GPU (under horovodrun: the local rank\'s)')
    seed: int = opt(0, 'seed of initialisation, data order, masking and dropout')
    hybridize: bool = opt(True, 'hybridize the student (and teacher) for speed')
    log_interval: int = opt(10, 'optimizer steps between training log lines', check=at_least(1))
    eval_interval: int = opt(100, 'optimizer steps between held-out evaluations', check=at_least(1))
    eval_batches: int = opt(16, 'held-out batches per evaluation', check=at_least(1))
    checkpoint_interval: int = opt(100, 'optimizer steps between checkpoints', check=at_least(1))
    keep_checkpoints: int = opt(0, 'newest checkpoints kept (0: all)', check=non_negative)
    resume: bool = opt(False, 'continue from the latest checkpoint in --output_dir')
    plot: bool = opt(True, 'plot the training and held-out curves (curves.png) at the end')

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` (naming the flag) on settings that cannot
        run: each field's range (also checked when flags are parsed), then their combinations.
        """
        check_fields(self)
        if not self.data:
            raise ConfigError('no training data: pass --data (a folder from '
                              'python -m bort.pretrain.prepare)')
        if self.kd_weight == 0 and self.mlm_weight == 0:
            raise ConfigError('--kd_weight and --mlm_weight are both 0: nothing to train')
        if self.init == 'teacher' and not self.teacher:
            raise ConfigError('--init teacher needs --teacher (the model to extract the '
                              'student from)')
        if self.init == 'teacher' and self.init_from:
            raise ConfigError('--init teacher and --init_from both say how the student '
                              'starts: pass one')
        if self.kd_weight > 0 and not self.teacher:
            raise ConfigError('--kd_weight > 0 needs --teacher (or pass --kd_weight 0 for the '
                              'self-supervised baseline)')
        if self.dtype == 'float16' and not self.gpu:
            raise ConfigError('--dtype float16 is for GPUs only (pass --gpu)')
        if self.dtype == 'bfloat16':
            if self.gpu:
                raise ConfigError('--dtype bfloat16 is for the CPU (oneDNN kernels); on the '
                                  'GPU pass --dtype float16')
            require_bf16('--dtype bfloat16')
