"""bort.checkpoint: step folders round-trip, the ``latest`` pointer, pruning."""
import json
import os
import random

import mxnet as mx
import numpy as np
import pytest

from bort import checkpoint as checkpoint_module
from bort.arch import load_arch
from bort.checkpoint import CheckpointFormatError, CheckpointManager, step_seed, write_json_atomic
from bort.distributed import Comm
from bort.model import build_model
from bort.optim import make_trainer


def _weights(model):
    return {name: p.data().asnumpy().copy() for name, p in model.collect_params().items()}


def _train_step(model, trainer, seed):
    """One BERT-Adam step on a fixed batch (so two models in the same state stay equal)."""
    inputs = mx.nd.array(np.random.RandomState(seed).randint(0, 99, size=(2, 6)))
    with mx.autograd.record():
        seq, _ = model(inputs, None, mx.nd.array([6, 4]))
        loss = (seq ** 2).mean()
    loss.backward()
    trainer.step(1)


def _model_and_trainer(arch, seed):
    mx.random.seed(seed)
    model = build_model(arch, use_decoder=False)
    return model, make_trainer(model.collect_params(), Comm(), 'bertadam', lr=1e-2)


def test_round_trip_weights_trainer_rng_config(tiny_arch, tmp_path):
    model, trainer = _model_and_trainer(tiny_arch, seed=0)
    _train_step(model, trainer, seed=1)  # Adam moments are non-zero now
    manager = CheckpointManager(str(tmp_path / 'run'))
    config = {'lr': 1e-2, 'task': 'RTE', 'layers': [1, 2]}
    random.seed(5)
    np.random.seed(5)
    path = manager.save(3, model, trainer, config, {'epoch': 1, 'position': 17})
    draws = (random.random(), np.random.rand(3))  # what the saved random states produce next
    assert os.path.basename(path) == 'step-0000003' and manager.latest() == path

    # the original continues one more step; a fresh model restored from the folder must follow
    _train_step(model, trainer, seed=2)
    restored, restored_trainer = _model_and_trainer(tiny_arch, seed=9)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(_weights(restored).values(), _weights(model).values()))
    random.seed(123)
    np.random.seed(123)
    state = manager.load(path, restored, restored_trainer)
    assert state == {'epoch': 1, 'position': 17, 'step': 3}
    assert random.random() == draws[0]
    np.testing.assert_array_equal(np.random.rand(3), draws[1])
    _train_step(restored, restored_trainer, seed=2)
    for (name, got), want in zip(_weights(restored).items(), _weights(model).values()):
        np.testing.assert_array_equal(got, want, err_msg=name)

    with open(os.path.join(path, 'config.json')) as f:
        assert json.load(f) == config
    assert load_arch(path) == tiny_arch  # the architecture travels with the weights


def test_load_without_rng_leaves_random_state(tiny_arch, tmp_path):
    model = build_model(tiny_arch, use_decoder=False)
    manager = CheckpointManager(str(tmp_path))
    path = manager.save(1, model, None, {}, {})
    np.random.seed(7)
    expected = np.random.RandomState(7).rand(2)
    manager.load(path, model, restore_rng=False)
    np.testing.assert_array_equal(np.random.rand(2), expected)


def test_trainer_state_of_other_worker_count_is_refused(tiny_arch, tmp_path):
    model, trainer = _model_and_trainer(tiny_arch, seed=0)
    path = CheckpointManager(str(tmp_path)).save(1, model, trainer, {}, {})
    wider = CheckpointManager(str(tmp_path), comm=Comm(rank=1, size=2))
    with pytest.raises(FileNotFoundError, match='fewer workers'):
        wider.load(path, model, trainer)


def test_half_written_checkpoint_is_ignored(tiny_arch, tmp_path, monkeypatch):
    """A crash while writing step 2 leaves step 1 as the latest, listed and loadable."""
    model = build_model(tiny_arch, use_decoder=False)
    manager = CheckpointManager(str(tmp_path))
    first = manager.save(1, model, None, {}, {'n': 1})

    def crash(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(checkpoint_module, 'save_model', crash)
    with pytest.raises(OSError, match='disk full'):
        manager.save(2, model, None, {}, {'n': 2})
    monkeypatch.undo()
    assert os.path.isdir(str(tmp_path / 'step-0000002.tmp'))  # the debris of the crash
    assert manager.latest() == first
    assert manager.list() == [first]
    assert manager.load(manager.latest(), model)['n'] == 1

    # writing step 2 again replaces the debris and moves the pointer
    second = manager.save(2, model, None, {}, {'n': 2})
    assert manager.latest() == second and manager.list() == [first, second]
    assert not os.path.exists(str(tmp_path / 'step-0000002.tmp'))
    assert sorted(os.listdir(str(tmp_path))) == ['latest', 'step-0000001', 'step-0000002']


def test_empty_folder_has_no_checkpoint(tmp_path):
    manager = CheckpointManager(str(tmp_path / 'new'))
    assert manager.latest() is None and manager.list() == []


def test_a_broken_pointer_is_an_error_not_a_fresh_start(tiny_arch, tmp_path):
    """A pointer naming a missing folder, or checkpoints without a pointer, must not read as
    "no checkpoint": a fresh run would then overwrite them."""
    model = build_model(tiny_arch, use_decoder=False)
    manager = CheckpointManager(str(tmp_path))
    manager.save(1, model, None, {}, {})
    (tmp_path / 'latest').write_text('step-0000009\n')  # its folder deleted by hand
    with pytest.raises(FileNotFoundError, match='step-0000009'):
        manager.latest()
    (tmp_path / 'latest').unlink()
    with pytest.raises(FileNotFoundError, match='step-0000001'):
        manager.latest()


def test_pickled_checkpoints_are_refused(tiny_arch, tmp_path):
    model = build_model(tiny_arch, use_decoder=False)
    path = CheckpointManager(str(tmp_path)).save(1, model, None, {}, {})
    with open(os.path.join(path, 'rng.pkl'), 'wb') as f:  # the earlier layout
        f.write(b'not to be unpickled')
    with pytest.raises(CheckpointFormatError, match='pickled'):
        CheckpointManager(str(tmp_path)).load(path, model)


@pytest.mark.parametrize('keep,kept', [(2, [30, 400]), (None, [5, 12, 30, 400])])
def test_pruning_keeps_the_newest(tiny_arch, tmp_path, keep, kept):
    model = build_model(tiny_arch, use_decoder=False)
    manager = CheckpointManager(str(tmp_path), keep=keep)
    for step in (5, 12, 30, 400):  # numeric order is also the folders' name order
        manager.save(step, model, None, {}, {})
    assert manager.list() == [os.path.join(str(tmp_path), f'step-{s:07d}') for s in kept]
    assert manager.latest() == os.path.join(str(tmp_path), 'step-0000400')


def test_write_json_atomic(tmp_path):
    path = str(tmp_path / 'x.json')
    write_json_atomic(path, {'b': 1, 'a': np.float32(0.5)})
    write_json_atomic(path, {'b': 2})
    assert json.loads(open(path).read()) == {'b': 2}
    assert os.listdir(str(tmp_path)) == ['x.json']  # no temporary file left behind


def test_step_seed_is_deterministic_and_distinct():
    seeds = {(s, t, r): step_seed(s, t, r) for s in range(3) for t in range(50) for r in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2 ** 31 - 1 for v in seeds.values())
    assert step_seed(1, 10, 2) == seeds[(1, 10, 2)]


def test_numpy_scalars_are_written_as_numbers_and_steps_sort_by_number(tmp_path):
    path = str(tmp_path / 'state.json')
    write_json_atomic(path, {'loss': np.float32(0.5), 'step': np.int64(7), 'where': tmp_path})
    with open(path) as f:
        assert json.load(f) == {'loss': 0.5, 'step': 7, 'where': str(tmp_path)}
    for step in (9_999_999, 10_000_000, 2):
        os.makedirs(tmp_path / 'run' / CheckpointManager.name(step))
    names = [os.path.basename(p) for p in CheckpointManager(str(tmp_path / 'run')).list()]
    assert names == ['step-0000002', 'step-9999999', 'step-10000000']
