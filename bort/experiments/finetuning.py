"""The miniature's fine-tuning stages: the GLUE folders, plain runs and Agora runs.

Every model is fine-tuned with one recipe (:func:`finetune_config`, the fields of
:class:`~bort.experiments.config.MiniatureConfig`); the training rows set aside by
:func:`split_glue` (RTE and SST-2) score every model on data that neither training nor Agora's
dev-driven selection has seen.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence, Union

from ..errors import ConfigError
from .config import AGORA_PREMISE, MiniatureConfig, socrates_stage
from .stages import StageLog

__all__ = ['split_glue', 'finetune_config', 'heldout_metrics', 'dev_size', 'stage_finetune',
           'agora_check', 'stage_agora']


def split_glue(glue_dir: str, tasks: Sequence[str], out: str,
               heldout: Union[int, Dict[str, int]], seed: int) -> Dict[str, str]:
    """GLUE-layout folders for the runs: ``train`` (every task's official files, a task's train
    less its held-out rows) and ``heldout`` (those rows as the task's dev split).

    Parameters
    ----------
    glue_dir : str
        The official files (read, never modified).
    tasks : sequence of str
    out : str
    heldout : dict or int
        Rows set aside per task (an int: RTE's, as before); drawn at random with ``seed``.
    seed : int
    """
    # pylint: disable=import-outside-toplevel
    import numpy as np
    from ..finetune.tasks import get_task
    train_root, held_root = os.path.join(out, 'train'), os.path.join(out, 'heldout')
    rows_out = heldout if isinstance(heldout, dict) else {'RTE': heldout}
    for task in tasks:
        name = os.path.dirname(get_task(task).files['train'])
        src, dst = os.path.join(glue_dir, name), os.path.join(train_root, name)
        if not os.path.isfile(os.path.join(src, 'train.tsv')):
            raise FileNotFoundError(f'{os.path.join(src, "train.tsv")}: --glue_dir must hold '
                                    f'the official {name}/ folder')
        os.makedirs(dst, exist_ok=True)
        for split in ('dev', 'test'):
            if os.path.isfile(os.path.join(src, f'{split}.tsv')):
                shutil.copy(os.path.join(src, f'{split}.tsv'), os.path.join(dst, f'{split}.tsv'))
        with open(os.path.join(src, 'train.tsv'), encoding='utf-8') as f:
            header, *rows = f.read().splitlines()
        held: List[str] = []
        count = rows_out.get(task, 0)
        if count:
            if count >= len(rows):
                flag = '--' + task.lower().replace('-', '') + '_heldout'
                raise ConfigError(f'{flag} {count} leaves no {task} training row '
                                  f'({len(rows)} in all)')
            order = np.random.RandomState(seed).permutation(len(rows))
            keep = set(order[count:].tolist())
            held = [rows[i] for i in sorted(order[:count])]
            rows = [r for i, r in enumerate(rows) if i in keep]
            os.makedirs(os.path.join(held_root, name), exist_ok=True)
            with open(os.path.join(held_root, name, 'dev.tsv'), 'w', encoding='utf-8') as f:
                f.write('\n'.join([header] + held) + '\n')
        with open(os.path.join(dst, 'train.tsv'), 'w', encoding='utf-8') as f:
            f.write('\n'.join([header] + rows) + '\n')
    return {'train': train_root, 'heldout': held_root}


def finetune_config(config: MiniatureConfig, task: str, data_dir: str, model: str,
                    output_dir: str, seed: int):
    """The recipe every model is fine-tuned with, for one task, model and seed."""
    from ..finetune import FinetuneConfig  # pylint: disable=import-outside-toplevel
    return FinetuneConfig(task=task, data_dir=data_dir, model=model, output_dir=output_dir,
                          head='auto', head_dropout=0.1, init=config.ft_init,
                          init_range=config.init_range,
                          max_length=config.max_length, batch_size=config.ft_batch_size,
                          lr=config.ft_lr, weight_decay=config.ft_weight_decay,
                          warmup_ratio=config.ft_warmup, epochs=int(config.epochs), seed=seed,
                          eval_batch_size=64,
                          max_train_examples=int(config.max_train_examples))


def heldout_metrics(task: str, folder: str, glue: Dict[str, str]) -> Optional[Dict[str, float]]:
    """Metrics of a fine-tuned folder on the task's set-aside rows, else None (none set aside).
    """
    # pylint: disable=import-outside-toplevel
    from ..finetune.evaluate import evaluate_folder
    from ..finetune.tasks import get_task
    name = os.path.dirname(get_task(task).files['train'])
    if not os.path.isfile(os.path.join(glue['heldout'], name, 'dev.tsv')):
        return None
    metrics, _ = evaluate_folder(task, folder, glue['heldout'], 'dev', batch_size=64)
    return metrics


def dev_size(task: str, data_dir: str, split: str = 'dev') -> int:
    """The number of examples of ``split`` (the yardstick of an accuracy's sampling error)."""
    from ..finetune.readers import read_examples  # pylint: disable=import-outside-toplevel
    return len(read_examples(task, data_dir, split))


def stage_finetune(config: MiniatureConfig, task: str, model: str, seed: int,
                   glue: Dict[str, str], folder: str) -> Dict:
    """Plain fine-tuning of one model on one task with one seed (resumes per epoch)."""
    # pylint: disable=import-outside-toplevel
    from ..finetune import finetune
    from ..finetune.loop import remove_checkpoints
    run_dir = os.path.join(folder, 'run')
    run = finetune_config(config, task, glue['train'], model, run_dir, seed)
    result = finetune(run, show_progress=config.progress)
    heldout = heldout_metrics(task, result.folder, glue)
    remove_checkpoints(run_dir)  # best/ is kept; the resume state is not needed any more
    return {'task': task, 'seed': seed, 'dev': result.metrics, 'score': result.score,
            'best_epoch': result.epoch, 'steps': result.steps,
            'examples_seen': result.steps * run.batch_size, 'heldout': heldout,
            'folder': result.folder}


def agora_check(config: MiniatureConfig, teacher_accuracy: float) -> Optional[float]:
    """The teacher check Agora runs with on a task whose teacher (Socrates) has
    ``teacher_accuracy`` on dev: ``--agora_min_teacher_accuracy`` when the teacher passes it;
    otherwise 0 with ``--agora_unmet run`` (premise not met, stated in the report), None with
    ``skip`` (Agora does not run on the task)."""
    if teacher_accuracy > config.agora_min_teacher_accuracy:
        return config.agora_min_teacher_accuracy
    return 0.0 if config.agora_unmet == 'run' else None


def agora_skipped(config: MiniatureConfig, stages: StageLog, task: str) -> bool:
    """Whether Agora is left out on ``task``: its teacher's fine-tuning has finished and fails
    the check with ``--agora_unmet skip`` (:func:`agora_check` is None)."""
    socrates = socrates_stage(config, task)
    return (socrates in stages.records
            and agora_check(config, stages.figures(socrates)['dev']['accuracy']) is None)


def stage_agora(config: MiniatureConfig, task: str, model: str, seed: int, labeller: str,
                mlm_model: str, glue: Dict[str, str], folder: str, check: float) -> Dict:
    """Agora on ``task`` for one student and one seed; Θ is the recipe over ``--agora_lrs``;
    ``check`` is the teacher check it runs with (:func:`agora_check`)."""
    # pylint: disable=import-outside-toplevel
    from ..finetune import AgoraConfig, run_agora
    base = finetune_config(config, task, glue['train'], model, os.path.join(folder, 'run'),
                           seed)
    agora = AgoraConfig(teacher=labeller, min_teacher_accuracy=check,
                        seeds=[seed], lrs=list(config.agora_lrs),
                        weight_decays=[config.ft_weight_decay],
                        warmup_ratios=[config.ft_warmup], batch_sizes=[config.ft_batch_size],
                        transform=config.agora_transform, mlm_model=mlm_model)
    result = run_agora(base, agora)
    return {'task': task, 'seed': seed, 'dev': result.metrics, 'score': result.score,
            'check': check, 'premise_met': result.teacher_accuracy > AGORA_PREMISE,
            'heldout': heldout_metrics(task, result.folder, glue), 'iterations': result.iterations,
            'points_added': result.points_added, 'examples_seen': result.examples_seen,
            'chs': result.chs, 'teacher_accuracy': result.teacher_accuracy,
            'history': [{k: r.get(k) for k in ('iteration', 'theta_size', 'dev_score',
                                               'mistakes', 'points_added')}
                        for r in result.history], 'folder': result.folder}
