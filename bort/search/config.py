"""Every setting of a search, as one flat dataclass; its defaults are the project's reading.

:class:`SearchConfig` is what ``run_search.py`` fills from flags and ``--config FILE.json`` and
what ``config.json`` in the output folder records. Each ambiguous choice of the method is a field
whose help text says which reading the default takes (SPEC.md section 3).

The built-in default (no flags at all) is a small but real search that fits a 2-core CPU in about
a quarter of an hour: the MiniLM teacher (all-MiniLM-L6-v2, <6, 12, 384, 1536>, MLM-adapted
on the corpus), the docstring corpus of the installed Python, and the ``default`` grid around the
teacher's size (:data:`GRIDS`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Tuple

from ..arch import PAPER_SEARCH_SPACE
from ..fields import (Range, at_least, check_fields, non_negative, opt, positive, probability,
                      unit_interval)
from ..errors import ConfigError
from ..hardware import require_bf16
from ..layers import COMPUTE_DTYPES
from ..pretrain.names import cache_root

__all__ = ['SearchConfig', 'GRIDS', 'KNOBS', 'OBJECTIVES', 'SAMPLERS', 'resolve_grid',
           'parse_objectives', 'validate_bo', 'run_fingerprint']

#: The four knobs of the architecture family, in the paper's <D, A, H, I> order.
KNOBS = ('num_layers', 'num_heads', 'units', 'hidden_size')

#: Named grids. ``default`` surrounds the MiniLM teacher <6, 12, 384, 1536>: 6·2·3·3 = 108 tuples
#: of which 36 are invalid (12 heads do not divide widths 128 and 256), leaving 72, the teacher
#: among them. ``paper`` is the paper's 300-tuple space (section 3.3).
GRIDS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    'default': {'num_layers': (1, 2, 3, 4, 5, 6), 'num_heads': (4, 12),
                'units': (128, 256, 384), 'hidden_size': (256, 512, 1536)},
    'paper': {k: tuple(v) for k, v in PAPER_SEARCH_SPACE.items()},
}


#: Strategies by name, filled by :func:`bort.search.strategies.register_strategy`. The registry
#: lives here so that ``--strategy``'s choices need no import of the strategies (which import
#: this module); importing any ``bort.search`` module runs the package, which registers them all.
STRATEGIES: Dict[str, type] = {}


def strategy_names() -> Tuple[str, ...]:
    """The registered strategies and ``compare``."""
    return tuple(sorted(STRATEGIES)) + ('compare',)


@dataclass
class SearchConfig:
    """Settings of one search (flags of ``run_search.py``; keys of ``--config`` files)."""

    # -- inputs ------------------------------------------------------------------------------
    teacher: str = opt('minilm', "the maximum point T: 'minilm' (all-MiniLM-L6-v2 MLM-adapted "
                       "on the corpus, built once in the cache), 'minilm-head' (frozen encoder, "
                       "fitted head only), a project model folder with an MLM head, or a "
                       "Hugging Face BERT/RoBERTa folder (imported once)")
    corpus: Tuple[str, ...] = opt((), 'text files, one sentence a line, blank line between '
                                  "documents; empty: the installed Python's docstrings",
                                  nargs='*')
    corpus_bytes: int = opt(4_000_000, 'size of the docstring corpus when --corpus is empty', check=at_least(1))
    cache_dir: str = opt('', 'where the default teacher and corpus are cached '
                         '($BORT_CACHE or ~/.cache/bort when empty)')
    out: str = opt('runs/search', 'output folder; a rerun with the same folder resumes')
    # -- the search space ----------------------------------------------------------------------
    space: str = opt('default', "grid: a name in bort.search.config.GRIDS ('default' around "
                     "the MiniLM teacher, 'paper') or a JSON file of the four knob lists")
    num_layers: Tuple[int, ...] = opt((), 'D values (replace the grid\'s)', nargs='*', type=int, check=at_least(1))
    num_heads: Tuple[int, ...] = opt((), "A values (replace the grid's)", nargs='*', type=int, check=at_least(1))
    units: Tuple[int, ...] = opt((), "H values (replace the grid's)", nargs='*', type=int, check=at_least(1))
    hidden_size: Tuple[int, ...] = opt((), "I values (replace the grid's)", nargs='*', type=int, check=at_least(1))
    strategy: str = opt('fptas', "how candidates are chosen: 'fptas' (the paper's), 'bo' "
                        "(bort.search.bo) or 'compare' (both at one budget)",
                        choices=strategy_names)
    epsilon: int = opt(8, 'interval size ε of the FPTAS: one candidate every ε positions of Ξ '
                       'sorted by p (ties by i); 1 is exhaustive', check=at_least(1))
    max_candidates: int = opt(0, 'stop after training this many candidates in this run '
                              '(0: no limit); a later run with the same --out continues. '
                              '--strategy bo: the whole study\'s budget (0: the FPTAS\'s '
                              'count at --epsilon); compare: both strategies\' budget', check=non_negative)
    # -- the fixed hyperparameter set (one for every candidate, as in the paper) ---------------
    steps: int = opt(40, 's: optimizer steps per candidate, from scratch', check=at_least(1))
    batch_size: int = opt(16, 'sequences per step', check=at_least(1))
    seq_len: int = opt(64, 'maximum sequence length of the search batches (paper: 512); '
                       'students keep the teacher\'s max_length', check=at_least(4))
    optimizer: str = opt('adam', "'adam' (default: its 40-step ranking agrees with 4x longer "
                         "training, SGD's does not; docs/SPEC.md, README 'our reading'), the "
                         "paper's 'sgd', or 'bertadam'", choices=('sgd', 'adam', 'bertadam'))
    lr: float = opt(1e-3, 'peak learning rate (the paper\'s value is lost; with --optimizer sgd, '
                    '0.3 was the best of 0.03/0.1/0.3/0.6 for <2, 4, 256, 512> on the default '
                    'search)', check=positive)
    momentum: float = opt(0.9, 'SGD momentum (the paper does not say; with 0.9, 60 steps reach '
                          'a lower error than plain SGD at any rate tried)', check=Range(low=0, high=1, high_open=True))
    weight_decay: float = opt(0.0, 'weight decay (none on LayerNorm and biases)', check=non_negative)
    clip: float = opt(1.0, 'global gradient-norm clipping constant (0: none)', check=non_negative)
    warmup_ratio: float = opt(0.1, 'warm-up proportion of s', check=unit_interval)
    schedule: str = opt('linear', 'decay after warm-up', choices=('linear', 'noam', 'constant'))
    init: str = opt('teacher', "how every candidate starts: 'teacher' (default: sliced out of "
                    "the teacher's weights, bort.extraction: evenly spaced layers, width, heads "
                    "and FFN neurons by magnitude, the output bias the teacher's; its e orders "
                    "candidates as 1,000-step pretraining does, README) or 'scratch' (random "
                    "weights, the paper's reading)", choices=('teacher', 'scratch'))
    dtype: str = opt('float32', "candidates' training precision: float32, or bfloat16 (CPUs with "
                     'AVX512-BF16 or AMX: dense layers multiplied in bfloat16, float32 weights; '
                     'refused elsewhere; the teacher targets stay float32)',
                     choices=COMPUTE_DTYPES)
    decoder_bias: str = opt('unigram', "initial output bias of every candidate's masked-LM decoder: "
                            "'zero' (the paper's from-scratch training) or 'unigram' (log "
                            'frequencies of the training tokens, so that no step is spent '
                            'learning token frequencies and e measures what the context adds)',
                            choices=('zero', 'unigram'))
    temperature: float = opt(1.0, "softening temperature of both distributions in the "
                             "distillation objective and in e (1: the plain masked-LM "
                             "distributions)", check=positive)
    error: str = opt('cross_entropy', "the surrogate error e: 'cross_entropy' (the paper's: "
                     "between the teacher's and the candidate's masked-LM distributions) or "
                     "'kl' (the same minus the teacher's own entropy, i.e. the part a candidate "
                     'can change; its floor is 0 instead of the teacher\'s entropy)',
                     choices=('cross_entropy', 'kl'))
    mask_ratio: float = opt(0.15, 'fraction of tokens masked (one fixed masking per batch, '
                            'so the teacher cache is valid)', check=probability)
    train_batches: int = opt(0, 'distinct training batches, cycled (0: s, i.e. none repeats)', check=non_negative)
    heldout_batches: int = opt(4, 'held-out batches on which e is measured', check=at_least(1))
    # -- trust: seed noise of e, fidelity of the short-run proxy (bort.search.trust) ------------
    noise_seeds: int = opt(2, 'extra seeds each of the top --noise_candidates is retrained with '
                           '(their e gives the seed noise σ of e beside every e and an interval '
                           'on W; 0: not measured)', check=non_negative)
    noise_candidates: int = opt(3, 'how many of the top candidates (by W) are retrained for the '
                                'noise estimate', check=at_least(1))
    fidelity_factor: int = opt(4, 'k: train --fidelity_candidates candidates k times longer (on '
                               'fresh batches) and report Kendall τ between the s-step and the '
                               'k·s-step e and W (0: off; about two thirds of the default '
                               "run's training time)", check=non_negative)
    fidelity_candidates: int = opt(6, 'candidates of the fidelity check, spread evenly over '
                                   'the candidates sorted by size', check=at_least(2))
    # -- the teacher cache ---------------------------------------------------------------------
    teacher_cache: bool = opt(True, "compute the teacher's outputs on the search batches once, "
                              'store them in --out and reuse them for every candidate; '
                              '--no-teacher_cache runs the teacher at every step (for '
                              'comparison)')
    cache_topk: int = opt(1024, 'training targets stored as the teacher\'s top-k logits (float16 '
                          'values, int32 ids, plus the log-normaliser); 0 stores all V logits '
                          'in float16. Held-out targets are always the full distribution', check=non_negative)
    cache_tail: bool = opt(True, 'with top-k targets, keep the k probabilities exact and spread '
                           'the remaining mass evenly over the other tokens; '
                           '--no-cache_tail renormalises over the k instead')
    # -- costs ---------------------------------------------------------------------------------
    cost: str = opt('measured', "inference cost i: 'measured' (CPU seconds per sample, median "
                    "of repeats after warm-up, as the paper's Table 1) or 'flops' "
                    '(deterministic operation count)', choices=('measured', 'flops'))
    latency_batch_size: int = opt(1, 'batch size of the latency measurement', check=at_least(1))
    latency_seq_len: int = opt(128, 'sequence length of the latency measurement and of flops', check=at_least(1))
    latency_threads: int = opt(1, 'OpenMP threads per timed call, in a separate timing process '
                               '(0: in the search process, with its threads); one thread keeps '
                               'the order when other processes load the cores', check=non_negative)
    latency_clock: str = opt('process', "clock of a separate timing process: 'process' (its CPU "
                             "time: others' load not counted) or 'wall'",
                             choices=('process', 'wall'))
    latency_warmup: int = opt(3, 'warm-up runs before timing', check=non_negative)
    latency_repeats: int = opt(15, 'timed runs (the median is kept)', check=at_least(1))
    latency_group: int = opt(8, 'architectures timed side by side, runs interleaved', check=at_least(1))
    params_with_decoder: bool = opt(False, 'count the MLM head in p (default: embeddings and '
                                    'encoder, as deployed for fine-tuning)')
    reference: Tuple[str, ...] = opt(('bert_base',), 'reference rows of table.md: registered '
                                     'architectures, re-shaped onto the teacher\'s vocabulary',
                                     nargs='*')
    # -- Bayesian optimisation (--strategy bo and compare; bort.search.bo) ---------------------
    bo_sampler: str = opt('tpe', "Optuna sampler: 'tpe' (multivariate TPE, Bayesian), 'gp', "
                          "'nsga2' (NSGA-II) or 'random'",
                          choices=('tpe', 'gp', 'nsga2', 'random'))
    bo_objectives: str = opt('error,latency', "objectives minimised, comma-separated: error "
                             'and latency (i), optionally params (p)')
    bo_startup: int = opt(0, 'trainings picked uniformly among untried valid tuples before '
                          'the sampler models (0: a third of the budget, at least 2)', check=non_negative)
    bo_population: int = opt(0, 'NSGA-II population (0: a third of the budget, at least 2)', check=non_negative)
    max_latency_ms: float = opt(0.0, 'constraint (bo): latency per sample in ms, measured '
                                'before training; violators are never trained (0: none)', check=non_negative)
    max_params: float = opt(0.0, 'constraint (bo): at most this many parameters p; violators '
                            'are never trained (0: none)', check=non_negative)
    bo_remeasure: bool = opt(True, 'time the final front again, side by side (bo, measured '
                             'cost)')
    bo_remeasure_repeats: int = opt(0, 'timed runs of that re-measurement (0: twice '
                                    '--latency_repeats)', check=non_negative)
    # -- run -----------------------------------------------------------------------------------
    seed: int = opt(0, 'seed of data order, masking, and every candidate\'s initialisation', check=non_negative)
    progress: bool = opt(True, 'tqdm bars over candidates and steps (rank 0)')

    def __post_init__(self):
        # Lists may come as JSON lists, tuples or comma-separated strings.
        for name in ('corpus', 'num_layers', 'num_heads', 'units', 'hidden_size', 'reference'):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(',') if v]
            cast = int if name in KNOBS else str
            setattr(self, name, tuple(cast(v) for v in value))

    def validate(self) -> None:
        """Raise :class:`~bort.errors.ConfigError` (naming the flag) on settings that cannot
        run: each field's range (also checked when flags are parsed), then combinations."""
        check_fields(self)
        if self.dtype == 'bfloat16':
            require_bf16('--dtype bfloat16')
        if self.fidelity_factor == 1:
            raise ConfigError('--fidelity_factor 1 would compare a run with itself: use k >= 2 '
                              '(or 0 for off)')
        if self.strategy in ('bo', 'compare'):
            validate_bo(self)

    @property
    def resolved_cache_dir(self) -> str:
        return os.path.expanduser(self.cache_dir) if self.cache_dir else cache_root()

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict) -> 'SearchConfig':
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown search settings {unknown}')
        return cls(**values)

    def fingerprint(self, teacher_weights: str = '') -> str:
        """A digest of the settings a candidate's error depends on.

        Stored with every finished candidate: a resumed search refuses results computed under
        other settings (output folder, budget, progress bars and cost settings excluded; costs
        are cached separately under their own key). ``teacher_weights`` is a digest of the
        teacher's weights file: the ``teacher`` setting alone (e.g. ``minilm``) does not say which
        weights it resolved to.
        """
        keys = ('teacher', 'corpus', 'corpus_bytes', 'steps', 'batch_size', 'seq_len',
                'optimizer', 'lr', 'momentum', 'weight_decay', 'clip', 'warmup_ratio',
                'schedule', 'init', 'decoder_bias', 'temperature', 'mask_ratio', 'train_batches', 'heldout_batches',
                'cache_topk', 'cache_tail', 'seed')
        values = {k: getattr(self, k) for k in keys}
        if teacher_weights:
            values['teacher_weights'] = teacher_weights
        if self.dtype != 'float32':  # float32 searches keep the fingerprint they always had
            values['dtype'] = self.dtype
        if not self.teacher_cache or not self.cache_topk:
            values['cache_topk'] = 0  # online targets are the full distribution
            values['cache_tail'] = True
        text = json.dumps(values, sort_keys=True, default=list)
        return hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]


def run_fingerprint(config: SearchConfig) -> str:
    """A digest of what makes an output folder's table: the candidates' settings
    (:meth:`SearchConfig.fingerprint`) plus the strategy and its own settings, the teacher
    cache and the trust checks. A rerun on the same folder with another value is refused before
    anything is written (another strategy would replace the folder's table and best_arch.json).
    """
    keys = ['strategy', 'teacher_cache', 'noise_seeds', 'noise_candidates', 'fidelity_factor',
            'fidelity_candidates']
    if config.strategy == 'fptas':
        keys.append('epsilon')
    if config.strategy in ('bo', 'compare'):
        keys += ['bo_sampler', 'bo_objectives', 'bo_startup', 'bo_population', 'max_latency_ms',
                 'max_params']
    values = {k: getattr(config, k) for k in keys}
    values['candidates'] = config.fingerprint()
    text = json.dumps(values, sort_keys=True, default=list)
    return hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]


def resolve_grid(config: SearchConfig) -> Dict[str, Tuple[int, ...]]:
    """The four knob lists: the named grid or JSON file, with per-knob overrides applied."""
    if config.space in GRIDS:
        grid = dict(GRIDS[config.space])
    elif os.path.isfile(config.space):
        with open(config.space) as f:
            data = json.load(f)
        missing = [k for k in KNOBS if k not in data]
        if missing:
            raise ConfigError(f'{config.space}: the grid file lacks {missing}')
        grid = {k: tuple(int(v) for v in data[k]) for k in KNOBS}
    else:
        raise ConfigError(f'--space {config.space!r}: neither a named grid ({", ".join(GRIDS)}) '
                         f'nor a JSON file')
    for knob in KNOBS:
        if getattr(config, knob):
            grid[knob] = tuple(getattr(config, knob))
    return grid


# -- Bayesian-search settings (bort.search.bo) ---------------------------------------------
#: Objectives a study can minimise, and the record field each is read from.
OBJECTIVES = ('error', 'latency', 'params')
SAMPLERS = ('tpe', 'gp', 'nsga2', 'random')


def parse_objectives(text: str) -> Tuple[str, ...]:
    """``'error,latency'`` -> ('error', 'latency'); error and latency are always included."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(',') if n.strip()))
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not {'error', 'latency'} <= set(names):
        raise ValueError(f'bo_objectives must list error and latency (and optionally params), '
                         f'comma-separated; got {text!r}')
    return names


def validate_bo(config: 'SearchConfig') -> None:
    """Raise :class:`~bort.errors.ConfigError` on Bayesian-search settings that cannot run."""
    try:
        parse_objectives(config.bo_objectives)
    except ValueError as err:
        raise ConfigError(f'--bo_objectives: {err}') from None
    if config.bo_sampler not in SAMPLERS:
        raise ConfigError(f'--bo_sampler must be one of {SAMPLERS}, got {config.bo_sampler!r}')
    if config.max_latency_ms and config.cost != 'measured':
        raise ConfigError('--max_latency_ms needs --cost measured')
