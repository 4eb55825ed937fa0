"""Damaged run files (a checkpoint's state, RNG or trainer-state file, a search's stored
candidate, config or teacher-cache file, the data folder's meta.json, metrics.jsonl), an empty
dev file and a full disk: each is one error naming the file (a UserError: one line and exit
status 2 in every command), found before any training, never a traceback."""
import dataclasses
import glob
import json
import os
import re
import shutil

import mxnet as mx
import pytest

from bort.errors import UserError
from bort.pretrain.config import PretrainConfig
from bort.pretrain.loop import pretrain
from pretrain_helpers import arch_json, prepared_data, student_arch


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return prepared_data(tmp_path_factory.mktemp('run_files'), num_workers=1)


def _config(folder, tok, out, **changes):
    values = dict(data=folder, output_dir=str(out), arch=arch_json(student_arch(tok.vocab_size)),
                  kd_weight=0.0, mlm_weight=1.0, total_steps=3, batch_size=4, lr=1e-3,
                  max_predictions=8, log_interval=1, eval_interval=3, eval_batches=1,
                  checkpoint_interval=3, plot=False, hybridize=False)
    values.update(changes)
    return PretrainConfig(**values)


@pytest.fixture
def run_copy(data, tmp_path):
    """A finished 3-step run (checkpoint at step 3), to damage and resume."""
    config = _config(*data, tmp_path / 'run')
    pretrain(config)
    return dataclasses.replace(config, resume=True)


def _damage(path, keep=0.5):
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:int(len(content) * keep)])


@pytest.mark.parametrize('name', ['state.json', 'rng.json', 'trainer-rank0.json',
                                  'trainer-rank0.params'])
def test_a_damaged_checkpoint_file_is_named(run_copy, name):
    path = os.path.join(run_copy.output_dir, 'step-0000003', name)
    _damage(path)
    with pytest.raises(UserError, match=re.escape(path) + r'(:\d+)?: '):
        pretrain(run_copy)


@pytest.mark.parametrize('name,content', [
    ('state.json', '{"step": "three"}'), ('state.json', '[3]'),
    ('rng.json', '{"python": [3, [1, 2], null]}'), ('rng.json', '{}'),
    ('trainer-rank0.json', '{"format": "bort-trainer-state"}'),
])
def test_a_checkpoint_file_of_the_wrong_shape_is_named(run_copy, name, content):
    path = os.path.join(run_copy.output_dir, 'step-0000003', name)
    with open(path, 'w') as f:
        f.write(content)
    with pytest.raises(UserError, match=re.escape(path) + r'(:\d+)?: '):
        pretrain(run_copy)


@pytest.mark.parametrize('content', ['{"format": "bort-prepared', '[1, 2]', '',
                                     '{"format": "bort-pretrain-shards", "vocab_size": 27}'])
def test_a_damaged_meta_json_is_named(data, tmp_path, content):
    folder = str(tmp_path / 'data')
    shutil.copytree(data[0], folder)
    path = os.path.join(folder, 'meta.json')
    with open(path, 'w') as f:
        f.write(content)
    with pytest.raises(UserError, match=f'{path}'):
        pretrain(_config(folder, data[1], tmp_path / 'run'))
    assert not (tmp_path / 'run').exists()


def test_a_truncated_metrics_file_is_named_before_resuming(run_copy):
    path = os.path.join(run_copy.output_dir, 'metrics.jsonl')
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, 'w') as f:
        f.write('\n'.join(lines[:-1]) + '\n' + lines[-1][:len(lines[-1]) // 2])
    with pytest.raises(UserError, match=f'{path}:{len(lines)}: '):
        pretrain(run_copy)


def test_a_full_disk_inside_mxnets_writer_is_one_error_naming_the_file(tmp_path, monkeypatch,
                                                                       tiny_arch):
    """MXNet's own writer fails on a full device with a C++ trace naming no file."""
    from bort.cli import _one_line
    from bort.model import build_model, save_model
    real_save = mx.nd.save
    monkeypatch.setattr(mx.nd, 'save', lambda path, arrays: real_save('/dev/full', arrays))
    folder = str(tmp_path / 'model')
    with pytest.raises(OSError) as err:
        save_model(build_model(tiny_arch), folder)
    message = _one_line(err.value)
    assert message is not None and os.path.join(folder, 'model.params') in message
    assert 'Traceback' not in message and '\n' not in message


# -- a search's stored files ------------------------------------------------------------------
from test_search_driver import tiny_config, tiny_inputs  # noqa: E402,F401  (a fixture)


@pytest.fixture
def stopped_search(tiny_inputs, tmp_path):  # noqa: F811
    """A search stopped after one candidate (its folder holds config.json, one stored
    candidate and the teacher cache), to damage and resume."""
    from bort.search import run_search
    config = tiny_config(tiny_inputs, tmp_path / 'search', max_candidates=1)
    run_search(config)
    return dataclasses.replace(config, max_candidates=0)


def _search_file(config, pattern):
    found = sorted(glob.glob(os.path.join(config.out, pattern)))
    assert found, pattern
    return found[0]


@pytest.mark.parametrize('pattern,content', [
    ('candidates/*.json', None), ('candidates/*.json', '[]'), ('config.json', None),
    ('teacher_cache/*/*.npz', None)])
def test_a_damaged_search_file_is_named(stopped_search, pattern, content):
    from bort.search import run_search
    path = _search_file(stopped_search, pattern)
    if content is None:
        _damage(path)
    else:
        with open(path, 'w') as f:
            f.write(content)
    with pytest.raises(UserError, match=re.escape(path) + r'(:\d+)?: '):
        run_search(stopped_search)


def test_a_damaged_latency_cache_is_named(tiny_inputs, tmp_path):  # noqa: F811
    from bort.search.inference import COSTS_FILE, CostModel
    path = tmp_path / COSTS_FILE
    path.write_text('{"settings": {"kind": "measured"}, "measu')
    with pytest.raises(UserError, match=re.escape(str(path)) + r':1: '):
        CostModel(tiny_config(tiny_inputs, tmp_path, cost='measured'), str(tmp_path))


@pytest.mark.parametrize('content', ['{"task": "SST-2", "num_cla', '{"no_such_field": 1}', '[]'])
def test_a_damaged_classifier_head_file_is_named(tmp_path, content):
    from bort.finetune.classifier import CLASSIFIER_FILE, read_head_config
    path = tmp_path / CLASSIFIER_FILE
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(str(path)) + r'(:\d+)?: not a valid '):
        read_head_config(str(tmp_path))

