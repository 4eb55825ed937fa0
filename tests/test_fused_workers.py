"""The fused operator libraries next to Horovod's MXNet extension, and Horovod workers on them.

Before the libraries were linked ``-Bsymbolic``, a process that had imported ``horovod.mxnet``
died loading them (SIGFPE) or at their first call (``free(): invalid pointer``), so workers ran
MXNet's own operators and drew other dropout masks than a single process.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

from bort.pretrain.config import PretrainConfig
from pretrain_helpers import arch_json, prepared_data, student_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _horovod_mxnet():
    probe = subprocess.run([sys.executable, '-c', 'import horovod.mxnet'], capture_output=True)
    return probe.returncode == 0


def _horovodrun():
    path = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    if not os.path.isfile(path) or not _horovod_mxnet():
        pytest.skip('horovodrun with MXNet support is not installed')
    return path


def _env(**changes):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE')
    env.pop('BORT_FUSED_OPS', None)
    env.update(changes)
    return env


# Loads both libraries with horovod.mxnet imported before or after, then runs every kind of
# call (forward, backward, a reduction, a graph with dropout) and prints the numbers.
NEIGHBOURS = textwrap.dedent('''
    import json, sys
    import mxnet as mx
    import numpy as np
    if sys.argv[1] == 'before':
        import horovod.mxnet
    from bort import kernels
    from bort.inference.kernels import load_fused_ops
    loaded = [kernels.load_train_ops(), load_fused_ops()]
    if sys.argv[1] == 'after':
        import horovod.mxnet
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.normal(size=(6, 16)))
    x.attach_grad()
    mx.random.seed(3)
    with mx.autograd.record():
        y = kernels.layer_norm(mx.nd, x, mx.nd.ones(16), mx.nd.zeros(16), 1e-5)
        z = kernels.dropout(mx.nd, y, 0.5, kernels.train_mode(mx.nd))
        loss = (z * mx.nd.array(rng.normal(size=(6, 16)))).sum()
    loss.backward()
    added = mx.nd.bort_add_layer_norm(x, x, mx.nd.ones(16), mx.nd.zeros(16), eps=1e-5)
    print(json.dumps({'loaded': loaded, 'z': z.asnumpy().tolist(),
                      'grad': x.grad.asnumpy().tolist(),
                      'norm': float(kernels.global_norm([x.grad]).asscalar()),
                      'added': added.asnumpy().tolist()}))
''')


@pytest.mark.parametrize('horovod_first', [True, False])
def test_operator_libraries_work_beside_horovods_extension(tmp_path, horovod_first):
    if not _horovod_mxnet():
        pytest.skip('horovod.mxnet cannot be imported')
    script = tmp_path / 'neighbours.py'
    script.write_text(NEIGHBOURS)

    def run(order):
        proc = subprocess.run([sys.executable, str(script), order], env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f'{order}: status {proc.returncode}\n{proc.stderr[-3000:]}'
        return json.loads(proc.stdout.strip().splitlines()[-1])

    alone = run('none')
    beside = run('before' if horovod_first else 'after')
    assert alone['loaded'] == beside['loaded'] == [True, True]
    for key in ('z', 'grad', 'added'):
        np.testing.assert_array_equal(np.array(beside[key]), np.array(alone[key]), err_msg=key)
    assert beside['norm'] == alone['norm']
    dropped = np.array(alone['z']) == 0
    assert 0.2 < dropped.mean() < 0.8  # dropout did drop: the masks compared are not trivial


# -- pretraining under horovodrun ------------------------------------------------------------
@pytest.fixture
def data(tmp_path):
    return prepared_data(tmp_path)


def _settings(tmp_path, data, name, **changes):
    folder, tok = data
    values = dict(data=folder, output_dir=str(tmp_path / name),
                  arch=arch_json(student_arch(tok.vocab_size, dropout=0.1)), kd_weight=0.0,
                  mlm_weight=1.0, total_steps=6, batch_size=4, lr=1e-3, warmup_ratio=0.2,
                  max_predictions=8, log_interval=1, eval_interval=3, eval_batches=1,
                  checkpoint_interval=6, plot=False)
    values.update(changes)
    config = PretrainConfig(**values)
    path = tmp_path / f'{name}.json'
    path.write_text(json.dumps({k.replace('_', '-'): v
                                for k, v in dataclasses.asdict(config).items()}))
    return str(path)


def _launch(tmp_path, settings, workers=None, **env):
    command = [sys.executable, os.path.join(REPO, 'run_pretraining.py'), '--config', settings]
    if workers:
        command = [_horovodrun(), '-np', str(workers), '-H', f'localhost:{workers}', '--gloo',
                   *command]
    proc = subprocess.run(command, env=_env(**env), capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert 'fused operators unavailable' not in proc.stdout + proc.stderr


def _losses(tmp_path, name):
    lines = (tmp_path / name / 'metrics.jsonl').read_text().splitlines()
    return [(r['step'], r['loss']) for r in map(json.loads, lines) if 'loss' in r]


def _weights(tmp_path, name):
    path = os.path.join(str(tmp_path / name), 'model', 'model.params')
    return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}


@pytest.mark.horovod
def test_one_horovod_worker_reproduces_the_single_process_exactly(tmp_path, data):
    """With dropout on: the worker draws the fused operators' masks, as the single process."""
    _launch(tmp_path, _settings(tmp_path, data, 'single'))
    _launch(tmp_path, _settings(tmp_path, data, 'worker'), workers=1)
    single = _losses(tmp_path, 'single')
    assert [s for s, _ in single][:6] == [1, 2, 3, 4, 5, 6]
    assert _losses(tmp_path, 'worker') == single
    want, got = _weights(tmp_path, 'single'), _weights(tmp_path, 'worker')
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # MXNet's own operators draw other masks: the comparison above can tell the streams apart.
    _launch(tmp_path, _settings(tmp_path, data, 'plain'), BORT_FUSED_OPS='0')
    assert _losses(tmp_path, 'plain') != single


@pytest.mark.horovod
def test_two_fused_workers_match_the_single_process(tmp_path, data):
    """No dropout (the workers' masks cover half batches each): loss and weights agree."""
    folder, tok = data
    arch = arch_json(student_arch(tok.vocab_size, dropout=0.0))
    _launch(tmp_path, _settings(tmp_path, data, 'single', arch=arch, batch_size=8, data_parts=2))
    _launch(tmp_path, _settings(tmp_path, data, 'pair', arch=arch, batch_size=4, data_parts=2),
            workers=2)
    single, pair = _losses(tmp_path, 'single'), _losses(tmp_path, 'pair')
    assert [s for s, _ in pair] == [s for s, _ in single]
    np.testing.assert_allclose([v for _, v in pair], [v for _, v in single], rtol=1e-5)
    want, got = _weights(tmp_path, 'single'), _weights(tmp_path, 'pair')
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
