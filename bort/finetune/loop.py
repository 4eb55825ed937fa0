"""Plain fine-tuning of a pretrained encoder on one task, single process or under Horovod.

One function, :func:`finetune`, does what the released script did, minus its bugs:

* the optimizer of ``config.optimizer`` (:func:`build_trainer`; AdamW by default, the released
  BERT-Adam with ``--recipe paper``), linear warm-up then linear decay
  (:func:`bort.optim.learning_rate`), global-norm clipping, no decay on LayerNorm and biases;
* epochs with a dev evaluation after each, early stopping on the task's primary metric
  (``early_stop`` epochs without improvement; 0 never stops early) and the best model kept
  as a fine-tuned folder (``output_dir/best``, :func:`bort.finetune.classifier.save_classifier`);
* a checkpoint after every epoch (``output_dir/checkpoints/step-NNNNNNN``), from which a killed
  run resumes at the next epoch with the same data order, dropout masks and schedule;
* shuffled batches (:func:`epoch_batches`; ``batching='bucketed'``, the released recipe's
  length-sorted chunks, pads less but makes each batch rows of one length);
* under Horovod (``horovodrun``) the workers really are synchronised, unlike the released
  script's: parameters broadcast from rank 0, each global batch of ``batch_size`` examples split
  over the workers, gradients averaged before clipping and the update, dev predictions gathered
  so that every worker takes the same early-stopping decision. A 2-worker run takes the same
  steps as one process with the same global batch.

The defaults fine-tune any pretrained model as the transformers library does (issue 23: the
same model, data and settings score the same as a plain transformers loop;
``benchmarks/finetune_parity.py``). What the released recipe's pieces cost all-MiniLM-L6-v2 on
1,000 SST-2 rows at lr 1e-4 (one seed, the defaults with one piece put back): BERT-Adam 50.9
(one class: without bias correction its first hundred updates are 3-6.5 times the rate),
bucketed batches 79.0, the U(−0.5, 0.5) head 81.3, against 80.6. The released
recipe (``FinetuneConfig.for_recipe('paper')``, ``run_finetune.py --recipe paper``): batch 8,
lr 5e-5, weight decay 110, warm-up 0.45, max length 512, BERT-Adam, U(−0.5, 0.5) head,
bucketed batches. Weight decay 110 is decoupled: every step shrinks each weight by
``lr · wd`` = 0.55 % at lr 5e-5, so a few hundred steps wipe most of a pretrained encoder out.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

from ..checkpoint import (CheckpointManager, check_resume, settings_record, step_seed,
                          write_json_atomic)
from .classifier import (Encoded, TaskClassifier, build_classifier, encode_examples,
                         load_classifier, make_batch, predict_scores, save_classifier, task_loss)
from ..distributed import Comm
from ..errors import DataFormatError
from ..hardware import announce
from ..layers import set_compute_dtype
from ..log import MetricsLog
from .castings import aggregate
from .metrics import majority_baseline, primary_metric
from ..optim import learning_rate, make_trainer, optimizer_step
from ..runlock import hold_run_folder
from ..stopping import INTERRUPTED, OUT_OF_TIME, RunBudget, StepBar, schedule_position
from .config import PATH_FIELDS, RESUME_FREE_FIELDS, FinetuneConfig, with_output_dir
from .data import CHUNK_BATCHES, epoch_batches, load_split, train_labels
from .evaluate import BEST, evaluate
from .tasks import Example, get_task
from ..tokenizers import load_tokenizer

# epoch_batches, load_split and CHUNK_BATCHES live in .data; named here as before.
__all__ = ['FinetuneResult', 'finetune', 'build_trainer', 'train_step', 'epoch_batches',
           'load_split', 'remove_checkpoints', 'resolve_pretrained', 'warn_if_majority', 'BEST',
           'CHUNK_BATCHES']

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    metrics : dict
        Dev metrics of the best epoch (primary metric first).
    score : float
        The best epoch's primary metric.
    epoch : int
        The best epoch (0-based).
    dev_scores : (N_dev, num_classes) float32
        The best model's dev scores, in dev-example order.
    folder : str
        The best model's fine-tuned folder.
    steps : int
        Optimizer steps taken in all.
    history : list of dict
        One record per epoch.
    model : TaskClassifier
        The model as it ended (the last epoch, not necessarily the best).
    stopped : str or None
        ``'time budget'`` when the run ended at its (or Agora's) time budget.
    """

    metrics: Dict[str, float]
    score: float
    epoch: int
    dev_scores: np.ndarray
    folder: str
    steps: int
    history: List[Dict[str, Any]] = field(default_factory=list)
    model: Optional[TaskClassifier] = None
    stopped: Optional[str] = None


def build_trainer(model: TaskClassifier, config: FinetuneConfig, comm: Comm) -> mx.gluon.Trainer:
    """The trainer of a fine-tuning run: ``config.optimizer`` over every parameter, weight
    decay off biases and LayerNorm (:func:`bort.optim.make_trainer`); the loop sets the rate
    every step (:func:`bort.optim.learning_rate`)."""
    return make_trainer(model.collect_params(), comm, config.optimizer, lr=config.lr,
                        weight_decay=config.weight_decay, epsilon=config.epsilon)


def train_step(model: TaskClassifier, trainer: mx.gluon.Trainer, params: List, loss_fn,
               inputs: Tuple, target: mx.nd.NDArray, scale: float, clip_norm: float):
    """One optimizer step of fine-tuning on one (worker's) batch.

    Parameters
    ----------
    model : TaskClassifier
    trainer : Trainer
    params : list of Parameter
        The trainable parameters.
    loss_fn : callable
        :func:`bort.finetune.classifier.task_loss`: ``(scores, labels) -> (batch_size,)``.
    inputs : tuple
        ``make_batch``'s ``(inputs (B, L), token_types (B, L) or None, valid_length (B,))``.
    target : (batch_size,) float32
    scale : float
        Multiplies the summed loss: workers / global batch size, so that the workers' average
        of the gradients is the global batch's mean gradient, as one process computes it.
    clip_norm : float

    Returns
    -------
    (loss, norm) : scalar NDArray, float
        This worker's scaled loss and the gradient norm before clipping (not finite: no update).
    """
    with mx.autograd.record():
        loss = loss_fn(model(*inputs), target).sum() * scale
    loss.backward()
    return loss, optimizer_step(trainer, params, clip_norm)


def _train_epoch(model: TaskClassifier, trainer: mx.gluon.Trainer, params: List, loss_fn,
                 encoded: Sequence[Encoded], labels: np.ndarray, pad_id: int,
                 batches: List[Tuple[np.ndarray, int]], config: FinetuneConfig, comm: Comm,
                 step: int, total_steps: int, bar, budget: RunBudget,
                 timed: Optional[RunBudget]) -> Tuple[int, float, int, Optional[str]]:
    """One epoch's optimizer steps (or the rest of one), until ``budget`` says stop.

    Returns
    -------
    (step, loss, done, stopped)
        The new step count, the mean training loss, the batches gone through and
        :meth:`~bort.stopping.RunBudget.stop_reason` (None: the epoch is complete).
    """
    losses = []
    for done, (batch, length) in enumerate(batches, 1):
        if len(batch) < comm.size:  # a worker would get nothing (only a tiny last batch)
            continue
        mine = comm.shard(batch)
        inputs, types, valid = make_batch(encoded, mine, length, pad_id, comm.ctx,
                                          model.uses_token_types)
        target = mx.nd.array(labels[mine], ctx=comm.ctx, dtype=labels.dtype)
        trainer.set_learning_rate(learning_rate(*schedule_position(step, total_steps, timed),
                                                config.lr, config.warmup_ratio))
        mx.random.seed(step_seed(config.seed, step, comm.rank))  # dropout, also after resume
        loss, norm = train_step(model, trainer, params, loss_fn, (inputs, types, valid), target,
                                comm.size / len(batch), config.clip_norm)
        if not math.isfinite(norm):
            raise FloatingPointError(f'gradient norm {norm} at step {step}; lower the lr')
        losses.append(float(loss.asscalar()) / comm.size)
        step += 1
        bar.update(1)
        stopped = budget.stop_reason()
        if stopped:
            return step, float(np.mean(losses)), done, stopped
    return step, float(np.mean(losses)) if losses else float('nan'), len(batches), None


def _check_same_run(checkpoint: str, config: FinetuneConfig) -> None:
    """Resuming under other settings would silently mix two runs: refuse it, naming each
    setting that differs (paths compared resolved; the same rule as pretraining's)."""
    check_resume(checkpoint, dataclasses.asdict(config), PATH_FIELDS, RESUME_FREE_FIELDS)


def finetune(config: FinetuneConfig, comm: Optional[Comm] = None, *,
             train: Optional[Sequence[Example]] = None, dev: Optional[Sequence[Example]] = None,
             tokenizer=None, show_progress: bool = True,
             clock: Optional[Callable[[], float]] = None,
             budget: Optional[RunBudget] = None) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.task``; resume if ``output_dir`` has a checkpoint.

    Parameters
    ----------
    config : FinetuneConfig
    comm : Comm, optional
        Workers (single process by default). Every worker must call this.
    train, dev : sequences of Example, optional
        Override the task's files (Agora passes its growing training set).
    tokenizer : Tokenizer, optional
        Defaults to the one in ``config.model``.
    show_progress : bool
        A tqdm bar over optimizer steps on rank 0.
    clock : callable, optional
        ``clock() -> seconds`` for ``config.max_minutes`` (tests pass a fake one).
    budget : RunBudget, optional
        A budget owned by the caller (Agora's): the run stops when it is spent, without
        changing its schedule; ``config.max_minutes`` must then be 0.

    ``config.model`` may be ``minilm``, a project model folder or a Hugging Face folder
    (:func:`bort.pretrain.default_teacher.resolve_model_dir`). With ``config.max_minutes``
    the schedule spans the budget and the run ends at the first step past it with a dev
    evaluation (the best model kept as usual) and a checkpoint. Ctrl-C ends it after the
    current step with a checkpoint that the same command resumes (mid-epoch), then raises
    :class:`KeyboardInterrupt`. A best model whose dev predictions are one class, or whose
    accuracy is the majority class's, is reported with one warning line.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ConfigError
        A setting out of range (checked before the output folder is touched), or, on resume,
        settings that differ from the checkpoint's (each one named).
    FolderInUseError
        Another run holds ``output_dir`` (rank 0 holds it for the run).
    DataFormatError
        No training example.
    """
    comm = comm or Comm()
    config = with_output_dir(config)
    config.validate(comm.size)
    config = resolve_pretrained(config, comm)
    with hold_run_folder(config.output_dir, comm):
        return _finetune(config, comm, train, dev, tokenizer, show_progress, clock, budget)


def resolve_pretrained(config: FinetuneConfig, comm: Comm) -> FinetuneConfig:
    """``config`` with ``model`` as a folder (``minilm`` built, a Hugging Face folder imported
    once; the resolved folder is logged and recorded in checkpoints)."""
    # pylint: disable=import-outside-toplevel
    from ..pretrain.default_teacher import resolve_model_dir
    folder = resolve_model_dir(config.model, comm=comm, what='model')
    return config if folder == config.model else dataclasses.replace(config, model=folder)


def warn_if_majority(spec, examples: Sequence[Example], scores: np.ndarray) -> bool:
    """Warn (one line) when a classifier's dev predictions are one class, or no more accurate
    than always answering the majority class: the run ended where it started.

    Returns
    -------
    bool
        Whether it warned (never for regression tasks or unlabelled examples).
    """
    if spec.is_regression or spec.casting == 'record' or not len(examples) \
            or any(ex.label is None for ex in examples):
        return False  # ReCoRD: open answers, no majority class
    # Per question, as the task's metric counts (COPA: 100 questions, not 200 pairs).
    answers = aggregate(spec, examples, scores)
    accuracy, majority, distinct = majority_baseline(answers.predictions, answers.labels)
    if distinct > 1 and accuracy > majority + 0.005:
        return False
    log.warning('dev accuracy %.4f over %d %s with %d distinct prediction(s); the most '
                'frequent answer alone scores %.4f: the model has not learnt the task. Train '
                'longer (more --epochs or --max_minutes), lower --weight_decay (the released '
                '110 shrinks every weight by lr x 110 a step) or start from a better '
                'pretrained --model', accuracy, len(answers.predictions),
                'questions' if spec.casting in ('copa', 'race') else 'examples', distinct,
                majority)
    return True


def _finetune(config: FinetuneConfig, comm: Comm, train: Optional[Sequence[Example]],
              dev: Optional[Sequence[Example]], tokenizer, show_progress: bool,
              clock: Optional[Callable[[], float]], budget: Optional[RunBudget]
              ) -> FinetuneResult:
    """:func:`finetune` once the settings are checked and the output folder is held."""
    spec = get_task(config.task)
    tokenizer = tokenizer or load_tokenizer(config.model)
    train = list(train) if train is not None else load_split(config, 'train')
    if not train:
        raise DataFormatError(f'no {spec.name} training example: nothing to fine-tune on',
                              os.path.join(config.data_dir, spec.files.get('train', '')))
    dev = list(dev) if dev is not None else load_split(config, 'dev')
    if not dev:  # found now, not after a whole training epoch
        raise DataFormatError(f'no {spec.name} dev example: nothing to evaluate on',
                              os.path.join(config.data_dir, spec.files.get('dev', '')))
    train_enc = encode_examples(tokenizer, train, config.max_length)
    dev_enc = encode_examples(tokenizer, dev, config.max_length)
    labels = train_labels(train)
    pad_id = tokenizer.pad_id

    model = build_classifier(config.model, config.head_config(), comm.ctx, seed=config.seed)
    announce(log)  # one line: what the CPU runs (float32 without bfloat16 kernels)
    comm.broadcast_parameters(model.collect_params())
    set_compute_dtype(model, config.dtype)
    model.hybridize(static_alloc=True)
    params = [p for p in model.collect_params().values() if p.grad_req != 'null']
    trainer = build_trainer(model, config, comm)
    loss_fn = task_loss(spec)
    lengths = [len(ids) for ids, _ in train_enc]
    steps_per_epoch = sum(len(b) >= comm.size for b, _ in epoch_batches(
        lengths, config.batch_size, config.seed, 0, config.batching))
    total_steps = steps_per_epoch * config.epochs
    best_folder = os.path.join(config.output_dir, BEST)
    checkpoints = CheckpointManager(os.path.join(config.output_dir, 'checkpoints'), comm, keep=1)
    metrics_log = MetricsLog(os.path.join(config.output_dir, 'metrics.jsonl'), comm)

    state: Dict[str, Any] = {'epoch': -1, 'score': -math.inf, 'best_epoch': -1, 'metrics': {},
                             'bad_epochs': 0, 'history': [], 'finished': False, 'steps': 0}
    latest = checkpoints.latest()
    if latest:
        _check_same_run(latest, config)
        state = checkpoints.load(latest, model, trainer)
        log.info('resumed from %s (epoch %d done)', latest, state['epoch'])
    best_scores: Optional[np.ndarray] = None
    if comm.is_root:
        log.info('%s: %d train / %d dev examples, %d steps (%d epochs)%s, %d worker(s)',
                 spec.name, len(train), len(dev), total_steps, config.epochs,
                 f' at most, {config.max_minutes:g} minutes' if config.max_minutes else '',
                 comm.size)
    step = state['steps']
    # The budget counts the training loop's time, over resumes too; the schedule follows it
    # only when it is this run's own (--max_minutes), not a caller's (Agora's).
    own = RunBudget(config.max_minutes, state.get('train_seconds', 0.0), clock, comm)
    timed = own if config.max_minutes > 0 else None
    budget = budget or own
    skip = state.get('epoch_batches', 0)  # batches of the next epoch done before a Ctrl-C
    bar = StepBar(total_steps, step, timed, comm, f'{spec.name} fine-tuning',
                  disable=not show_progress)
    with budget:  # Ctrl-C now ends the current step first (bort.stopping)
        for epoch in range(state['epoch'] + 1, config.epochs):
            if state['finished']:
                break
            tic = time.time()
            batches = epoch_batches(lengths, config.batch_size, config.seed, epoch,
                                    config.batching)
            step, train_loss, done, stopped = _train_epoch(
                model, trainer, params, loss_fn, train_enc, labels, pad_id, batches[skip:],
                config, comm, step, total_steps, bar, budget, timed)
            done += skip
            if stopped == INTERRUPTED:
                state.update(steps=step, epoch_batches=done, train_seconds=own.elapsed())
                checkpoints.save(step, model, trainer,
                                 settings_record(dataclasses.asdict(config), PATH_FIELDS), state)
                bar.close()
                raise KeyboardInterrupt(f'interrupted at step {step}: checkpoint written; run '
                                        f'the same command again to continue')
            skip = 0
            metrics, scores = evaluate(spec, model, dev, dev_enc, pad_id, config.eval_batch_size,
                                       comm)
            score = metrics[primary_metric(spec)]
            if not math.isfinite(score):  # e.g. the Pearson correlation of constant predictions
                score = -math.inf
            record = {'event': 'epoch', 'epoch': epoch, 'step': step, 'train_loss': train_loss,
                      'seconds': round(time.time() - tic, 3), **metrics}
            if stopped:
                record['stopped'] = stopped
            metrics_log.write(record)
            state['history'].append(record)
            if score > state['score'] or state['best_epoch'] < 0:
                state.update(score=score, best_epoch=epoch, metrics=metrics, bad_epochs=0)
                best_scores = scores
                if comm.is_root:
                    save_classifier(model, best_folder, tokenizer)
            else:
                state['bad_epochs'] += 1
            state.update(epoch=epoch, steps=step, epoch_batches=0, train_seconds=own.elapsed(),
                         stopped=stopped)
            state['finished'] = (epoch + 1 == config.epochs or stopped == OUT_OF_TIME or
                                 0 < config.early_stop <= state['bad_epochs'])
            if stopped == OUT_OF_TIME and comm.is_root:
                log.info('time budget reached at step %d (epoch %d, %d of %d batches)', step,
                         epoch, done, len(batches))
            if comm.is_root:
                log.info('epoch %d: loss %.4f, dev %s %.4f (best %.4f at epoch %d)', epoch,
                         train_loss, primary_metric(spec), score, state['score'],
                         state['best_epoch'])
            checkpoints.save(step, model, trainer,
                             settings_record(dataclasses.asdict(config), PATH_FIELDS), state)
    bar.close()
    comm.barrier()
    if best_scores is None:  # resumed after the best epoch: score the saved best model again
        best = load_classifier(best_folder, comm.ctx)
        best_scores = predict_scores(best, dev_enc, pad_id, config.eval_batch_size, comm)
    if comm.is_root:
        warn_if_majority(spec, dev, best_scores)
        write_json_atomic(os.path.join(config.output_dir, 'dev_metrics.json'),
                          {'task': spec.name, 'metrics': state['metrics'],
                           'epoch': state['best_epoch'], 'steps': state['steps'],
                           'train_examples': len(train), 'dev_examples': len(dev),
                           'stopped': state.get('stopped')})
    return FinetuneResult(metrics=state['metrics'], score=state['score'],
                          epoch=state['best_epoch'], dev_scores=best_scores, folder=best_folder,
                          steps=state['steps'], history=state['history'], model=model,
                          stopped=state.get('stopped'))


def remove_checkpoints(output_dir: str, comm: Optional[Comm] = None) -> None:
    """Delete a finished run's resume checkpoints, keeping ``best/`` and the logs."""
    comm = comm or Comm()
    comm.barrier()
    if comm.is_root:
        shutil.rmtree(os.path.join(output_dir, 'checkpoints'), ignore_errors=True)
    comm.barrier()
