"""Agora on the toy task: Θ shrinks and the loop ends, teacher labels (not dev gold), the teacher
check, resume after a kill, CHS mode, replay, and the pruning rules against brute force."""
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import run_finetune
import toy_glue
from bort.finetune import agora
from bort.finetune.agora import run_agora, theta_grid
from bort.finetune.labeller import Labeller, LabellerError
from bort.finetune.pruning import prune_worst_one, prune_worst_ties
from bort.finetune.config import AgoraConfig
from bort.finetune.classifier import HeadConfig, build_classifier, save_classifier
from bort.finetune.loop import finetune
from bort.log import MetricsLog
from bort.finetune.tasks import Example

FLIPPED = tuple(range(0, 32, 4))  # 8 of the 32 dev rows carry the wrong gold label


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    """A teacher fine-tuned on clean toy data: it follows the rule, whatever dev gold says."""
    root = tmp_path_factory.mktemp('teacher')
    result = finetune(toy_glue.finetune_config(root, epochs=5, output_dir=str(root / 'run')),
                      show_progress=False)
    assert result.score == 1.0
    return result.folder


def _config(tmp_path, name, **changes):
    """Agora's base config on toy data whose dev set has :data:`FLIPPED` gold labels."""
    data = tmp_path / 'noisy'
    if not data.exists():
        toy_glue.write_rte(str(data), flip_dev=FLIPPED)
    values = dict(data_dir=str(data), epochs=2, output_dir=str(tmp_path / name))
    values.update(changes)
    return toy_glue.finetune_config(tmp_path, **values)


def _agora(teacher, **changes):
    values = dict(teacher=teacher, seeds=[0, 1], lrs=[1e-2, 1e-5], weight_decays=[0.0],
                  warmup_ratios=[0.1], batch_sizes=[8], transform='swap')
    values.update(changes)
    return AgoraConfig(**values)


def test_released_grid():
    grid = theta_grid(AgoraConfig())
    assert len(grid) == 5 * 3 * 4 * 4 * 2
    assert {t['lr'] for t in grid} == {1e-4, 1e-5, 9e-6}
    assert {t['weight_decay'] for t in grid} == {0, 10, 100, 350}
    assert {t['warmup_ratio'] for t in grid} == {0.35, 0.40, 0.45, 0.50}
    assert {t['batch_size'] for t in grid} == {8, 16} and {t['seed'] for t in grid} == set(range(5))
    assert len({json.dumps(t, sort_keys=True) for t in grid}) == len(grid)
    chs = {'seed': 3, 'lr': 1e-5, 'weight_decay': 100, 'warmup_ratio': 0.45, 'batch_size': 8}
    assert theta_grid(AgoraConfig(chs=json.dumps(chs))) == [chs]
    with pytest.raises(ValueError, match='CHS'):
        theta_grid(AgoraConfig(chs='{"lr": 1e-5}'))


def test_pruning_rules_against_brute_force():
    rng = np.random.RandomState(0)
    for _ in range(200):
        scores = rng.choice([0.5, 0.6, 0.7, 0.8], size=rng.randint(1, 8)).tolist()
        thetas = [{'id': i} for i in range(len(scores))]
        by_score = sorted(range(len(scores)), key=lambda i: scores[i])
        run = list(itertools.takewhile(lambda i: scores[i] == scores[by_score[0]], by_score))
        assert prune_worst_ties(thetas, scores) == [t for i, t in enumerate(thetas)
                                                    if i not in run]
        kept = prune_worst_one(thetas, scores)
        assert len(kept) == len(thetas) - 1
        assert [t['id'] for t in kept if t['id'] in run] == sorted(run)[:-1]


def test_theta_shrinks_every_iteration_and_teacher_labels_the_points(teacher, tmp_path):
    base = _config(tmp_path, 'agora')
    result = run_agora(base, _agora(teacher))
    records = MetricsLog(os.path.join(base.output_dir, 'metrics.jsonl')).read()
    sizes = [r['theta_size'] for r in records]
    assert sizes[0] == 4 and len(sizes) >= 2 and all(a > b for a, b in zip(sizes, sizes[1:]))
    assert [r['iteration'] for r in records] == list(range(len(records))) == \
        list(range(result.iterations))
    assert all(r['points_added'] == r['mistakes'] for r in records)  # copies=1
    with open(os.path.join(base.output_dir, agora.STATE_FILE)) as f:
        state = json.load(f)
    assert state['thetas'] == [] and result.chs == records[-1]['best_theta']
    with open(os.path.join(base.output_dir, 'chs.json')) as f:
        assert json.load(f)['chs'] == result.chs
    assert os.path.isfile(os.path.join(result.folder, 'model.params'))
    assert result.score == max(r['dev_score'] for r in records)
    # The added points carry the teacher's labels, not the dev gold labels of their sources.
    points = [Example(**p) for p in state['added']]
    assert len(points) == result.points_added == sum(r['points_added'] for r in records) > 0
    relabelled = Labeller(teacher).label([dataclasses.replace(p, label=None) for p in points])
    assert [p.label for p in points] == [p.label for p in relabelled]
    dev = {ex.guid: ex for ex in _dev(base)}
    sources = [dev[p.guid.split(':', 1)[1].split('+')[0]] for p in points]
    from_flipped = [(p, s) for p, s in zip(points, sources) if int(s.idx) in FLIPPED]
    assert from_flipped, 'the student should miss some of the flipped dev rows'
    disagree = [p for p, s in from_flipped if p.label != s.label]
    assert len(disagree) >= len(from_flipped) / 2  # swapping words keeps the rule's answer
    changed = [(p.text_a, p.text_b) != (s.text_a, s.text_b) for p, s in zip(points, sources)]
    assert sum(changed) > len(points) / 2  # (a swap of two equal words changes nothing)


def _dev(base):
    from bort.finetune.readers import read_examples
    return read_examples('RTE', base.data_dir, 'dev')


def test_teacher_must_qualify(teacher, tmp_path):
    wrong = tmp_path / 'wrong'
    toy_glue.write_rte(str(wrong), flip_dev=range(32))  # the teacher is always "wrong" here
    base = _config(tmp_path, 'weak', data_dir=str(wrong))
    with pytest.raises(LabellerError, match=r'dev accuracy 0\.0+ on RTE.*above 0\.6667'):
        run_agora(base, _agora(teacher))
    other = save_classifier(build_classifier(base.model, HeadConfig.resolve('SST-2')),
                            str(tmp_path / 'sst2'), toy_glue.tokenizer())
    with pytest.raises(LabellerError, match='SST-2'):
        run_agora(base, _agora(other))
    with pytest.raises(LabellerError, match='above 0.9990'):  # a stricter threshold, as a flag
        run_finetune.main(['--task', 'RTE', '--data_dir', base.data_dir, '--model', base.model,
                           '--output_dir', str(tmp_path / 'strict'), '--agora', '--teacher',
                           teacher, '--min_teacher_accuracy', '0.999'])


def test_resume_after_a_kill(teacher, tmp_path, monkeypatch):
    straight = run_agora(_config(tmp_path, 'straight'), _agora(teacher))
    calls = []
    real = agora.finetune

    def dies_on_third_student(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(agora, 'finetune', dies_on_third_student)
    base = _config(tmp_path, 'killed')
    with pytest.raises(Killed):
        run_agora(base, _agora(teacher))
    calls[:] = [None] * 100  # no second kill
    resumed = run_agora(base, _agora(teacher))
    # The two students finished before the kill are not trained again.
    assert len(calls) - 100 == sum(r['theta_size'] for r in straight.history) - 2
    keys = ('theta_size', 'best_theta', 'dev_score', 'points_added')
    assert [{k: r[k] for k in keys} for r in resumed.history] == \
        [{k: r[k] for k in keys} for r in straight.history]
    assert resumed.chs == straight.chs and resumed.examples_seen == straight.examples_seen


def test_chs_mode_and_replay(teacher, tmp_path):
    chs = {'seed': 0, 'lr': 1e-3, 'weight_decay': 0.0, 'warmup_ratio': 0.1, 'batch_size': 8}
    result = run_agora(_config(tmp_path, 'chs'), _agora(teacher, chs=json.dumps(chs),
                                                         chs_iterations=2))
    assert [r['theta_size'] for r in result.history] == [1, 1]
    assert result.chs == chs and result.iterations == 2
    replayed = run_agora(_config(tmp_path, 'replay'),
                         _agora(teacher, seeds=[0], prune='worst_one', replay=1))
    assert [r['theta_size'] for r in replayed.history] == [2, 1, 1]
    assert [r['replay'] for r in replayed.history] == [False, False, True]


def test_mlm_transform_in_the_loop(teacher, tmp_path):
    chs = {'seed': 0, 'lr': 1e-3, 'weight_decay': 0.0, 'warmup_ratio': 0.1, 'batch_size': 8}
    base = _config(tmp_path, 'mlm')
    result = run_agora(base, _agora(teacher, chs=json.dumps(chs), chs_iterations=1,
                                    transform='mlm', copies=2))
    assert result.points_added == 2 * result.history[0]['mistakes'] > 0


@pytest.mark.horovod
@pytest.mark.skipif(toy_glue.horovodrun() is None, reason='horovodrun is not installed')
def test_two_workers_run_the_same_agora(teacher, tmp_path):
    """run_finetune.py --agora under horovodrun: collectives line up and the run matches one
    process (same global batch, so the same students, mistakes and points)."""
    base = _config(tmp_path, 'hvd')
    flags = dict(vars(base), agora=True, teacher=teacher, seeds=[0], lrs=[1e-2, 1e-5],
                 weight_decays=[0.0], warmup_ratios=[0.1], batch_sizes=[8], transform='swap')
    (tmp_path / 'agora.json').write_text(json.dumps(flags))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [toy_glue.horovodrun(), '-np', '2', '-H', 'localhost:2', '--gloo', sys.executable,
         os.path.join(repo, 'run_finetune.py'), '--config', str(tmp_path / 'agora.json')],
        env=dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS='1'), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = MetricsLog(os.path.join(base.output_dir, 'metrics.jsonl')).read()
    single = run_agora(_config(tmp_path, 'single'), _agora(teacher, seeds=[0]))
    keys = ('theta_size', 'best_theta', 'dev_score', 'points_added')
    assert [{k: r[k] for k in keys} for r in records] == \
        [{k: r[k] for k in keys} for r in single.history]
    with open(os.path.join(base.output_dir, 'chs.json')) as f:
        assert json.load(f)['chs'] == single.chs


def test_a_damaged_state_file_is_named(teacher, tmp_path):
    from bort.errors import UserError
    base = _config(tmp_path, 'damaged')
    os.makedirs(base.output_dir)
    path = os.path.join(base.output_dir, agora.STATE_FILE)
    with open(path, 'w') as f:
        f.write('{"iteration": 1, "thet')
    with pytest.raises(UserError, match=re.escape(path) + r':1: not a valid Agora state file'):
        run_agora(base, _agora(teacher))
