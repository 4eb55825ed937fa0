"""Plain fine-tuning on a separable toy task: learning, batching, early stopping, resume,
2-worker synchronisation under horovodrun, and the run_finetune.py entry point."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import run_finetune
import toy_glue
from bort.finetune.loop import epoch_batches, finetune
from bort.log import MetricsLog
from bort.model import param_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(Exception):
    """Stands for the process being killed."""


def _weights(model):
    return {name: p.data().asnumpy() for name, p in param_dict(model).items()}


def test_learns_the_toy_task_and_keeps_the_best(tmp_path):
    config = toy_glue.finetune_config(tmp_path, epochs=5)
    result = finetune(config, show_progress=False)
    assert result.score >= 0.9 and result.metrics == {'accuracy': result.score}
    assert [h['epoch'] for h in result.history] == list(range(5))
    assert result.history[-1]['train_loss'] < result.history[0]['train_loss']
    assert result.steps == 5 * 8  # 64 examples, batch 8
    assert result.dev_scores.shape == (32, 2)
    with open(os.path.join(config.output_dir, 'dev_metrics.json')) as f:
        saved = json.load(f)
    assert saved['metrics'] == result.metrics and saved['epoch'] == result.epoch
    records = MetricsLog(os.path.join(config.output_dir, 'metrics.jsonl')).read()
    assert [r['accuracy'] for r in records] == [h['accuracy'] for h in result.history]
    # The best folder reproduces the best epoch's dev score.
    summary = run_finetune.main(['--task', 'RTE', '--data_dir', config.data_dir,
                                 '--finetuned', result.folder,
                                 '--output_dir', str(tmp_path / 'eval')])
    assert summary['metrics'] == result.metrics


def test_regression_task_learns_with_squared_error(tmp_path):
    data = toy_glue.write_stsb(str(tmp_path / 'stsb'))
    result = finetune(toy_glue.finetune_config(tmp_path, task='STS-B', data_dir=data,
                                               epochs=6), show_progress=False)
    assert list(result.metrics) == ['pearson', 'spearman']
    assert result.score > 0.9 and result.dev_scores.shape == (32, 1)


def test_resume_refuses_other_settings(tmp_path):
    from bort.errors import ConfigError
    finetune(toy_glue.finetune_config(tmp_path, epochs=1), show_progress=False)
    with pytest.raises(ConfigError, match=r'--epsilon: 1e-08 -> 1e-05; --lr: 0\.01 -> 0\.002'):
        finetune(toy_glue.finetune_config(tmp_path, epochs=1, lr=2e-3, epsilon=1e-5),
                 show_progress=False)


def test_resume_compares_resolved_paths(tmp_path, monkeypatch):
    """./data/ and data, runs/x and ./runs/x/ are the same folders: the run resumes."""
    toy_glue.finetune_config(tmp_path)  # writes the data and the pretrained model
    monkeypatch.chdir(tmp_path)
    first = finetune(toy_glue.finetune_config(tmp_path, epochs=1, data_dir='data',
                                              output_dir='runs/x'), show_progress=False)
    again = finetune(toy_glue.finetune_config(tmp_path, epochs=1, data_dir='./data/',
                                              output_dir='./runs/x/', eval_batch_size=7),
                     show_progress=False)
    assert again.steps == first.steps and again.metrics == first.metrics


@pytest.mark.parametrize('field,value,flag', [
    ('lr', 0.0, '--lr'), ('lr', -1e-3, '--lr'), ('epsilon', 0.0, '--epsilon'),
    ('weight_decay', -1.0, '--weight_decay'), ('batch_size', -4, '--batch_size'),
    ('epochs', 0, '--epochs'), ('warmup_ratio', 1.5, '--warmup_ratio'),
    ('head_dropout', 1.0, '--head_dropout'), ('eval_batch_size', 0, '--eval_batch_size')])
def test_settings_that_cannot_run_are_refused_before_the_folder_is_made(tmp_path, field, value,
                                                                       flag):
    from bort.errors import ConfigError
    config = toy_glue.finetune_config(tmp_path, output_dir=str(tmp_path / 'never'),
                                      **{field: value})
    with pytest.raises(ConfigError, match=f'^{flag} must be'):
        finetune(config, show_progress=False)
    assert not os.path.exists(str(tmp_path / 'never'))


def test_empty_training_file_is_named(tmp_path):
    from bort.errors import DataFormatError
    config = toy_glue.finetune_config(tmp_path)
    train = os.path.join(config.data_dir, 'RTE', 'train.tsv')
    with open(train) as f:
        header = f.readline()
    with open(train, 'w') as f:
        f.write(header)
    with pytest.raises(DataFormatError, match='train.tsv: no RTE training example'):
        finetune(config, show_progress=False)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    from bort.runlock import FolderInUseError
    holder = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent('''
            import sys, time
            from bort.runlock import hold_folder
            with hold_folder(sys.argv[1], what='the first fine-tuning run'):
                print('held', flush=True)
                time.sleep(60)
        '''), str(tmp_path / 'run')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(FolderInUseError, match='the first fine-tuning run'):
            finetune(toy_glue.finetune_config(tmp_path, epochs=1), show_progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(str(tmp_path / 'run' / 'best'))


def test_epoch_batches_cover_every_example_once():
    lengths = np.random.RandomState(0).randint(3, 90, size=803)
    batches = epoch_batches(lengths, 8, seed=1, epoch=0, batching='bucketed')
    assert len(batches) == int(np.ceil(803 / 8))
    seen = np.concatenate([idx for idx, _ in batches])
    assert sorted(seen.tolist()) == list(range(803))
    assert all(padded >= lengths[idx].max() for idx, padded in batches)
    assert sum(len(idx) < 8 for idx, _ in batches) == 1
    again = epoch_batches(lengths, 8, seed=1, epoch=0, batching='bucketed')
    assert all((a == b).all() for (a, _), (b, _) in zip(batches, again))
    other = epoch_batches(lengths, 8, seed=1, epoch=1, batching='bucketed')
    assert any(len(a) != len(b) or (a != b).any() for (a, _), (b, _) in zip(batches, other))
    # Length bucketing: far less padding than random batches padded to their longest row.
    waste = sum(p * len(idx) - lengths[idx].sum() for idx, p in batches)
    random_batches = np.array_split(np.random.RandomState(2).permutation(803), len(batches))
    random_waste = sum(lengths[idx].max() * len(idx) - lengths[idx].sum()
                       for idx in random_batches)
    assert waste < 0.5 * random_waste


def test_early_stopping(tmp_path):
    # A rate too small to change a prediction (0 is refused): no epoch improves on the first.
    config = toy_glue.finetune_config(tmp_path, lr=1e-12, epochs=6, early_stop=2)
    result = finetune(config, show_progress=False)
    assert len(result.history) == 3  # epoch 0 is the best; 1 and 2 do not improve
    assert result.epoch == 0


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    base = dict(epochs=4, head_dropout=0.3)  # dropout: the masks must be replayed too
    straight = finetune(toy_glue.finetune_config(tmp_path, output_dir=str(tmp_path / 'a'),
                                                 **base), show_progress=False)
    config = toy_glue.finetune_config(tmp_path, output_dir=str(tmp_path / 'b'), **base)
    original = MetricsLog.write

    def killed_at_epoch_2(self, record):
        if record.get('epoch') == 2:
            raise Killed
        original(self, record)

    monkeypatch.setattr(MetricsLog, 'write', killed_at_epoch_2)
    with pytest.raises(Killed):
        finetune(config, show_progress=False)
    monkeypatch.setattr(MetricsLog, 'write', original)
    resumed = finetune(config, show_progress=False)
    assert [h['epoch'] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.steps == straight.steps
    assert [h['accuracy'] for h in resumed.history] == [h['accuracy'] for h in straight.history]
    a, b = _weights(straight.model), _weights(resumed.model)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


DRIVER = textwrap.dedent('''
    import json, sys
    import numpy as np
    from bort.distributed import init_comm
    from bort.finetune import FinetuneConfig, finetune
    from bort.model import param_dict
    comm = init_comm()
    with open(sys.argv[1]) as f:
        config = FinetuneConfig(**json.load(f))
    result = finetune(config, comm, show_progress=False)
    np.savez(f'{sys.argv[2]}/rank{comm.rank}.npz',
             **{k: p.data().asnumpy() for k, p in param_dict(result.model).items()})
    with open(f'{sys.argv[2]}/rank{comm.rank}.json', 'w') as f:
        json.dump({'size': comm.size, 'history': result.history}, f)
''')


@pytest.mark.horovod
@pytest.mark.skipif(toy_glue.horovodrun() is None, reason='horovodrun is not installed')
def test_two_workers_stay_synchronised_and_match_one_process(tmp_path):
    # Clipping at 0.5 is active on most steps: it must see the averaged gradient.
    config = toy_glue.finetune_config(tmp_path, epochs=2, clip_norm=0.5,
                                      output_dir=str(tmp_path / 'hvd'))
    config_path = tmp_path / 'config.json'
    config_path.write_text(json.dumps(vars(config)))
    (tmp_path / 'driver.py').write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run([toy_glue.horovodrun(), '-np', '2', '-H', 'localhost:2', '--gloo',
                           sys.executable, str(tmp_path / 'driver.py'), str(config_path),
                           str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f'rank{r}.npz') for r in range(2)]
    logs = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    assert logs[0]['size'] == 2
    for name in ranks[0].files:  # both workers hold the same weights, exactly
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    single = finetune(toy_glue.finetune_config(tmp_path, epochs=2, clip_norm=0.5,
                                               output_dir=str(tmp_path / 'single')),
                      show_progress=False)
    weights = _weights(single.model)
    for name in ranks[0].files:  # and the weights one process reaches with the same batch
        if 'proj_key.bias' in name:
            # Its gradient is 0 in exact arithmetic (a key bias adds the same score to every
            # key of a query); Adam turns the rounding noise into steps of about the rate, so
            # it differs between any two summation orders, without changing any output.
            continue
        np.testing.assert_allclose(ranks[0][name], weights[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    initial = _weights(finetune(toy_glue.finetune_config(
        tmp_path, epochs=1, lr=1e-12, output_dir=str(tmp_path / 'init')),  # ~ untrained
        show_progress=False).model)
    moved = max(np.abs(weights[n] - initial[n]).max() for n in weights)
    assert moved > 1e-2  # training moved the weights: the match is not trivial
    assert [h['accuracy'] for h in logs[0]['history']] == \
        [h['accuracy'] for h in single.history]


def test_run_finetune_config_file_flags_and_predict(tmp_path):
    config = toy_glue.finetune_config(tmp_path, epochs=3)
    defaults = dict(vars(config), epochs=1, lr=0.5)
    path = tmp_path / 'config.json'
    path.write_text(json.dumps(defaults))
    summary = run_finetune.main(['--config', str(path), '--lr', '1e-3', '--predict'])
    assert summary['steps'] == 8  # epochs from the file
    with open(os.path.join(config.output_dir, 'checkpoints', 'step-0000008', 'config.json')) as f:
        assert json.load(f)['lr'] == 1e-3  # the flag wins over the file
    with open(summary['submission']) as f:
        lines = f.read().splitlines()
    assert lines[0] == 'index\tprediction' and len(lines) == 17
    assert {line.split('\t')[1] for line in lines[1:]} <= set(toy_glue.LABELS)
    assert [int(line.split('\t')[0]) for line in lines[1:]] == list(range(16))
    path.write_text(json.dumps({'task': 'RTE', 'learning_rate': 1.0}))
    with pytest.raises(SystemExit):
        run_finetune.main(['--config', str(path)])


def test_predict_with_finetuned_writes_beside_it_without_output_dir(tmp_path):
    config = toy_glue.finetune_config(tmp_path, epochs=1)
    result = finetune(config, show_progress=False)
    summary = run_finetune.main(['--task', 'RTE', '--data_dir', config.data_dir,
                                 '--finetuned', result.folder, '--predict'])
    # runs/…/best -> the submission and dev_metrics.json go to runs/…, not runs/finetune
    assert os.path.dirname(summary['submission']) == config.output_dir
    assert os.path.isfile(os.path.join(config.output_dir, 'dev_metrics.json'))


@pytest.mark.horovod
@pytest.mark.skipif(toy_glue.horovodrun() is None, reason='horovodrun is not installed')
def test_one_horovod_worker_reproduces_one_process_exactly(tmp_path):
    """horovodrun -np 1 runs the same program as a plain process (fused operators, random
    streams, head dropout on): the same history and bit-identical weights for the same seed."""
    (tmp_path / 'driver.py').write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    results = {}
    for name, launcher in (('hvd', [toy_glue.horovodrun(), '-np', '1', '-H', 'localhost:1',
                                    '--gloo']), ('single', [])):
        config = toy_glue.finetune_config(tmp_path, epochs=2, head_dropout=0.1,
                                          output_dir=str(tmp_path / name / 'run'))
        (tmp_path / name).mkdir()
        (tmp_path / name / 'config.json').write_text(json.dumps(vars(config)))
        proc = subprocess.run(launcher + [sys.executable, str(tmp_path / 'driver.py'),
                                          str(tmp_path / name / 'config.json'),
                                          str(tmp_path / name)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[name] = (np.load(tmp_path / name / 'rank0.npz'),
                         json.loads((tmp_path / name / 'rank0.json').read_text())['history'])
    (worker, history), (alone, alone_history) = results['hvd'], results['single']
    timeless = [[{k: v for k, v in r.items() if k != 'seconds'} for r in h]
                for h in (history, alone_history)]
    assert timeless[0] == timeless[1] and len(history) == 2
    for name in worker.files:
        np.testing.assert_array_equal(worker[name], alone[name], err_msg=name)
