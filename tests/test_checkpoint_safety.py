"""Checkpoints load without unpickling: crafted or old pickled files are refused, never run."""
import json
import os
import pickle

import mxnet as mx
import numpy as np
import pytest

from bort.checkpoint import (CheckpointFormatError, CheckpointManager, load_trainer_state,
                             save_trainer_state)
from bort.distributed import Comm
from bort.model import build_model
from bort.optim import make_trainer


class _Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _step(model, trainer):
    inputs = mx.nd.array(np.arange(12).reshape(2, 6) % 50)
    with mx.autograd.record():
        seq, _ = model(inputs, None, mx.nd.array([6, 5]))
        loss = (seq ** 2).mean()
    loss.backward()
    trainer.step(1)


@pytest.mark.parametrize('optimizer', ['bertadam', 'sgd'])
def test_trainer_state_files_hold_no_pickle_and_match_mxnet_states(tiny_arch, tmp_path,
                                                                    optimizer):
    mx.random.seed(0)
    model = build_model(tiny_arch, use_decoder=False)
    trainer = make_trainer(model.collect_params(), Comm(), optimizer, lr=1e-2, momentum=0.9)
    _step(model, trainer)
    prefix = str(tmp_path / 'trainer-rank0')
    save_trainer_state(trainer, prefix)
    with open(prefix + '.json') as f:
        meta = json.load(f)
    assert meta['format'] == 'bort-trainer-state' and meta['num_update'] == 1
    raw = open(prefix + '.params', 'rb').read()
    assert b'\x80\x04' not in raw[:2] and not raw.startswith(b'\x80')  # no pickle protocol
    # reference: MXNet's own (pickled) state of the same trainer
    reference = pickle.loads(trainer._updaters[0].get_states(dump_optimizer=False))

    fresh = make_trainer(model.collect_params(), Comm(), optimizer, lr=1e-2, momentum=0.9)
    load_trainer_state(fresh, prefix, mx.cpu())
    restored = fresh._updaters[0].states
    assert set(restored) == set(reference)
    for index, state in reference.items():
        parts = state if isinstance(state, tuple) else (state,)
        got = restored[index] if isinstance(restored[index], tuple) else (restored[index],)
        for a, b in zip(parts, got):
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_crafted_pickles_in_a_checkpoint_are_refused_and_never_run(tiny_arch, tmp_path):
    mx.random.seed(0)
    model = build_model(tiny_arch, use_decoder=False)
    trainer = make_trainer(model.collect_params(), Comm(), 'bertadam', lr=1e-2)
    _step(model, trainer)
    manager = CheckpointManager(str(tmp_path / 'run'))
    path = manager.save(1, model, trainer, {}, {})
    marker = tmp_path / 'ran'
    for name in ('rng.pkl', 'trainer-rank0.states'):
        with open(os.path.join(path, name), 'wb') as f:
            pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(CheckpointFormatError, match='pickled'):
        manager.load(path, model, trainer)
    assert not marker.exists()


def test_a_trainer_file_of_another_format_is_refused(tiny_arch, tmp_path):
    model = build_model(tiny_arch, use_decoder=False)
    trainer = make_trainer(model.collect_params(), Comm(), 'bertadam', lr=1e-2)
    prefix = str(tmp_path / 'trainer-rank0')
    with open(prefix + '.json', 'w') as f:
        json.dump({'format': 'something-else'}, f)
    with pytest.raises(CheckpointFormatError, match='not a bort-trainer-state file'):
        load_trainer_state(trainer, prefix, mx.cpu())
    sgd = make_trainer(model.collect_params(), Comm(), 'sgd', lr=1e-2)
    _step(model, sgd)
    save_trainer_state(sgd, prefix)
    with pytest.raises(CheckpointFormatError, match='written for optimizer SGD'):
        load_trainer_state(trainer, prefix, mx.cpu())
