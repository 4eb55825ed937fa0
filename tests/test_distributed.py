"""bort.distributed: single-process identities, and two Gloo workers against numpy."""
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest

import toy_glue
from bort.distributed import Comm, init_comm, launched_by_horovod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_process_collectives_are_identities():
    comm = Comm()
    assert (comm.rank, comm.size, comm.local_rank, comm.is_root, comm.distributed) == \
        (0, 1, 0, True, False)
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    mean = comm.allreduce_mean(value)
    assert mean.dtype == np.float64 and mean.shape == (2, 3)
    np.testing.assert_array_equal(mean, value)
    np.testing.assert_array_equal(comm.allreduce_sum(value), value)
    assert comm.allreduce_mean(2.5).shape == () and float(comm.allreduce_sum(2.5)) == 2.5
    obj = {'a': [1, 2], 'b': 'x'}
    assert comm.allgather_object(obj) == [obj]
    assert comm.broadcast_object(obj) is obj
    comm.barrier()
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    before = net.weight.data().asnumpy()
    comm.broadcast_parameters(net.collect_params())
    np.testing.assert_array_equal(net.weight.data().asnumpy(), before)
    trainer = comm.trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    assert isinstance(trainer, mx.gluon.Trainer)
    assert trainer._kvstore is None  # pylint: disable=protected-access


@pytest.mark.parametrize('rank,size,expected', [(0, 1, list(range(7))), (0, 3, [0, 3, 6]),
                                                (1, 3, [1, 4]), (2, 3, [2, 5])])
def test_shard(rank, size, expected):
    items = list(range(7))
    assert Comm(rank=rank, size=size).shard(items) == expected


def test_shards_partition_the_items():
    items = list('abcdefghij')
    shards = [Comm(rank=r, size=4).shard(items) for r in range(4)]
    assert sorted(sum(shards, [])) == items


def test_launch_detection_and_default_comm(monkeypatch):
    for var in ('HOROVOD_RANK', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        monkeypatch.delenv(var, raising=False)
    assert not launched_by_horovod()
    comm = init_comm()
    assert comm.size == 1 and comm.ctx == mx.cpu()
    assert comm._hvd is None  # pylint: disable=protected-access
    assert init_comm(use_horovod=False, gpu=True).ctx == mx.gpu(0)
    for var in ('HOROVOD_RANK', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK'):
        monkeypatch.setenv(var, '0')
        assert launched_by_horovod()
        monkeypatch.delenv(var)


WORKER = textwrap.dedent('''
    """Run by horovodrun -np 2: every collective of Comm, written to out/rank<r>.json."""
    import json, sys
    import mxnet as mx
    import numpy as np
    from bort.distributed import init_comm
    from bort.optim import make_trainer, optimizer_step

    comm = init_comm()
    r = comm.rank
    data = np.random.RandomState(r).normal(size=(3, 4))  # the test rebuilds these with numpy
    result = {'rank': r, 'size': comm.size, 'is_root': comm.is_root,
              'mean': comm.allreduce_mean(data).tolist(),
              'sum': comm.allreduce_sum(data).tolist(),
              'scalar_mean': float(comm.allreduce_mean(float(r + 1))),
              'scalar_shape': list(comm.allreduce_mean(1.0).shape),
              'gathered': comm.allgather_object({'rank': r, 'text': 'x' * (5 + 40 * r)}),
              'broadcast': comm.broadcast_object(['from', r], root=1),
              'shard': comm.shard(list(range(5)))}
    comm.barrier()

    # parameters: rank 1 starts elsewhere, broadcast makes it rank 0's
    params = mx.gluon.ParameterDict('w_')
    params.get('a', shape=(4,)).initialize(mx.init.Constant(float(r + 1)))
    comm.broadcast_parameters(params)
    result['broadcast_params'] = params['w_a'].data().asnumpy().tolist()

    # one clipped SGD step: each worker backpropagates its own gradient
    trainer = make_trainer(params, comm, 'sgd', lr=0.5, weight_decay=0.0)
    grad = np.random.RandomState(10 + r).normal(size=4) * 3
    with mx.autograd.record():
        loss = (params['w_a'].data() * mx.nd.array(grad)).sum()
    loss.backward()
    result['norm'] = optimizer_step(trainer, params.values(), max_norm=1.0)
    result['stepped'] = params['w_a'].data().asnumpy().tolist()
    with open(f'{sys.argv[1]}/rank{r}.json', 'w') as f:
        json.dump(result, f)
''')


@pytest.mark.horovod
@pytest.mark.skipif(toy_glue.horovodrun() is None, reason='horovodrun is not installed')
def test_two_gloo_workers_against_numpy(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    proc = subprocess.run(
        [toy_glue.horovodrun(), '-np', '2', '-H', 'localhost:2', '--gloo', sys.executable,
         str(script), str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1'), capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]

    data = [np.random.RandomState(r).normal(size=(3, 4)) for r in range(2)]
    grads = [np.random.RandomState(10 + r).normal(size=4) * 3 for r in range(2)]
    mean_grad = np.mean(grads, axis=0)
    norm = np.linalg.norm(mean_grad)
    expected_step = 1.0 - 0.5 * mean_grad * min(1.0, 1.0 / norm)  # from rank 0's weights (1.0)
    assert norm > 1.0  # so that the clipping is exercised
    for r, res in enumerate(results):
        assert (res['rank'], res['size'], res['is_root']) == (r, 2, r == 0)
        np.testing.assert_allclose(res['mean'], np.mean(data, axis=0), rtol=1e-12)
        np.testing.assert_allclose(res['sum'], np.sum(data, axis=0), rtol=1e-12)
        assert res['scalar_mean'] == 1.5 and res['scalar_shape'] == []
        assert res['gathered'] == [{'rank': q, 'text': 'x' * (5 + 40 * q)} for q in range(2)]
        assert res['broadcast'] == ['from', 1]
        assert res['shard'] == [[0, 2, 4], [1, 3]][r]
        assert res['broadcast_params'] == [1.0] * 4
        assert res['norm'] == pytest.approx(norm, rel=1e-5)
        np.testing.assert_allclose(res['stepped'], expected_step, rtol=1e-5)
