"""Pretraining Bort by knowledge distillation (SPEC section 5), one function: :func:`pretrain`.

Objective, per masked token: ``mlm_weight · MLM cross-entropy + kd_weight · T² · soft
cross-entropy(teacher, student)`` (:func:`bort.pretrain.losses.kd_loss`); ``kd_weight = 0`` is the
self-supervised baseline and needs no teacher. Masking is dynamic (re-drawn every epoch) over
shards written by :mod:`bort.pretrain.prepare`; batches come from :mod:`bort.pretrain.stream`.

The project's readings, visible as config fields:

- The loss of an optimizer step is the mean over every masked token of the *global* batch (all
  workers, all accumulated micro-batches), so N workers with batch B train exactly like one worker
  with batch N·B and the same ``data_parts`` (equal up to float rounding).
- The student's vocabulary size comes from the data (``--arch`` gives the shape).
- On a non-finite loss or gradient (float32) the run stops with :class:`NonFiniteLossError`
  before updating; the last checkpoint stays the last good one. With float16 (GPU only), an
  overflowing gradient halves the loss scale and skips the update instead.
- Resume is exact on CPU: MXNet's generator is reseeded from ``(seed, step, rank)`` each step,
  the data stream restarts from the saved positions, and the optimizer state is restored.
- Mixed precision on the GPU (``dtype float16``): float16 weights with float32 master copies in
  the optimizer, the loss in float32, dynamic loss scaling (the CPU tests cannot exercise it).
  On CPUs with bfloat16 kernels (``dtype bfloat16``): float32 weights, student's and teacher's
  dense layers multiplied in bfloat16 (:func:`bort.layers.set_compute_dtype`), no loss
  scaling (bfloat16 has float32's range).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import mxnet as mx
import numpy as np

from ..arch import ArchitectureError, get_arch, load_arch
from ..extraction import extract_student
from ..checkpoint import CheckpointManager, check_resume, settings_record, step_seed
from .losses import kd_loss, masked_accuracy
from ..distributed import Comm
from .teacher import Teacher, VocabularyMismatchError, check_vocab_size, mlm_logits
from ..hardware import announce
from ..layers import set_compute_dtype
from ..log import MetricsLog
from ..model import PARAMS_FILE, BortModel, build_model, load_params, output_bias, save_model
from ..optim import learning_rate, make_trainer, optimizer_step, zero_grads
from ..runlock import building_folder, hold_run_folder, replace_folder
from ..stopping import INTERRUPTED, OUT_OF_TIME, RunBudget, StepBar, schedule_position
from .shards import check_shards, read_meta, shard_unigram, vocab_fingerprint
from .config import PATH_FIELDS, RESUME_FREE_FIELDS, PretrainConfig
from .evaluate import (TeacherCache, evaluate, most_frequent_rate, params_digest, plot_curves,
                       warn_if_constant, window_record)
from .masking import masking_for
from .stream import BatchStream, MLMBatch, fixed_batches, list_shards

__all__ = ['pretrain', 'pretrain_step', 'accumulate_gradients', 'NonFiniteLossError', 'evaluate']

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became inf/NaN; training stopped before updating."""


def _data_settings(config: PretrainConfig) -> Dict:
    """Vocabulary and special ids of the data: its meta.json, else the --tokenizer folder."""
    folder = config.data if os.path.isdir(config.data) else os.path.dirname(config.data)
    if os.path.isfile(os.path.join(folder, 'meta.json')):
        meta = read_meta(folder)
        meta['tokenizer'] = os.path.join(folder, meta['tokenizer'])
        return meta
    if not config.tokenizer:
        raise FileNotFoundError(f'{folder} has no meta.json: pass --tokenizer (the folder of the '
                                f'tokenizer the shards were made with)')
    from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
    tok = load_tokenizer(config.tokenizer)
    return dict(vocab_size=tok.vocab_size, cls_id=tok.cls_id, sep_id=tok.sep_id,
                pad_id=tok.pad_id, mask_id=tok.mask_id, vocab_sha1=vocab_fingerprint(tok),
                tokenizer=config.tokenizer)


def _build(config: PretrainConfig, meta: Dict, comm: Comm):
    """Student (vocabulary from the data) and teacher, both checked against the data."""
    arch = load_arch(config.init_from) if config.init_from else get_arch(config.arch)
    if config.init_from and arch.vocab_size != meta['vocab_size']:
        raise VocabularyMismatchError(f'{config.init_from} has {arch.vocab_size} tokens but the '
                                      f'data was tokenized with {meta["vocab_size"]}')
    if arch.vocab_size != meta['vocab_size']:
        log.info('student vocabulary set to the data\'s: %d tokens (the arch said %d)',
                 meta['vocab_size'], arch.vocab_size)
        arch = arch.replace(vocab_size=meta['vocab_size'])
    longest = meta.get('config', {}).get('max_seq_length', 0)
    if longest > arch.max_length:
        raise ArchitectureError(f'the data has sequences of up to {longest} tokens but the '
                                f'student has {arch.max_length} positions (max_length)')
    teacher = None
    if config.kd_weight > 0 or config.init == 'teacher':
        teacher = Teacher.load(config.teacher, meta['vocab_size'], meta.get('vocab_sha1'),
                               ctx=comm.ctx, hybridize=config.hybridize)
    mx.random.seed(config.seed)
    if config.init == 'teacher':
        # Sliced before the teacher is ever cast: float32 weights.
        student = extract_student(teacher.model, arch, config.extract_layers,
                                  config.extract_units, ctx=comm.ctx)
    else:
        student = build_model(arch, use_decoder=True, ctx=comm.ctx)
    if config.init_from:
        # Strict: the folder must have an MLM head and fit the architecture exactly.
        load_params(student, os.path.join(config.init_from, PARAMS_FILE), ctx=comm.ctx)
        log.info('student initialised from %s (%s)', config.init_from, arch.label)
    elif config.decoder_bias == 'unigram' and config.init == 'scratch':
        log_q = shard_unigram(list_shards(config.data), meta['vocab_size'],
                              [meta['cls_id'], meta['sep_id'], meta['pad_id']])
        output_bias(student).set_data(mx.nd.array(log_q, ctx=comm.ctx))
        log.info('student output bias: log frequencies of the training tokens')
    check_vocab_size('the student', student.arch.vocab_size, meta['vocab_size'], 'meta.json')
    if config.kd_weight == 0:
        teacher = None  # only extracted from
    elif config.dtype == 'float16':
        teacher.model.cast('float16')
    if config.dtype == 'bfloat16':
        for model in [student] + ([teacher.model] if teacher is not None else []):
            set_compute_dtype(model, 'bfloat16')
    if config.kd_weight == 0 and config.teacher and config.init != 'teacher':
        log.info('kd_weight is 0: the teacher %s is not used', config.teacher)
    return student, teacher


def accumulate_gradients(student: BortModel, teacher: Optional[Teacher],
                         micro: Sequence[MLMBatch], config: PretrainConfig, comm: Comm,
                         loss_scale: float = 1.0) -> np.ndarray:
    """Forward and backward over one optimizer step's micro-batches, adding into the gradients.

    Each micro-batch's loss enters with its share of the masked tokens of the global batch (all
    workers, all micro-batches), so that after Horovod's average over workers the gradient is
    that of the mean loss over every masked token: N workers with batch B equal one with N·B,
    and k micro-batches of B equal one batch of k·B. Parameters must have ``grad_req='add'``.

    Parameters
    ----------
    student : BortModel
    teacher : Teacher or None
        None when ``config.kd_weight`` is 0.
    micro : sequence of MLMBatch
        This worker's micro-batches of the step.
    config : PretrainConfig
        Or any object with ``mlm_weight, kd_weight, temperature, released_quirks``.
    comm : Comm
    loss_scale : float
        Multiplies the loss (float16 dynamic loss scaling); 1 otherwise.

    Returns
    -------
    (7,) float64
        This worker's sums: MLM loss, KD loss and total loss (token sums), correct predictions,
        masked tokens, real tokens, seconds spent in the teacher.
    """
    total_masked = float(comm.allreduce_sum(sum(b.num_masked for b in micro)))
    sums = np.zeros(7)
    for batch in micro:
        nd = batch.as_nd(comm.ctx)
        started = time.time()
        t_logits = teacher.logits(nd) if teacher is not None else None
        if t_logits is not None:
            t_logits.wait_to_read()
        sums[6] += time.time() - started
        with mx.autograd.record():
            logits = mlm_logits(student, nd).astype('float32', copy=False)
            total, mlm, kd, hits = kd_loss(mx.nd, logits, t_logits, nd['labels'],
                                           nd['weights'], config.mlm_weight, config.kd_weight,
                                           config.temperature, config.released_quirks,
                                           hits=True)
            share = batch.num_masked * comm.size / max(total_masked, 1.0)
            objective = total * (share * loss_scale)
        objective.backward()
        n = batch.num_masked
        correct, count = masked_accuracy(logits, batch.labels, batch.weights, hits)
        sums[:6] += [mlm.asscalar() * n, kd.asscalar() * n, total.asscalar() * n, correct, count,
                     batch.num_tokens]
    return sums


def pretrain_step(student: BortModel, teacher: Optional[Teacher], micro: Sequence[MLMBatch],
                  config: PretrainConfig, comm: Comm, trainer: mx.gluon.Trainer,
                  params: List[mx.gluon.Parameter], loss_scale: float = 1.0):
    """One optimizer step: accumulate the micro-batches' gradients, clip, update, zero them.

    Parameters
    ----------
    student, teacher, micro, comm, loss_scale
        As :func:`accumulate_gradients`.
    config : PretrainConfig
        Or any object with ``mlm_weight, kd_weight, temperature, released_quirks,
        max_grad_norm``.
    trainer : Trainer
    params : list of Parameter
        The student's trainable parameters, with ``grad_req='add'``.

    Returns
    -------
    norm : float
        The gradient norm before clipping (of the unscaled gradient); not finite means the
        update was skipped (also when the loss is not finite).
    sums : (7,) float64
        :func:`accumulate_gradients`' sums, the first six summed over the workers.
    """
    sums = accumulate_gradients(student, teacher, micro, config, comm, loss_scale)
    sums[:6] = comm.allreduce_sum(sums[:6])  # every worker takes the same decision
    norm = math.nan
    if math.isfinite(sums[2]):
        norm = optimizer_step(trainer, params, config.max_grad_norm, scale=loss_scale)
    zero_grads(params)
    return norm, sums


def pretrain(config: PretrainConfig, comm: Optional[Comm] = None, *,
             clock: Optional[Callable[[], float]] = None) -> Dict:
    """Run (or resume) a pretraining run; return its final metrics.

    Writes into ``config.output_dir``: ``step-NNNNNNN/`` checkpoints and ``latest``,
    ``metrics.jsonl`` (training log lines and evaluations), ``model/`` (final weights with the
    tokenizer), ``curves.png``.

    Parameters
    ----------
    config : PretrainConfig
    comm : Comm, optional
        The workers of this run; default: this process alone. Horovod is never started here
        (``run_pretraining.py`` calls :func:`bort.distributed.init_comm`), so library code that
        pretrains a model (e.g. the default teacher's build on rank 0) stays single-process.
    clock : callable, optional
        ``clock() -> seconds`` for ``config.max_minutes`` (default :func:`time.monotonic`;
        tests pass a fake one).

    ``config.teacher`` and ``config.init_from`` are model folders (``run_pretraining.py``
    resolves ``minilm`` and Hugging Face folders first, with
    :func:`bort.pretrain.default_teacher.resolve_model_dir`: the default teacher is built by
    this very function). With ``config.max_minutes`` the run ends at the first step past the
    budget with a checkpoint, an evaluation and the final model (``stopped`` in the result);
    Ctrl-C ends it after the current step with a resumable checkpoint, then raises
    :class:`KeyboardInterrupt`.

    The settings are validated before the output folder is touched; rank 0 then holds the
    folder (:func:`bort.runlock.hold_folder`) until the run ends, so a second run on it stops
    at once.

    Raises
    ------
    ConfigError
        A setting out of range, or (on resume) settings differing from the checkpoint's.
    FolderInUseError
        Another run holds ``output_dir``.
    NonFiniteLossError
        The loss or gradient became inf/NaN (float32); the last checkpoint is kept.
    VocabularyMismatchError
        Teacher, student and data disagree on the vocabulary.
    FileExistsError
        ``output_dir`` holds checkpoints and ``resume`` is off.
    """
    comm = comm or Comm(ctx=mx.gpu(0) if config.gpu else mx.cpu())
    config.validate()
    with hold_run_folder(config.output_dir, comm):
        return _Run(config, comm, clock).train()


class _Run:
    """The state of one pretraining run: models, optimizer, data stream, checkpoints."""

    def __init__(self, config: PretrainConfig, comm: Comm,
                 clock: Optional[Callable[[], float]] = None):
        config.validate()
        self.config, self.comm = config, comm
        self.meta = _data_settings(config)
        self.student, self.teacher = _build(config, self.meta, comm)
        announce(log)  # one line: what the CPU runs (float32 without bfloat16 kernels)
        comm.broadcast_parameters(self.student.collect_params())
        self.params = [p for p in self.student.collect_params().values()
                       if p.grad_req != 'null']
        fp16 = config.dtype == 'float16'
        if fp16:
            self.student.cast('float16')
        self.trainer = make_trainer(self.student.collect_params(), comm, config.optimizer,
                                    config.lr, config.weight_decay, config.adam_epsilon,
                                    multi_precision=fp16, beta2=config.adam_beta2)
        for p in self.params:
            p.grad_req = 'add'  # gradient accumulation; zeroed after every update
        self.manager = CheckpointManager(config.output_dir, comm,
                                         keep=config.keep_checkpoints or None)
        state = self._resume()
        self.step = state.get('step', 0)
        self.loss_scale = state.get('loss_scale', config.loss_scale if fp16 else 1.0)
        masking = masking_for(self.meta, config.mask_ratio, config.max_predictions)
        train_files = list_shards(config.data)
        check_shards(train_files)  # a damaged shard is named now, not when the stream gets there
        self.stream = BatchStream(train_files, comm.rank, comm.size,
                                  config.batch_size, config.data_parts, masking, config.seed,
                                  state.get('data_positions'), self.meta['pad_id'])
        self.eval_set: List[MLMBatch] = []
        eval_files = _eval_files(config) if comm.is_root else []
        if eval_files:
            check_shards(eval_files)
            self.eval_set = fixed_batches(eval_files, config.batch_size, masking,
                                          config.eval_batches, pad_id=self.meta['pad_id'])
        # The frozen teacher's logits on the fixed held-out set: computed once, not per evaluation.
        self.teacher_cache = TeacherCache(self.teacher) if self.teacher is not None else None
        if config.hybridize:
            self.student.hybridize(static_alloc=True)
        self.metrics = MetricsLog(os.path.join(config.output_dir, 'metrics.jsonl'), comm)
        # The budget counts the training loop's time, over resumes too.
        self.budget = RunBudget(config.max_minutes, state.get('train_seconds', 0.0), clock, comm)

    def _resume(self) -> Dict:
        latest = self.manager.latest()
        if not latest:
            if self.config.resume:
                log.info('nothing to resume in %s: starting afresh', self.config.output_dir)
            return {}
        if not self.config.resume:
            raise FileExistsError(f'{self.config.output_dir} already holds checkpoints (latest '
                                  f'{latest}): pass --resume to continue it, or choose another '
                                  f'output_dir')
        # Settings that change results must be the checkpoint's (paths compared resolved).
        check_resume(latest, dataclasses.asdict(self.config), PATH_FIELDS, RESUME_FREE_FIELDS)
        state = self.manager.load(latest, self.student, self.trainer)
        log.info('resumed from %s at step %d', latest, state['step'])
        return state

    def train(self) -> Dict:
        config, comm = self.config, self.comm
        window = np.zeros(7)  # mlm, kd, total (token sums), correct, count, tokens, teacher s
        tick, last = time.time(), {}
        bar = StepBar(config.total_steps, self.step, self.budget, comm, 'pretrain')
        stopped = None
        with self.budget:  # Ctrl-C now ends the current step first (bort.stopping)
            while self.step < config.total_steps and stopped is None:
                lr, norm, sums = self._optimizer_step()
                self.step += 1
                window += sums
                bar.update(1)
                stopped = self.budget.stop_reason()
                end = stopped is not None or self.step == config.total_steps
                if self.step % config.log_interval == 0 or end:
                    last = window_record(window, time.time() - tick, self.step, lr, norm)
                    self.metrics.write(last)
                    bar.set_postfix(mlm=f'{last["mlm_loss"]:.3f}', acc=f'{last["mlm_acc"]:.3f}')
                    window, tick = np.zeros(7), time.time()
                held_out = self.step % config.eval_interval == 0 or (
                    end and stopped != INTERRUPTED)
                save = self.step % config.checkpoint_interval == 0 or end
                if held_out or save:
                    # Not training: the budget does not count them.
                    with self.budget.paused():
                        if held_out:
                            last.update(self._evaluate())
                        if save:
                            self._checkpoint()
        bar.close()
        if stopped == INTERRUPTED:
            raise KeyboardInterrupt(f'interrupted at step {self.step}: checkpoint written; '
                                    f'continue with --resume')
        if stopped == OUT_OF_TIME:
            log.info('time budget of %g minutes reached at step %d of at most %d',
                     config.max_minutes, self.step, config.total_steps)
        return self._finish(dict(last, stopped=stopped) if stopped else last)

    def _optimizer_step(self):
        """One update: reseed, set the rate, accumulate, check, clip and apply."""
        config, comm, step = self.config, self.comm, self.step
        mx.random.seed(step_seed(config.seed, step, comm.rank))  # dropout, reproducibly
        lr = learning_rate(*schedule_position(step, config.total_steps, self.budget), config.lr,
                           config.warmup_ratio, config.schedule)
        self.trainer.set_learning_rate(lr)
        micro = [next(self.stream) for _ in range(config.accumulate)]
        norm, sums = pretrain_step(self.student, self.teacher, micro, config, comm, self.trainer,
                                   self.params, self.loss_scale)
        if not math.isfinite(sums[2]):
            raise NonFiniteLossError(
                f'non-finite loss at step {step + 1} (mlm sum {sums[0]}, kd sum {sums[1]}): '
                f'stopped before updating; the last good checkpoint is '
                f'{self.manager.latest() or "none (no checkpoint written yet)"}')
        if not math.isfinite(norm):
            if config.dtype != 'float16':
                raise NonFiniteLossError(
                    f'non-finite gradient norm at step {step + 1}: stopped before updating; '
                    f'the last good checkpoint is {self.manager.latest() or "none"}')
            self.loss_scale /= 2
            log.warning('float16 overflow at step %d: update skipped, loss scale -> %g',
                        step + 1, self.loss_scale)
        elif config.dtype == 'float16' and (step + 1) % 2000 == 0:
            self.loss_scale *= 2
        return lr, norm, sums

    def _evaluate(self) -> Dict:
        if not (self.comm.is_root and self.eval_set):
            return {}
        record = evaluate(self.student, self.eval_set, self.comm.ctx,
                          temperature=self.config.temperature, cache=self.teacher_cache)
        self.metrics.write(dict(record, step=self.step))
        log.info('step %d: held-out MLM accuracy %.4f, loss %.4f', self.step,
                 record['eval_mlm_acc'], record['eval_mlm_loss'])
        return record

    def _checkpoint(self) -> None:
        positions = {}
        for part in self.comm.allgather_object(self.stream.positions):
            positions.update(part)
        self.manager.save(self.step, self.student, self.trainer,
                          settings_record(dataclasses.asdict(self.config), PATH_FIELDS),
                          {'data_positions': positions, 'loss_scale': self.loss_scale,
                           'train_seconds': self.budget.elapsed()})

    def _finish(self, last: Dict) -> Dict:
        """Check the workers agree, save the final model, plot; the run's summary."""
        config, comm = self.config, self.comm
        digests = comm.allgather_object(params_digest(self.student))
        if len(set(digests)) > 1:
            log.error('the workers\' weights differ at the end: %s', digests)
        result = dict(last, step=self.step, weights_sha1=digests[0],
                      ranks_in_sync=len(set(digests)) == 1)
        if comm.is_root and self.eval_set and 'eval_mlm_acc' in result:
            # A run that ends where it started predicts the most frequent token everywhere.
            result['eval_most_frequent_rate'] = most_frequent_rate(self.eval_set)
            warn_if_constant(result['eval_mlm_acc'], result['eval_most_frequent_rate'])
        if comm.is_root:
            # Built aside and swapped in whole: a failure keeps the previous model/ intact.
            folder = os.path.join(config.output_dir, 'model')
            new = building_folder(folder)
            save_model(self.student, new)
            if os.path.isdir(self.meta.get('tokenizer', '')):
                from ..tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel
                load_tokenizer(self.meta['tokenizer']).save(new)
            replace_folder(new, folder)
            self.metrics.write(dict(result, final=True))
            if config.plot:
                result['plot'] = plot_curves(self.metrics.path,
                                             os.path.join(config.output_dir, 'curves.png'))
        return result


def _eval_files(config: PretrainConfig) -> List[str]:
    if config.eval_data:
        return list_shards(config.eval_data, 'eval')
    if os.path.isdir(config.data):
        try:
            return list_shards(config.data, 'eval')
        except ValueError:
            log.warning('no held-out shards in %s: no evaluation', config.data)
    return []
