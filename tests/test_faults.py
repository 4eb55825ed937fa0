"""Nothing lost, nothing executed, nothing silent: each fault of issue 15 (pretraining, data
preparation, model files, commands) refused with a message naming what is wrong, before
anything is overwritten."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from bort.arch import ArchitectureError, load_arch
from bort.checkpoint import MissingCheckpointError, ResumeMismatchError
from bort.errors import ConfigError, DataFormatError
from bort.model import CheckpointMismatchError, build_model, load_model, save_model
from bort.pretrain.config import PretrainConfig
from bort.pretrain.loop import pretrain
from bort.pretrain.prepare import PrepConfig, prepare_pretraining_data
from bort.runlock import FolderInUseError
from pretrain_helpers import arch_json, prepared_data, student_arch, write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture
def data(tmp_path):
    return prepared_data(tmp_path, num_workers=1)


def _config(tmp_path, prepared, name='run', **changes):
    folder, tok = prepared
    values = dict(data=folder, output_dir=str(tmp_path / name),
                  arch=arch_json(student_arch(tok.vocab_size)), kd_weight=0.0, mlm_weight=1.0,
                  total_steps=3, batch_size=4, lr=1e-3, max_predictions=8, log_interval=1,
                  eval_interval=3, eval_batches=1, checkpoint_interval=3, plot=False,
                  hybridize=False)
    values.update(changes)
    return PretrainConfig(**values)


def _snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _command(args, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('BORT_DEBUG', None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


# -- one run per output folder ----------------------------------------------------------------
def test_a_second_pretraining_run_on_the_folder_is_refused(tmp_path, data, holder):
    config = _config(tmp_path, data)
    holder(config.output_dir)
    with pytest.raises(FolderInUseError, match=r'in use by another run .*the first run'):
        pretrain(config)
    assert sorted(os.listdir(config.output_dir)) == ['.bort.lock']  # nothing written


def test_a_second_preparation_command_exits_2_with_one_line(tmp_path, holder):
    text = write_corpus(str(tmp_path / 'text'), files=1, docs=3)
    tok_dir = str(tmp_path / 'tok')
    from pretrain_helpers import tiny_tokenizer
    tiny_tokenizer().save(tok_dir)
    holder(tmp_path / 'data')
    proc = _command(['-m', 'bort.pretrain.prepare', '--tokenizer', tok_dir, '--output',
                     str(tmp_path / 'data'), *text])
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        'wait for it to end or choose another output folder')


# -- nothing deleted before the replacement is complete --------------------------------------
def test_a_failed_preparation_keeps_the_old_data(tmp_path, data):
    folder, _ = data
    before = _snapshot(folder)
    binary = tmp_path / 'binary.txt'
    binary.write_bytes(b'the cat\x00\x01 sat\n')
    with pytest.raises(DataFormatError, match='binary.txt:1: NUL byte'):
        prepare_pretraining_data([str(binary)], str(tmp_path / 'tok'), folder,
                                 PrepConfig(max_seq_length=24, max_predictions=8))
    after = _snapshot(folder)
    after.pop('.bort.lock', None)
    assert after == before  # every shard and meta.json as they were
    assert not [n for n in os.listdir(str(tmp_path)) if '.new-' in n or '.old-' in n]


def test_preparation_replaces_old_data_whole_and_refuses_foreign_files(tmp_path, data):
    folder, _ = data
    text = write_corpus(str(tmp_path / 'more'), files=1, docs=4, seed=3)
    meta = prepare_pretraining_data(text, str(tmp_path / 'tok'), folder,
                                    PrepConfig(max_seq_length=24, max_predictions=8))
    shards = sorted(n for n in os.listdir(folder) if n.endswith('.npz'))
    assert shards == sorted(f['file'] for s in ('train', 'eval') for f in meta['shards'][s])
    (tmp_path / 'data' / 'notes.txt').write_text('mine')
    with pytest.raises(DataFormatError, match=r'notes\.txt.*choose a new or empty --output'):
        prepare_pretraining_data(text, str(tmp_path / 'tok'), folder)
    assert (tmp_path / 'data' / 'notes.txt').read_text() == 'mine'


# -- damaged files named before step 1 ------------------------------------------------------
def test_a_truncated_shard_is_named_before_the_first_step(tmp_path, data):
    folder, _ = data
    shard = sorted(n for n in os.listdir(folder) if n.startswith('train-'))[-1]
    path = os.path.join(folder, shard)
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 2])
    config = _config(tmp_path, data)
    with pytest.raises(DataFormatError, match=f'{shard}: unreadable shard, truncated'):
        pretrain(config)
    assert not os.path.exists(config.output_dir)  # the refused run removed the folder it made


def test_arch_json_missing_a_field_is_named(tmp_path, tiny_arch):
    path = tmp_path / 'arch.json'
    values = tiny_arch.to_dict()
    del values['units']
    path.write_text(json.dumps(values))
    with pytest.raises(ArchitectureError, match=rf"{path}: architecture fields \['units'\] "
                                                r'missing'):
        load_arch(str(path))
    values.update(units=32, dropout='0.1')
    path.write_text(json.dumps(values))
    with pytest.raises(ArchitectureError, match=rf"{path}: dropout must be a number, got '0.1'"):
        load_arch(str(path))


def test_a_truncated_weights_file_is_named(tmp_path, tiny_arch):
    folder = str(tmp_path / 'model')
    save_model(build_model(tiny_arch), folder)
    path = os.path.join(folder, 'model.params')
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 3])
    with pytest.raises(CheckpointMismatchError, match=f'{path}: not a readable MXNet weights'):
        load_model(folder)


# -- resume: strict pointer, same settings ----------------------------------------------------
def test_latest_naming_a_missing_folder_is_refused_and_nothing_overwritten(tmp_path, data):
    config = _config(tmp_path, data)
    pretrain(config)
    checkpoint = os.path.join(config.output_dir, 'step-0000003')
    before = _snapshot(checkpoint)
    with open(os.path.join(config.output_dir, 'latest'), 'w') as f:
        f.write('step-0000009\n')
    for resume in (True, False):
        with pytest.raises(MissingCheckpointError, match=r"latest names 'step-0000009', which "
                                                         r'is not a checkpoint folder .*'
                                                         r'step-0000003'):
            pretrain(dataclasses.replace(config, resume=resume, total_steps=6))
    assert _snapshot(checkpoint) == before


def test_resume_with_a_changed_setting_is_refused_naming_it(tmp_path, data):
    config = _config(tmp_path, data, total_steps=6)
    pretrain(dataclasses.replace(config, total_steps=6, checkpoint_interval=3))
    with pytest.raises(ResumeMismatchError, match=r'--adam_epsilon: 1e-06 -> 1e-05; '
                                                  r'--weight_decay: 0\.01 -> 0\.1'):
        pretrain(dataclasses.replace(config, resume=True, adam_epsilon=1e-5, weight_decay=0.1))


def test_resume_compares_resolved_paths(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, data, data='data', output_dir='runs/x', total_steps=6)
    pretrain(config)
    # As if killed after step 3: the run resumes there.
    shutil.rmtree('runs/x/step-0000006')
    with open('runs/x/latest', 'w') as f:
        f.write('step-0000003\n')
    # The same folders spelled otherwise, and settings that do not change results.
    again = dataclasses.replace(config, data='./data/', output_dir='./runs/x/', resume=True,
                                log_interval=2, eval_batches=2)
    assert pretrain(again)['step'] == 6
    assert os.path.isdir('runs/x/step-0000006')


# -- settings checked at parse time, naming the flag ------------------------------------------
@pytest.mark.parametrize('module,args,message', [
    ('bort.pretrain.prepare', ['--shard_rows', '0'], '--shard_rows must be >= 1, got 0'),
    ('bort.pretrain.prepare', ['--mask_ratio', '0'], '--mask_ratio must be in (0, 1], got 0.0'),
    ('bort.pretrain.prepare', ['--max_seq_length', '2'], '--max_seq_length must be >= 3'),
    ('bort.pretrain.mlm_head', ['--learning_rate', '-1'], '--learning_rate must be > 0'),
    ('bort.pretrain.mlm_head', ['--steps', '0'], '--steps must be >= 1, got 0'),
    ('bort.inference.quantize', ['--calib_rows', '0'], '--calib_rows must be >= 1, got 0'),
    ('bort.inference.quantize', ['--percentile', '40'], '--percentile must be in (50, 100]'),
    ('bort.inference.predict', ['--batch_size', '-4'], '--batch_size must be >= 1, got -4'),
])
def test_command_settings_are_refused_at_parse_time(module, args, message, capsys):
    import importlib
    main = importlib.import_module(module).main
    required = {'bort.pretrain.prepare': ['--tokenizer', 't', '--output', 'o', 'in.txt'],
                'bort.pretrain.mlm_head': ['--model', 'm', '--corpus', 'c', '--out', 'o'],
                'bort.inference.quantize': ['--model', 'm', '--calib_text', 'c', '--out', 'o'],
                'bort.inference.predict': ['--model', 'm', '--input', 'i', '--output', 'o']}
    with pytest.raises(SystemExit) as exit_info:
        main(required[module] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('config,flag', [
    (PrepConfig(num_workers=0), '--num_workers'), (PrepConfig(eval_fraction=1.0),
                                                   '--eval_fraction'),
])
def test_prep_config_in_code_is_checked(config, flag):
    with pytest.raises(ConfigError, match=f'^{flag} must be'):
        config.validate()


def test_agora_settings_are_checked():
    from bort.finetune.config import AgoraConfig
    for changes, flag in [({'lrs': [1e-4, 0.0]}, '--lrs'), ({'batch_sizes': [-4]},
                                                            '--batch_sizes'),
                          ({'copies': 0}, '--copies'), ({'transform_fraction': 0.0},
                                                        '--transform_fraction'),
                          ({'seeds': []}, '--seeds'), ({'prune': 'best'}, '--prune'),
                          ({'chs': '{"lr": 1}'}, '--chs')]:
        with pytest.raises(ConfigError, match=f'^{flag} '):
            AgoraConfig(teacher='t', **changes).validate()


@pytest.mark.parametrize('changes,message', [
    ({'num_layers': 100_000}, r'num_layers must be at most 1024, got 100000'),
    ({'units': 2 ** 30, 'num_heads': 1}, r'units must be at most 65536, got 1073741824'),
    ({'vocab_size': 2 ** 40}, r'vocab_size must be at most 16777216'),
    ({'num_layers': 1024, 'units': 65536, 'hidden_size': 65536},
     r'about 2\.6e\+13 parameters .* at most 2e\+10'),
])
def test_absurd_arch_sizes_are_refused_before_allocating(tmp_path, tiny_arch, changes, message):
    path = tmp_path / 'arch.json'
    path.write_text(json.dumps(dict(tiny_arch.to_dict(), **changes)))
    with pytest.raises(ArchitectureError, match=rf'{path}: {message}'):
        load_arch(str(path))
