"""Agora (de Wynter, 2020): fine-tuning that grows the training set from the student's mistakes.

Inputs, as SPEC section 6 reads the method: the untrained student (a pretrained encoder and a
fresh head: Timaeus), a teacher fine-tuned on the task (Socrates, any architecture the project
loads) whose dev accuracy must exceed 2/3, the train and dev sets, a set Θ of hyperparameter
sets and a transformation function (:mod:`bort.finetune.transforms`). Each iteration:

1. fine-tune one student per θ in Θ (:func:`bort.finetune.finetune`, ``epochs`` each: the
   budget) on the training set so far, and score it on dev;
2. take the best student (ties: the first θ in Θ's order) and its dev mistakes;
3. transform the mistakes into new points, label them with the teacher (never with the dev
   gold labels) and add them to the training set;
4. prune Θ with a pluggable rule (:data:`bort.finetune.pruning.PRUNE_RULES`); the default, ``worst_ties``, is the
   project's reading of "remove the longest common sequence rooted at the first element":
   sort Θ by score ascending and remove the worst θ and every θ tied with it;
5. repeat until Θ is empty.

It returns the best student over all iterations and the convergent hyperparameter set (CHS):
the best θ of the last iteration. Options: ``replay`` k re-runs the last k iterations once Θ is
empty (Θ is restored to what it was k iterations before the end; the data keeps growing);
``chs`` runs ``chs_iterations`` iterations over one known θ, without pruning.

The score Agora compares is accuracy over the (cast) examples, the quantity its guarantees are
about: the argmax class against the label; for regression (STS-B), rounded prediction against
rounded label, as the paper did. The task's own metrics are logged beside it.

Everything lands in ``output_dir``: ``agora_state.json`` (rewritten atomically after every
student and every iteration, so a killed run resumes where it stopped; a student killed
mid-training resumes from its own checkpoint), ``metrics.jsonl`` (one ``agora_iteration``
record per iteration: Θ size, best θ, dev score, points added), ``iter-NNN/theta-KKK/`` (each
iteration keeps only its best student), ``best/`` (the best student) and ``chs.json``.

Under Horovod every worker takes part in each student's training (:mod:`bort.finetune`); the
transformation draws its points on rank 0, which broadcasts them, and the teacher labels them
with every worker; rank 0 writes the files.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..checkpoint import (ResumeMismatchError, resume_differences, settings_record, step_seed,
                          write_json_atomic)
from .labeller import Labeller, agora_accuracy, check_labeller, dev_mistakes
from ..distributed import Comm
from ..errors import UserError, read_json
from ..runlock import hold_run_folder, replace_folder
from ..stopping import INTERRUPTED, RunBudget
from .config import (PATH_FIELDS, RESUME_FREE_FIELDS, AgoraConfig, FinetuneConfig,
                     with_output_dir)
from .loop import BEST, finetune, load_split, remove_checkpoints, resolve_pretrained
from .pruning import PRUNE_RULES, Theta
from ..log import MetricsLog
from .tasks import Example, TaskSpec, get_task
from ..tokenizers import load_tokenizer
from .transforms import make_transform

__all__ = ['AgoraResult', 'theta_grid', 'run_agora', 'THETA_KEYS']

log = logging.getLogger(__name__)

#: The FinetuneConfig fields a hyperparameter set θ sets.
THETA_KEYS = ('seed', 'lr', 'weight_decay', 'warmup_ratio', 'batch_size')
STATE_FILE = 'agora_state.json'


@dataclass
class AgoraResult:
    """What :func:`run_agora` returns: the best student, the CHS and the iteration log."""

    folder: str
    score: float
    metrics: Dict[str, float]
    theta: Theta
    chs: Theta
    iterations: int
    points_added: int
    examples_seen: int
    teacher_accuracy: float
    history: List[Dict[str, Any]]
    stopped: Optional[str] = None


def theta_grid(config: AgoraConfig) -> List[Theta]:
    """Θ from the config: one known set in CHS mode, else the grid."""
    if config.chs:
        theta = json.loads(config.chs) if isinstance(config.chs, str) else dict(config.chs)
        missing = [k for k in THETA_KEYS if k not in theta]
        if missing or set(theta) - set(THETA_KEYS):
            raise ValueError(f'a CHS needs exactly the keys {THETA_KEYS}; got {sorted(theta)}')
        return [theta]
    grid = itertools.product(config.batch_sizes, config.warmup_ratios, config.weight_decays,
                             config.lrs, config.seeds)
    return [dict(zip(('batch_size', 'warmup_ratio', 'weight_decay', 'lr', 'seed'), values))
            for values in grid]


def _key(theta: Theta) -> str:
    return json.dumps({k: theta[k] for k in THETA_KEYS}, sort_keys=True)


def _examples_to_json(examples: Sequence[Example]) -> List[Dict[str, Any]]:
    return [{'guid': ex.guid, 'text_a': ex.text_a, 'text_b': ex.text_b, 'label': ex.label}
            for ex in examples]


def _new_state(thetas: List[Theta], config: AgoraConfig) -> Dict[str, Any]:
    return {'iteration': 0, 'thetas': thetas, 'theta_history': [], 'results': {}, 'added': [],
            'history': [], 'best': None, 'chs': None, 'replays_done': 0, 'examples_seen': 0,
            'chs_left': config.chs_iterations if config.chs else None}


def _copy_folder(src: str, dst: str) -> None:
    tmp = dst.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    replace_folder(tmp, dst)  # the previous best stays until the copy is whole


def _train_students(base: FinetuneConfig, state: Dict[str, Any], spec: TaskSpec,
                    train: List[Example], dev: List[Example], tokenizer, comm: Comm,
                    save: Callable[[], None], budget: RunBudget) -> Optional[str]:
    """Step 1: one student per θ not trained yet in this iteration; results into ``state``.

    Returns
    -------
    str or None
        ``'time budget'`` when Agora's budget ran out (the student being trained then stopped
        early and was scored); None when every θ was trained.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C, after the student's checkpoint (a rerun resumes it).
    """
    iteration_dir = os.path.join(base.output_dir, f"iter-{state['iteration']:03d}")
    for k, theta in enumerate(state['thetas']):
        if _key(theta) in state['results']:
            continue
        stopped = budget.stop_reason()
        if stopped == INTERRUPTED:
            raise KeyboardInterrupt('interrupted between students: state saved; run the same '
                                    'command again to continue')
        if stopped:
            return stopped
        # Agora's budget stops the student; its own schedule stays the epochs'.
        run = dataclasses.replace(base, output_dir=os.path.join(iteration_dir, f'theta-{k:03d}'),
                                  max_minutes=0.0, **theta)
        result = finetune(run, comm, train=train, dev=dev, tokenizer=tokenizer,
                          show_progress=False, budget=budget)
        remove_checkpoints(run.output_dir, comm)
        state['results'][_key(theta)] = {
            'score': agora_accuracy(spec, dev, result.dev_scores), 'metrics': result.metrics,
            'folder': result.folder, 'mistakes': dev_mistakes(spec, dev, result.dev_scores)}
        state['examples_seen'] += result.steps * theta['batch_size']
        if comm.is_root:
            log.info('iteration %d, θ %d/%d %s: dev accuracy %.4f', state['iteration'], k + 1,
                     len(state['thetas']), _key(theta),
                     state['results'][_key(theta)]['score'])
        save()
        if result.stopped:
            return result.stopped
    return None


def _new_points(mistakes: List[Example], seed: int, iteration: int, transform,
                labeller: Labeller, comm: Comm) -> List[Example]:
    """Steps 2-3: the best student's dev mistakes, transformed and labelled by the labeller.

    The draws happen once, on rank 0 (seeded by θ's seed and the iteration, so a resumed run
    draws the same points); the labelling is collective. A point's guid
    ``agora-<iteration>:<source guid>+t<copy>`` keeps it traceable to its source.
    """
    new: List[Example] = []
    if comm.is_root and mistakes:
        new = transform(mistakes, np.random.RandomState(step_seed(seed, iteration)))
    new = labeller.label(comm.broadcast_object(new))
    return [dataclasses.replace(ex, guid=f'agora-{iteration}:{ex.guid}') for ex in new]


def _next_thetas(state: Dict[str, Any], scores: List[float], config: AgoraConfig
                 ) -> List[Theta]:
    """Step 4: prune Θ (or count down the CHS iterations); replay once Θ would be empty."""
    thetas = state['thetas']
    state['theta_history'].append(thetas)
    if state['chs_left'] is not None:
        state['chs_left'] -= 1
        remaining = thetas if state['chs_left'] > 0 else []
    else:
        remaining = PRUNE_RULES[config.prune](thetas, scores)
        if len(remaining) >= len(thetas):
            raise RuntimeError(f'pruning rule {config.prune!r} did not shrink Θ')
    if not remaining and config.replay and not state['replays_done']:
        state['replays_done'] = 1
        remaining = state['theta_history'][-min(config.replay, len(state['theta_history']))]
        log.info('replaying the last %d iteration(s)', config.replay)
    return remaining


def run_agora(base: FinetuneConfig, config: AgoraConfig, comm: Optional[Comm] = None, *,
              clock: Optional[Callable[[], float]] = None) -> AgoraResult:
    """Run Agora (resuming from ``base.output_dir`` when it holds a state file).

    Parameters
    ----------
    base : FinetuneConfig
        Task, data, pretrained student, head, max length, epochs per training (the budget) and
        the output folder; θ overrides its seed, lr, weight decay, warm-up and batch size.
    config : AgoraConfig
    comm : Comm, optional
    clock : callable, optional
        ``clock() -> seconds`` for ``base.max_minutes`` (tests pass a fake one).

    With ``base.max_minutes`` the whole run has that budget: when it runs out, the student
    being trained stops early and is scored, and Agora ends with the best student so far
    (``stopped`` in the result and ``chs.json``). Ctrl-C stops after the current step with
    the student's checkpoint and the saved state; the same command resumes.

    Returns
    -------
    AgoraResult

    Raises
    ------
    ConfigError
        A setting out of range (checked before the output folder is touched), or, on resume,
        settings that differ from the saved state's (each one named).
    FolderInUseError
        Another run holds ``base.output_dir`` (rank 0 holds it for the run).
    """
    comm = comm or Comm()
    base = with_output_dir(base)
    base.validate(comm.size)
    config.validate()
    base = resolve_pretrained(base, comm)
    if config.mlm_model:
        # pylint: disable=import-outside-toplevel
        from ..pretrain.default_teacher import resolve_model_dir
        config = dataclasses.replace(config, mlm_model=resolve_model_dir(
            config.mlm_model, comm=comm, what='mlm_model'))
    with hold_run_folder(base.output_dir, comm):
        return _run_agora(base, config, comm, clock)


def _settings(base: FinetuneConfig, config: AgoraConfig) -> Dict[str, Any]:
    """Every setting of an Agora run (the two configs' field names do not overlap)."""
    return settings_record(dict(dataclasses.asdict(base), **dataclasses.asdict(config)),
                           PATH_FIELDS + ('teacher', 'mlm_model'))


def _check_same_agora(state_path: str, saved: Dict[str, Any], base: FinetuneConfig,
                      config: AgoraConfig) -> None:
    """Refuse to resume an Agora state written under other settings (naming them)."""
    if 'settings' not in saved:  # a state file of an earlier version: nothing to compare
        return
    # θ sets seed, lr, weight decay, warm-up and batch size: the base's values are unused.
    changed = resume_differences(saved['settings'], _settings(base, config),
                                 PATH_FIELDS + ('teacher', 'mlm_model'),
                                 RESUME_FREE_FIELDS + THETA_KEYS + ('resolved_paths',))
    if changed:
        raise ResumeMismatchError(
            f'cannot resume the Agora run in {state_path} with other settings '
            f'({"; ".join(changed)}). Resume with the same settings, or choose another '
            f'output folder')


def _run_agora(base: FinetuneConfig, config: AgoraConfig, comm: Comm,
               clock: Optional[Callable[[], float]]) -> AgoraResult:
    """:func:`run_agora` once the settings are checked and the output folder is held."""
    spec = get_task(base.task)
    if config.prune not in PRUNE_RULES:
        raise KeyError(f'unknown pruning rule {config.prune!r}; known: {sorted(PRUNE_RULES)}')
    tokenizer = load_tokenizer(base.model)
    train, dev = load_split(base, 'train'), load_split(base, 'dev')
    labeller = Labeller(config.teacher, comm, base.eval_batch_size)
    teacher_accuracy = check_labeller(labeller, spec, dev, config.min_teacher_accuracy)
    transform = make_transform(config.transform, fraction=config.transform_fraction,
                               copies=config.copies, mlm_model=config.mlm_model or base.model,
                               temperature=config.mlm_temperature, max_length=base.max_length,
                               ctx=comm.ctx)
    state_path = os.path.join(base.output_dir, STATE_FILE)
    if os.path.exists(state_path):
        state = read_json(state_path, what='Agora state file')
        _check_same_agora(state_path, state, base, config)
        log.info('resuming Agora at iteration %d (%d θ left)', state['iteration'],
                 len(state['thetas']))
    else:
        state = dict(_new_state(theta_grid(config), config), settings=_settings(base, config))
    os.makedirs(base.output_dir, exist_ok=True)
    metrics_log = MetricsLog(os.path.join(base.output_dir, 'metrics.jsonl'), comm)
    budget = RunBudget(base.max_minutes, state.get('train_seconds', 0.0), clock, comm)

    def save() -> None:
        state['train_seconds'] = budget.elapsed()
        if comm.is_root:
            write_json_atomic(state_path, state)

    if comm.is_root:
        log.info('Agora on %s: teacher dev accuracy %.4f, |Θ| = %d, %d train / %d dev',
                 spec.name, teacher_accuracy, len(state['thetas']), len(train), len(dev))
    stopped = None
    with budget:
        stopped = _iterate(base, config, state, spec, train, dev, tokenizer, comm, save,
                           budget, transform, labeller, metrics_log)
    comm.barrier()
    if state['best'] is None:
        raise UserError(f'the time budget ({base.max_minutes:g} minutes) ran out before a '
                        f'student was trained: nothing to report; give a larger --max_minutes')
    best = state['best']
    summary = {'task': spec.name, 'chs': state['chs'], 'best_theta': best['theta'],
               'best_iteration': best['iteration'], 'dev_score': best['score'],
               'dev_metrics': best['metrics'], 'iterations': state['iteration'],
               'points_added': len(state['added']), 'examples_seen': state['examples_seen'],
               'teacher_accuracy': teacher_accuracy, 'stopped': stopped}
    if comm.is_root:
        write_json_atomic(os.path.join(base.output_dir, 'chs.json'), summary)
    return AgoraResult(folder=os.path.join(base.output_dir, BEST), score=best['score'],
                       metrics=best['metrics'], theta=best['theta'], chs=state['chs'],
                       iterations=state['iteration'], points_added=len(state['added']),
                       examples_seen=state['examples_seen'], teacher_accuracy=teacher_accuracy,
                       history=state['history'], stopped=stopped)


def _keep_best(state: Dict[str, Any], theta: Theta, result: Dict[str, Any], base: FinetuneConfig,
               comm: Comm) -> None:
    """Make ``result`` (θ's student of this iteration) Agora's best if it beats the best."""
    if state['best'] is None or result['score'] > state['best']['score']:
        state['best'] = dict(result, theta=theta, iteration=state['iteration'])
        if comm.is_root:
            _copy_folder(result['folder'], os.path.join(base.output_dir, BEST))


def _iterate(base: FinetuneConfig, config: AgoraConfig, state: Dict[str, Any], spec: TaskSpec,
             train: List[Example], dev: List[Example], tokenizer, comm: Comm,
             save: Callable[[], None], budget: RunBudget, transform, labeller: Labeller,
             metrics_log: MetricsLog) -> Optional[str]:
    """Agora's iterations until Θ is empty or the budget runs out (then: ``'time budget'``)."""
    while state['thetas']:
        added = [Example(**record) for record in state['added']]
        stopped = _train_students(base, state, spec, train + added, dev, tokenizer, comm, save,
                                  budget)
        thetas = state['thetas']
        if stopped:  # the best student trained so far in this iteration may be the best
            trained = [t for t in thetas if _key(t) in state['results']]
            if trained:
                top = max(trained, key=lambda t: state['results'][_key(t)]['score'])
                _keep_best(state, top, state['results'][_key(top)], base, comm)
                state['chs'] = state['chs'] or top
            save()
            log.info('Agora stopped at its time budget in iteration %d (%d of %d θ trained)',
                     state['iteration'], len(trained), len(thetas))
            return stopped
        scores = [state['results'][_key(t)]['score'] for t in thetas]
        best_k = int(np.argmax(scores))  # the first of tied best
        best = state['results'][_key(thetas[best_k])]
        new = _new_points([dev[i] for i in best['mistakes']], thetas[best_k]['seed'],
                          state['iteration'], transform, labeller, comm)
        _keep_best(state, thetas[best_k], best, base, comm)
        record = {'event': 'agora_iteration', 'iteration': state['iteration'],
                  'theta_size': len(thetas), 'best_theta': thetas[best_k],
                  'dev_score': best['score'], 'dev_metrics': best['metrics'],
                  'mistakes': len(best['mistakes']), 'points_added': len(new),
                  'train_size': len(train) + len(added) + len(new),
                  'replay': state['replays_done'] > 0, 'examples_seen': state['examples_seen']}
        metrics_log.write(record)
        state['history'].append(record)
        state['added'] += _examples_to_json(new)
        state['chs'] = thetas[best_k]
        remaining = _next_thetas(state, scores, config)
        if comm.is_root:  # keep only this iteration's best student
            for other in state['results'].values():
                if other['folder'] != best['folder']:
                    shutil.rmtree(os.path.dirname(other['folder']), ignore_errors=True)
            log.info('iteration %d: best θ %s, dev accuracy %.4f, %d points added, |Θ| %d → %d',
                     state['iteration'], _key(thetas[best_k]), best['score'], len(new),
                     len(thetas), len(remaining))
        state.update(thetas=remaining, results={}, iteration=state['iteration'] + 1)
        save()
    return None
