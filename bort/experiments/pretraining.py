"""The miniature's pretraining stages: the held-back data, the teacher on the held-out
positions (and the teacher-strength table), and one pretraining run of the budget.

Each ``stage_*`` function does one stage's work in its folder and returns its figures
(:func:`bort.experiments.stages.run_stage` caches them); :mod:`bort.experiments.miniature` runs
them in order.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from .config import MiniatureConfig, Student

__all__ = ['stage_data', 'stage_reference', 'stage_teacher_strength', 'stage_pretrain',
           'heldout_batches', 'pretrain_curve', 'train_seconds', 'equal_time_minutes',
           'TIME_RUN_STEP_CAP']

#: An equal-time run's step cap, in multiples of --pretrain_steps (its budget ends it first).
TIME_RUN_STEP_CAP = 50


# -- 2. data and the held-out reference -----------------------------------------------------------
def _docstring_text(config: MiniatureConfig, folder: str) -> str:
    """The held-back docstring text (after --corpus_skip_bytes), cut at a document boundary."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.corpus import python_docs_corpus
    from ..pretrain.names import cache_root
    cache = os.path.expanduser(config.cache_dir) if config.cache_dir else cache_root()
    total = config.corpus_skip_bytes + int(config.corpus_bytes)
    full = os.path.join(cache, 'teachers', f'python_docs_{total}.txt')
    if not os.path.isfile(full):
        python_docs_corpus(full, total)
    text = os.path.join(folder, 'corpus.txt')
    with open(full, encoding='utf-8') as f:
        f.seek(config.corpus_skip_bytes)
        body = f.read()
    if config.corpus_skip_bytes:
        cut = body.find('\n\n')
        body = body[cut + 2:] if cut >= 0 else ''
    if len(body.strip()) == 0:
        raise UserError(f'the installed Python has no docstring text beyond '
                        f'{config.corpus_skip_bytes} bytes: pass --corpus files')
    with open(text + '.tmp', 'w', encoding='utf-8') as f:
        f.write(body)
    os.replace(text + '.tmp', text)
    return text


def _max_predictions(seq_len: int) -> int:
    return max(2, round(seq_len * 0.15) + 1)


def stage_data(config: MiniatureConfig, teacher: str, folder: str) -> Dict:
    """Pretraining shards (teacher's tokenizer, 5 % of documents held out)."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.prepare import PrepConfig, prepare_pretraining_data
    files = list(config.corpus) if config.corpus else [_docstring_text(config, folder)]
    shards = os.path.join(folder, 'shards')
    meta = prepare_pretraining_data(files, teacher, shards, PrepConfig(
        max_seq_length=int(config.seq_len), num_workers=2, eval_fraction=0.05,
        max_predictions=_max_predictions(int(config.seq_len)), seed=config.seed))
    text_bytes = sum(os.path.getsize(p) for p in files)
    return {'shards': shards, 'files': files, 'text_bytes': text_bytes,
            'tokens': meta.get('tokens'), 'sequences': meta.get('sequences'),
            'unk_ratio': meta.get('unk_ratio'), 'vocab_size': meta.get('vocab_size')}


def _pretrain_config(config: MiniatureConfig, data: str, output_dir: str, arch: str,
                     teacher: str, student: Optional[Student] = None, max_minutes: float = 0.0):
    """``run_pretraining``'s settings of one run (its defaults otherwise: AdamW, unigram output
    bias); ``student`` None: the settings every run shares (batch, evaluation batches)."""
    from ..pretrain import PretrainConfig  # pylint: disable=import-outside-toplevel
    steps = int(config.pretrain_steps)
    interval = max(1, steps // config.eval_points)
    distil = student is not None and student.distilled
    init = student.init if student is not None else 'scratch'
    return PretrainConfig(
        data=data, output_dir=output_dir, arch=arch,
        teacher=teacher if distil or init == 'teacher' else '', init=init,
        kd_weight=config.kd_weight if distil else 0.0,
        mlm_weight=config.mlm_weight if distil else 1.0,
        temperature=student.temperature if distil else config.temperatures[0],
        max_predictions=_max_predictions(int(config.seq_len)), lr=config.pretrain_lr,
        warmup_ratio=config.pretrain_warmup, schedule='linear',
        # A run on a time budget stops at its budget: the step count is only a cap.
        total_steps=steps * TIME_RUN_STEP_CAP if max_minutes else steps,
        max_minutes=max_minutes, batch_size=int(config.pretrain_batch_size), seed=config.seed,
        log_interval=min(interval, 50), eval_interval=interval,
        eval_batches=int(config.eval_batches), checkpoint_interval=interval, keep_checkpoints=1,
        resume=True, plot=True)


def heldout_batches(config: MiniatureConfig, data: str) -> List:
    """The fixed held-out batches every pretraining run is evaluated on (bort.pretrain.loop
    builds them the same way from the same settings)."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.masking import masking_for
    from ..pretrain.shards import read_meta
    from ..pretrain.stream import fixed_batches, list_shards
    run = _pretrain_config(config, data, '', '', '')
    meta = read_meta(data)
    masking = masking_for(meta, run.mask_ratio, run.max_predictions)
    return fixed_batches(list_shards(data, 'eval'), run.batch_size, masking, run.eval_batches,
                         pad_id=meta['pad_id'])


def _score_teacher(folder: str, data: str, batches: List) -> Dict[str, float]:
    """A masked-LM model's held-out top-1, top-5 and cross-entropy on ``batches``."""
    # pylint: disable=import-outside-toplevel
    import mxnet as mx
    from ..pretrain.evaluate import evaluate
    from ..pretrain.shards import read_meta
    from ..pretrain.teacher import Teacher
    model = Teacher.load(folder, read_meta(data)['vocab_size'])
    out = evaluate(model.model, batches, mx.cpu())
    return {'acc': out['eval_mlm_acc'], 'top5': out['eval_mlm_top5'],
            'loss': out['eval_mlm_loss']}


def stage_reference(config: MiniatureConfig, teacher: str, data: str, folder: str) -> Dict:
    """The teacher on the pretraining runs' held-out batches: its MLM accuracy, the
    most-frequent-token rate and the number of masked positions (the yardstick of noise)."""
    from ..pretrain.evaluate import most_frequent_rate  # pylint: disable=import-outside-toplevel
    del folder  # nothing to write
    batches = heldout_batches(config, data)
    score = _score_teacher(teacher, data, batches)
    positions = int(sum(float(b.weights.sum()) for b in batches))
    return {'teacher_acc': score['acc'], 'teacher_top5': score['top5'],
            'teacher_loss': score['loss'], 'most_frequent_rate':
            most_frequent_rate(batches), 'positions': positions, 'batches': len(batches)}


def stage_teacher_strength(config: MiniatureConfig, steps: int, data: str, folder: str) -> Dict:
    """One row of the teacher-strength table: the built-in teacher MLM-adapted in ``steps``
    steps (``minilm-<steps>``, built once in the cache: 10+ minutes per 1,000 steps on 2
    cores) scored on the students' held-out positions. The adaptation text is the first
    ``--corpus_skip_bytes`` of the docstring corpus, which no student is trained on."""
    # pylint: disable=import-outside-toplevel
    from ..errors import read_json
    from ..pretrain.default_teacher import ADAPT_REPORT, resolve_model_dir
    del folder  # the build is cached with the other teachers
    built = resolve_model_dir(f'minilm-{steps}', config.cache_dir or None, what='teacher')
    report = read_json(os.path.join(built, ADAPT_REPORT), what='MLM adaptation report')
    score = _score_teacher(built, data, heldout_batches(config, data))
    return dict(score, steps=steps, folder=built,
                adapt_heldout_acc=report.get('heldout_mlm_accuracy'),
                build_seconds=report.get('build_seconds', {}))


def pretrain_curve(metrics_path: str, tokens_per_step: int) -> List[Dict]:
    """Held-out evaluations of a run by step (the last record of a step wins after a
    resume), with the tokens seen."""
    from ..log import MetricsLog  # pylint: disable=import-outside-toplevel
    records = [r for r in MetricsLog(metrics_path).read() if not r.get('final')]
    evals = {r['step']: r for r in records if 'eval_mlm_acc' in r}
    return [{'step': s, 'tokens': s * tokens_per_step, 'acc': evals[s]['eval_mlm_acc'],
             'top5': evals[s]['eval_mlm_top5'], 'loss': evals[s]['eval_mlm_loss']}
            for s in sorted(evals)]


def train_seconds(run_dir: str) -> Optional[float]:
    """Seconds of training steps a run took, over its resumes (its last checkpoint's
    ``train_seconds``: what ``--max_minutes`` budgets, held-out evaluations and checkpoints not
    counted), None without a checkpoint."""
    from ..checkpoint import CheckpointManager  # pylint: disable=import-outside-toplevel
    latest = CheckpointManager(run_dir).latest()
    if latest is None:
        return None
    with open(os.path.join(latest, 'state.json'), encoding='utf-8') as f:
        return json.load(f).get('train_seconds')


def equal_time_minutes(kd_figures: Sequence[Dict]) -> float:
    """The wall-time budget of an ``mlm_time`` run: the mean training time of the same init's
    KD runs (:func:`train_seconds`), in minutes (KD pays for the teacher's forward pass in that
    time)."""
    seconds = [f['train_seconds'] for f in kd_figures if f.get('train_seconds')]
    if not seconds:
        raise UserError('the KD runs recorded no training time: the equal-time MLM run has '
                        'no budget')
    return sum(seconds) / len(seconds) / 60.0


def stage_pretrain(config: MiniatureConfig, teacher: str, data: str, arch: str,
                   student: Student, folder: str, max_minutes: float = 0.0) -> Dict:
    """One pretraining run of the miniature's budget (resumes from its checkpoints)."""
    # pylint: disable=import-outside-toplevel
    from ..arch import load_arch
    from ..costs import num_parameters
    from ..log import MetricsLog
    from ..pretrain import pretrain
    run_dir = os.path.join(folder, 'run')
    run = _pretrain_config(config, data, run_dir, arch, teacher, student, max_minutes)
    result = pretrain(run)
    tokens_per_step = run.batch_size * int(config.seq_len)
    train = [r for r in MetricsLog(os.path.join(run_dir, 'metrics.jsonl')).read()
             if 'tokens_per_s' in r and not r.get('final')]
    shape = load_arch(arch)
    return {'model': os.path.join(run_dir, 'model'), 'arch': list(shape.tuple),
            'params': num_parameters(shape), 'distilled': student.distilled,
            'init': student.init, 'objective': student.objective,
            'temperature': student.temperature, 'max_minutes': max_minutes,
            'train_seconds': train_seconds(run_dir), 'steps': result['step'],
            'tokens': result['step'] * tokens_per_step,
            'final_acc': result.get('eval_mlm_acc'), 'final_top5': result.get('eval_mlm_top5'),
            'final_loss': result.get('eval_mlm_loss'),
            'most_frequent_rate': result.get('eval_most_frequent_rate'),
            'curve': pretrain_curve(os.path.join(run_dir, 'metrics.jsonl'), tokens_per_step),
            'tokens_per_s': (sum(r['tokens_per_s'] for r in train) / len(train)
                             if train else None),
            'settings': {k: getattr(run, k) for k in ('kd_weight', 'mlm_weight', 'temperature',
                                                      'init', 'lr', 'optimizer',
                                                      'decoder_bias', 'warmup_ratio',
                                                      'total_steps', 'max_minutes',
                                                      'batch_size', 'eval_batches')}}
