"""One way to name models in every command: ``minilm``, a project model folder or a Hugging Face
folder; the resolved folder logged once; anything else one clear error."""
import logging
import os
import sys

import pytest

import toy_glue
from bort.pretrain import default_teacher
from bort.pretrain.default_teacher import resolve_model_dir
from bort.pretrain.names import cache_root, minilm_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import run_finetune  # noqa: E402  (scripts at the repository root)
import run_pretraining  # noqa: E402


@pytest.fixture
def fake_minilm(tmp_path, monkeypatch):
    """``minilm`` stands for a tiny pretrained folder (the real build takes minutes)."""
    folder = toy_glue.pretrained_folder(str(tmp_path / 'built'))
    built = []

    def adapted(cache_dir, comm=None, **_):
        built.append(cache_dir)
        return folder
    monkeypatch.setattr(default_teacher, 'adapted_minilm_teacher', adapted)
    monkeypatch.setenv('BORT_CACHE', str(tmp_path / 'cache'))
    return folder, built


def test_cache_root_follows_bort_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('BORT_CACHE', str(tmp_path))
    assert cache_root() == str(tmp_path)
    monkeypatch.delenv('BORT_CACHE')
    assert cache_root() == os.path.join(os.path.expanduser('~'), '.cache', 'bort')


def test_names_resolve_and_the_folder_is_logged_once(tmp_path, fake_minilm, caplog):
    folder, built = fake_minilm
    with caplog.at_level(logging.INFO):
        assert resolve_model_dir('minilm', what='--teacher') == folder
    assert built == [os.path.join(str(tmp_path / 'cache'), 'teachers')]
    assert [r.getMessage() for r in caplog.records] == [f'--teacher minilm is {folder}']
    caplog.clear()
    with caplog.at_level(logging.INFO):  # a project folder is itself: nothing to say
        assert resolve_model_dir(folder) == folder
    assert not caplog.records
    with pytest.raises(FileNotFoundError, match=r"--model 'nowhere': not 'minilm'"):
        resolve_model_dir('nowhere', what='--model')
    tokenizer_only = tmp_path / 'tok'
    tokenizer_only.mkdir()
    assert resolve_model_dir(str(tokenizer_only), other_folders=True) == str(tokenizer_only)


def test_run_finetune_takes_minilm(tmp_path, fake_minilm):
    folder, built = fake_minilm
    config = toy_glue.finetune_config(tmp_path, epochs=1)
    summary = run_finetune.main(['--task', 'RTE', '--data_dir', config.data_dir, '--model',
                                 'minilm', '--output_dir', str(tmp_path / 'ft'), '--max_length',
                                 '32', '--batch_size', '8', '--epochs', '1'])
    assert built and summary['task'] == 'RTE' and 'accuracy' in summary['metrics']


def test_run_pretraining_takes_minilm_as_teacher(tmp_path, fake_minilm, monkeypatch):
    from pretrain_helpers import arch_json, student_arch
    folder, built = fake_minilm
    seen = {}
    monkeypatch.setattr('bort.pretrain.loop.pretrain',
                        lambda config, comm: seen.setdefault('config', config) and {})
    run_pretraining.main(['--data', 'shards', '--teacher', 'minilm', '--init_from', folder,
                          '--arch', arch_json(student_arch(99)), '--output_dir',
                          str(tmp_path / 'run')])
    assert seen['config'].teacher == folder and seen['config'].init_from == folder


def test_prepare_reads_minilm_tokenizer(tmp_path):
    try:
        minilm_dir()
    except FileNotFoundError as err:
        pytest.skip(f'{err}')
    from bort.pretrain import prepare
    text = tmp_path / 'corpus.txt'
    text.write_text('A man is eating food.\nThe cat sleeps.\n\nAnother document here.\n')
    meta = prepare.main(['--tokenizer', 'minilm', '--output', str(tmp_path / 'data'),
                         str(text), '--max-seq-length', '32', '--num-workers', '1'])
    assert meta['vocab_size'] == 30522
