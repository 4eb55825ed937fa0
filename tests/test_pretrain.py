"""Pretraining: schedule, batch stream, gradient accumulation, teacher checks, the loop's
checkpoints and guards, exact resume after SIGKILL, and 2 Horovod workers vs one process."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from bort.pretrain import loop as pretrain_module
from bort.distributed import Comm
from bort.pretrain.teacher import Teacher, VocabularyMismatchError, mlm_logits
from bort.model import build_model, load_model, param_dict
from bort.optim import learning_rate
from bort.arch import get_arch
from bort.pretrain.config import PretrainConfig
from bort.pretrain.evaluate import TeacherCache
from bort.pretrain.loop import NonFiniteLossError, accumulate_gradients, evaluate, pretrain
from bort.pretrain.prepare import read_meta
from bort.pretrain.masking import masking_for
from bort.pretrain.stream import BatchStream, MLMBatch, fixed_batches, list_shards
from pretrain_helpers import arch_json, prepared_data, save_teacher, student_arch, tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import run_pretraining  # noqa: E402  (a script at the repository root)


@pytest.fixture
def data(tmp_path):
    folder, tok = prepared_data(tmp_path)
    return folder, tok


def _config(tmp_path, data, name='run', **changes):
    folder, tok = data
    values = dict(data=folder, output_dir=str(tmp_path / name),
                  arch=arch_json(student_arch(tok.vocab_size)), kd_weight=0.0, mlm_weight=1.0,
                  total_steps=6, batch_size=4, lr=1e-3, warmup_ratio=0.2, max_predictions=8,
                  log_interval=2, eval_interval=3, eval_batches=2, checkpoint_interval=3,
                  plot=False)
    values.update(changes)
    return PretrainConfig(**values)


def _params(folder):
    return {k: v.asnumpy() for k, v in mx.nd.load(os.path.join(folder, 'model.params')).items()}


# -- pieces ------------------------------------------------------------------------------------
def test_schedule_values():
    def lr(step, decay, warm=0.1):
        return learning_rate(step, 100, 1.0, warm, decay)

    assert lr(0, 'linear') == pytest.approx(0.1)
    assert lr(9, 'linear') == pytest.approx(1.0)
    assert lr(10, 'linear') == pytest.approx(89 / 90)
    assert lr(54, 'linear') == pytest.approx(45 / 90)
    assert lr(99, 'linear') == 0.0
    assert lr(0, 'linear', 0.0) == pytest.approx(0.99)
    assert lr(39, 'noam') == pytest.approx(0.5)  # sqrt(10 / 40)
    assert lr(9, 'noam') == pytest.approx(1.0)
    assert lr(50, 'constant') == 1.0 and lr(4, 'constant') == pytest.approx(0.5)


def test_one_process_sees_the_union_of_two_workers(data):
    folder, _ = data
    masking = masking_for(read_meta(folder), max_predictions=8)
    files = list_shards(folder)
    single = BatchStream(files, 0, 1, 8, 2, masking, seed=3)
    ranks = [BatchStream(files, r, 2, 4, 0, masking, seed=3) for r in range(2)]
    for _ in range(12):  # past the end of an epoch
        whole = next(single)
        halves = [next(s) for s in ranks]
        assert len(whole) == sum(len(h) for h in halves)
        for name in ('input_ids', 'labels', 'weights', 'positions'):
            joined = MLMBatch.concat(halves)
            width = min(getattr(whole, name).shape[1], getattr(joined, name).shape[1])
            np.testing.assert_array_equal(getattr(whole, name)[:, :width],
                                          getattr(joined, name)[:, :width])


def test_stream_resumes_from_its_position_and_remasks_each_epoch(data):
    folder, _ = data
    masking = masking_for(read_meta(folder), max_predictions=8)
    files = list_shards(folder)
    stream = BatchStream(files, 0, 1, 4, 1, masking, seed=0)
    epoch0 = []
    while stream.parts[0].epoch == 0:
        epoch0.append(next(stream))
    for _ in range(3):
        next(stream)
    resumed = BatchStream(files, 0, 1, 4, 1, masking, seed=0, positions=stream.positions)
    for _ in range(4):
        a, b = next(stream), next(resumed)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.positions, b.positions)
    # Epoch 1 covers the same sequences with a different masking.
    epoch1 = BatchStream(files, 0, 1, 4, 1, masking, seed=0,
                         positions={0: {'epoch': 1, 'file': 0, 'chunk': 0}})
    first = {tuple(r[w > 0]) for b in epoch0 for r, w in zip(b.positions, b.weights)}
    second = {tuple(r[w > 0]) for b in (next(epoch1) for _ in epoch0)
              for r, w in zip(b.positions, b.weights)}
    assert first != second


@pytest.mark.parametrize('kd_weight', [0.0, 0.5])
def test_accumulated_micro_batches_equal_one_batch(tmp_path, data, kd_weight):
    folder, tok = data
    masking = masking_for(read_meta(folder), max_predictions=8)
    stream = BatchStream(list_shards(folder), 0, 1, 3, 1, masking, seed=0)
    micro = [next(stream), next(stream)]
    teacher = Teacher.load(save_teacher(str(tmp_path / 't'), tok.vocab_size), tok.vocab_size)
    config = _config(tmp_path, data, kd_weight=kd_weight, teacher='x')
    grads = []
    for batches in (micro, [MLMBatch.concat(micro)]):
        mx.random.seed(0)
        model = build_model(student_arch(tok.vocab_size))
        model.collect_params().setattr('grad_req', 'add')
        accumulate_gradients(model, teacher if kd_weight else None, batches, config, Comm())
        grads.append({k: p.grad().asnumpy() for k, p in param_dict(model).items()})
    for key, value in grads[0].items():
        np.testing.assert_allclose(value, grads[1][key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_teacher_runs_without_gradients(tmp_path, data):
    _, tok = data
    teacher = Teacher.load(save_teacher(str(tmp_path / 't'), tok.vocab_size), tok.vocab_size)
    assert all(p.grad_req == 'null' for p in teacher.model.collect_params().values())


def test_vocabulary_size_mismatch_is_a_clear_error(tmp_path, data):
    _, tok = data
    save_teacher(str(tmp_path / 't'), tok.vocab_size + 3)
    config = _config(tmp_path, data, kd_weight=0.5, teacher=str(tmp_path / 't'))
    with pytest.raises(VocabularyMismatchError, match=f'{tok.vocab_size + 3} tokens.*uses '
                                                      f'{tok.vocab_size}'):
        pretrain(config)


def test_same_size_other_tokens_is_an_error(tmp_path, data):
    _, tok = data
    other = tiny_tokenizer([w + 'x' for w in tok.tokens[5:]])
    assert other.vocab_size == tok.vocab_size
    save_teacher(str(tmp_path / 't'), tok.vocab_size, tokenizer=other)
    with pytest.raises(VocabularyMismatchError, match='different tokens'):
        pretrain(_config(tmp_path, data, kd_weight=0.5, teacher=str(tmp_path / 't')))


# -- the loop -----------------------------------------------------------------------------------
def test_distillation_run_writes_everything(tmp_path, data):
    _, tok = data
    teacher = save_teacher(str(tmp_path / 't'), tok.vocab_size, tokenizer=tok)
    config = _config(tmp_path, data, kd_weight=0.5, mlm_weight=0.1, teacher=teacher, plot=True)
    result = pretrain(config)
    out = tmp_path / 'run'
    assert result['step'] == 6 and result['ranks_in_sync']
    assert sorted(p for p in os.listdir(out) if p.startswith('step-')) == \
        ['step-0000003', 'step-0000006']
    assert (out / 'latest').read_text().strip() == 'step-0000006'
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    train = [r for r in records if 'mlm_loss' in r and not r.get('final')]
    assert [r['step'] for r in train] == [2, 4, 6]
    for key in ('kd_loss', 'mlm_acc', 'lr', 'tokens_per_s', 'teacher_share'):
        assert all(np.isfinite(r[key]) for r in train), key
    assert train[0]['kd_loss'] > 0
    assert [r['step'] for r in records if 'eval_mlm_acc' in r and not r.get('final')] == [3, 6]
    assert (out / 'curves.png').stat().st_size > 1000
    model = load_model(str(out / 'model'))
    assert model.arch.vocab_size == tok.vocab_size
    assert os.path.isfile(out / 'model' / 'tokenizer.json')
    with open(out / 'step-0000006' / 'state.json') as f:
        assert set(json.load(f)['data_positions']) == {'0'}
    with pytest.raises(FileExistsError, match='--resume'):
        pretrain(config)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data, monkeypatch):
    calls = {'n': 0}
    real = pretrain_module.kd_loss

    def poisoned(*args, **kwargs):
        calls['n'] += 1
        total, *rest = real(*args, **kwargs)
        if calls['n'] == 5:
            total = total * float('nan')
        return (total, *rest)

    monkeypatch.setattr(pretrain_module, 'kd_loss', poisoned)
    config = _config(tmp_path, data, total_steps=8, checkpoint_interval=2, eval_interval=100)
    with pytest.raises(NonFiniteLossError, match=r'step 5.*step-0000004'):
        pretrain(config)
    out = tmp_path / 'run'
    assert (out / 'latest').read_text().strip() == 'step-0000004'
    assert not (out / 'step-0000005').exists() and not (out / 'model').exists()
    before = _params(str(out / 'step-0000004'))
    assert all(np.isfinite(v).all() for v in before.values())


def _write_config(path, config, **changes):
    values = dict(dataclasses.asdict(config), **changes)
    path.write_text(json.dumps({k.replace('_', '-'): v for k, v in values.items()}))
    return str(path)


def _env(threads='2'):
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
                OMP_NUM_THREADS=threads, OMP_WAIT_POLICY='PASSIVE')


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, data):
    """SIGKILL after a checkpoint, --resume: the final weights equal an uninterrupted run's."""
    config = _config(tmp_path, data, total_steps=30, checkpoint_interval=4,
                     arch=arch_json(student_arch(data[1].vocab_size, dropout=0.1)),
                     log_interval=5, eval_interval=15)

    def command(name):
        cfg = _write_config(tmp_path / f'{name}.json', config, output_dir=str(tmp_path / name))
        return [sys.executable, os.path.join(REPO, 'run_pretraining.py'), '--config', cfg]

    reference = subprocess.run(command('ref'), env=_env(), capture_output=True, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]
    proc = subprocess.Popen(command('killed'), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    pointer = tmp_path / 'killed' / 'latest'
    deadline = time.time() + 120
    while not pointer.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert pointer.read_text().strip() != 'step-0000030', 'finished before it could be killed'
    done = subprocess.run(command('killed') + ['--resume'], env=_env(), capture_output=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert 'resumed from' in done.stderr.decode()
    want = _params(str(tmp_path / 'ref' / 'model'))
    got = _params(str(tmp_path / 'killed' / 'model'))
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# -- command line ----------------------------------------------------------------------------
def test_config_file_with_flags_winning(tmp_path):
    cfg = tmp_path / 'c.json'
    cfg.write_text(json.dumps({'kd-weight': 0.0, 'batch_size': 3, 'hybridize': False,
                               'arch': {'num_layers': 1, 'num_heads': 2, 'units': 8,
                                        'hidden_size': 16}}))
    config = run_pretraining.parse_config(['--config', str(cfg), '--batch-size', '5',
                                           '--data', 'd'])
    assert (config.kd_weight, config.batch_size, config.hybridize) == (0.0, 5, False)
    assert get_arch(config.arch).units == 8
    assert run_pretraining.parse_config(['--no-plot']).plot is False
    cfg.write_text(json.dumps({'kd-wieght': 1}))
    with pytest.raises(SystemExit):
        run_pretraining.parse_config(['--config', str(cfg)])


# -- Horovod -----------------------------------------------------------------------------------
def _horovodrun():
    path = shutil.which('horovodrun') or os.path.join(os.path.dirname(sys.executable),
                                                      'horovodrun')
    if not os.path.isfile(path):
        pytest.skip('horovodrun is not installed (pip install horovod with MXNet and Gloo)')
    probe = subprocess.run([sys.executable, '-c', 'import horovod.mxnet'], capture_output=True)
    if probe.returncode:
        pytest.skip('horovod.mxnet cannot be imported: Horovod was built without MXNet')
    return path


@pytest.mark.horovod
def test_two_horovod_workers_match_one_process(tmp_path, data):
    horovodrun = _horovodrun()
    # A small clipping norm clips every step: the workers must clip the averaged gradient.
    config = _config(tmp_path, data, total_steps=5, batch_size=4, data_parts=2,
                     checkpoint_interval=5, eval_batches=1, max_grad_norm=0.05)
    cfg = _write_config(tmp_path / 'cfg.json', config, output_dir=str(tmp_path / 'hvd'))
    done = subprocess.run([horovodrun, '-np', '2', '-H', 'localhost:2', '--gloo',
                           sys.executable, os.path.join(REPO, 'run_pretraining.py'),
                           '--config', cfg], env=_env('1'), capture_output=True,
                          cwd=str(tmp_path), timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-4000:]
    records = [json.loads(line) for line in
               (tmp_path / 'hvd' / 'metrics.jsonl').read_text().splitlines()]
    final = [r for r in records if r.get('final')][-1]
    assert final['ranks_in_sync'], 'the two workers ended with different weights'
    pretrain(dataclasses.replace(config, batch_size=8, output_dir=str(tmp_path / 'one')))
    multi = _params(str(tmp_path / 'hvd' / 'model'))
    single = _params(str(tmp_path / 'one' / 'model'))
    for key in single:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-5, err_msg=key)
    moved = _params(str(tmp_path / 'one' / 'step-0000005'))
    assert any(np.abs(moved[k]).sum() > 0 for k in moved)


def test_evaluate_matches_numpy(data, rng):
    folder, tok = data
    masking = masking_for(read_meta(folder), max_predictions=8)
    batches = fixed_batches(list_shards(folder, 'eval'), 4, masking, 2)
    model = build_model(student_arch(tok.vocab_size))
    got = evaluate(model, batches, mx.cpu())
    correct = top5 = nll = count = 0.0
    for batch in batches:
        logits = mlm_logits(model, batch.as_nd()).asnumpy().astype(np.float64)
        w = batch.weights
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        correct += ((logits.argmax(-1) == batch.labels) * w).sum()
        rank = (logits > np.take_along_axis(logits, batch.labels[..., None], -1)).sum(-1)
        top5 += ((rank < 5) * w).sum()
        nll -= (np.take_along_axis(logp, batch.labels[..., None], -1)[..., 0] * w).sum()
        count += w.sum()
    assert got['eval_mlm_acc'] == pytest.approx(correct / count)
    assert got['eval_mlm_top5'] == pytest.approx(top5 / count)
    assert got['eval_mlm_loss'] == pytest.approx(nll / count, rel=1e-5)


def test_cached_teacher_evaluations_equal_recomputed_ones(tmp_path, data):
    """The teacher's held-out logits are computed once and read back afterwards: every figure
    of every later evaluation equals the one with the teacher recomputed, bit for bit."""
    folder, tok = data
    masking = masking_for(read_meta(folder), max_predictions=8)
    batches = fixed_batches(list_shards(folder, 'eval'), 4, masking, 3)
    assert any((b.weights == 0).any() for b in batches)  # padded rows are read back as zeros
    teacher = Teacher.load(save_teacher(str(tmp_path / 't'), tok.vocab_size), tok.vocab_size)
    model = build_model(student_arch(tok.vocab_size))
    cache, small = TeacherCache(teacher), TeacherCache(teacher, max_bytes=0)
    plain = evaluate(model, batches, mx.cpu(), teacher, 2.0)
    for _ in range(2):
        assert evaluate(model, batches, mx.cpu(), None, 2.0, cache) == plain
        assert evaluate(model, batches, mx.cpu(), None, 2.0, small) == plain
    assert 'eval_kd_ce' in plain
    assert cache.forward_passes == len(batches)  # once; the second evaluation read the cache
    assert small.forward_passes == 2 * len(batches)  # nothing fits in 0 bytes: recomputed


@pytest.mark.parametrize('field,value,flag', [
    ('lr', 0.0, '--lr'), ('lr', -1e-3, '--lr'), ('adam_epsilon', 0.0, '--adam_epsilon'),
    ('weight_decay', -0.01, '--weight_decay'), ('mask_ratio', 0.0, '--mask_ratio'),
    ('mask_ratio', 1.5, '--mask_ratio'), ('batch_size', -4, '--batch_size'),
    ('checkpoint_interval', 0, '--checkpoint_interval'), ('eval_interval', 0, '--eval_interval'),
    ('log_interval', 0, '--log_interval'), ('warmup_ratio', 1.2, '--warmup_ratio'),
    ('schedule', 'cosine', '--schedule'), ('temperature', 0.0, '--temperature'),
    ('adam_beta2', 1.0, '--adam_beta2'), ('adam_beta2', -0.1, '--adam_beta2')])
def test_settings_that_cannot_run_are_refused_naming_the_flag(field, value, flag):
    from bort.errors import ConfigError
    config = PretrainConfig(data='shards', kd_weight=0.0, **{field: value})
    with pytest.raises(ConfigError, match=f'^{flag} must be'):
        config.validate()


def test_a_bad_setting_on_the_command_line_is_one_line_and_status_2():
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'run_pretraining.py'), '--data',
                           'x', '--kd_weight', '0', '--batch_size', '-4'],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith('--batch_size must be >= 1, got -4')
    assert 'Traceback' not in proc.stderr


# -- how the student starts ---------------------------------------------------------------------
def test_init_teacher_starts_from_the_extracted_student(tmp_path, data, monkeypatch):
    """--init teacher: the student's weights before the first update are
    bort.extraction.extract_student's of the teacher (captured as the loop builds them)."""
    from bort.extraction import extract_student
    _, tok = data
    teacher = save_teacher(str(tmp_path / 't'), tok.vocab_size, tokenizer=tok)
    built = {}
    real = pretrain_module.extract_student

    def capture(*args, **kwargs):
        model = real(*args, **kwargs)
        built.update({n: p.data().asnumpy().copy() for n, p in param_dict(model).items()})
        return model

    monkeypatch.setattr(pretrain_module, 'extract_student', capture)
    arch = student_arch(tok.vocab_size).replace(units=24, num_heads=2, hidden_size=48)
    config = _config(tmp_path, data, kd_weight=0.0, mlm_weight=1.0, teacher=teacher,
                     init='teacher', arch=arch_json(arch), total_steps=2)
    pretrain(config)
    expected = extract_student(load_model(teacher), arch, 'even', 'magnitude')
    for name, param in param_dict(expected).items():
        np.testing.assert_array_equal(built[name], param.data().asnumpy(), err_msg=name)


def test_init_teacher_refuses_a_student_larger_than_the_teacher(tmp_path, data):
    from bort.arch import ArchitectureError
    _, tok = data
    teacher = save_teacher(str(tmp_path / 't'), tok.vocab_size, tokenizer=tok)
    arch = student_arch(tok.vocab_size).replace(num_layers=3)
    with pytest.raises(ArchitectureError, match='num_layers'):
        pretrain(_config(tmp_path, data, kd_weight=0.0, mlm_weight=1.0, teacher=teacher,
                         init='teacher', arch=arch_json(arch)))


def test_unigram_decoder_bias_is_the_training_tokens_log_frequencies(tmp_path, data,
                                                                      monkeypatch):
    """The output bias before the first update equals log((count + 0.5) / total) of the
    training shards' real tokens, counted here from the text the tokenizer makes."""
    folder, tok = data
    seen = {}
    real = pretrain_module.output_bias

    def capture(model):
        param = real(model)
        seen.setdefault('first', param)
        return param

    monkeypatch.setattr(pretrain_module, 'output_bias', capture)
    config = _config(tmp_path, data, kd_weight=0.0, mlm_weight=1.0, decoder_bias='unigram',
                     total_steps=1, lr=1e-12)
    from bort.pretrain.shards import original_tokens, read_shard
    counts = np.full(tok.vocab_size, 0.5)
    for path in list_shards(folder):
        arrays = read_shard(path)
        tokens = original_tokens(arrays)
        for row, length in zip(tokens, arrays['valid_lengths']):
            for t in row[:length]:
                if t not in (tok.cls_id, tok.sep_id, tok.pad_id):
                    counts[t] += 1
    pretrain(config)
    # lr 1e-12: one update leaves the bias where it started, to float32 rounding
    np.testing.assert_allclose(seen['first'].data().asnumpy(), np.log(counts / counts.sum()),
                               rtol=1e-5, atol=1e-5)


def test_init_teacher_needs_a_teacher(tmp_path, data):
    from bort.errors import ConfigError
    with pytest.raises(ConfigError, match='--init teacher needs --teacher'):
        pretrain(_config(tmp_path, data, kd_weight=0.0, mlm_weight=1.0, init='teacher'))
