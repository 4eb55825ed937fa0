"""The commands as a user meets them: a refused run touches nothing of the run it met, Ctrl-C
at any moment ends in one line, and every damaged or empty input is named before hours of work.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import toy_glue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.usefixtures('keep_logging')  # main() sets up logging


def _config_file(tmp_path, config, name='config.json'):
    path = tmp_path / name
    path.write_text(json.dumps(vars(config)))
    return str(path)


def test_a_refused_finetuning_run_writes_nothing_into_the_first_runs_log(tmp_path, holder):
    import run_finetune
    from bort.cli import run_main
    config = toy_glue.finetune_config(tmp_path, epochs=1)
    os.makedirs(config.output_dir)
    log_txt = os.path.join(config.output_dir, 'log.txt')
    with open(log_txt, 'w') as f:
        f.write('the first run\n')
    holder(config.output_dir)
    argv = ['--config', _config_file(tmp_path, config)]
    with pytest.raises(SystemExit) as exit_info:  # as the script runs it
        run_main(lambda: run_finetune.main(argv), logger='run_finetune')
    assert exit_info.value.code == 2
    with open(log_txt) as f:
        assert f.read() == 'the first run\n'


def test_a_finetuning_run_refused_for_bad_input_leaves_no_folder(tmp_path):
    import run_finetune
    from bort.errors import DataFormatError
    config = toy_glue.finetune_config(tmp_path, epochs=1)
    os.remove(os.path.join(config.data_dir, 'RTE', 'train.tsv'))
    with pytest.raises((DataFormatError, FileNotFoundError), match='train.tsv'):
        run_finetune.main(['--config', _config_file(tmp_path, config)])
    assert not os.path.exists(config.output_dir)


def test_an_empty_dev_file_is_named_before_training(tmp_path):
    from bort.errors import DataFormatError
    from bort.finetune import finetune
    config = toy_glue.finetune_config(tmp_path, epochs=1)
    dev = os.path.join(config.data_dir, 'RTE', 'dev.tsv')
    with open(dev) as f:
        header = f.readline()
    with open(dev, 'w') as f:
        f.write(header)
    with pytest.raises(DataFormatError, match=f'{dev}: no RTE dev example'):
        finetune(config)
    assert not os.path.exists(config.output_dir)  # refused before a step (or a checkpoint)


def test_copa_majority_warning_counts_questions_not_pairs(caplog):
    import numpy as np
    from bort.finetune.loop import warn_if_majority
    from bort.finetune.tasks import Example, get_task
    spec = get_task('COPA')
    examples, scores = [], []
    for q in range(100):
        gold = 0 if q < 57 else 1  # 57 questions answered by choice 0
        for choice in (0, 1):
            examples.append(Example(f'copa-{q}-{choice}', 'premise', 'choice',
                                    int(choice == gold), group=q, idx=q, choice=choice,
                                    gold=gold))
            # always prefers choice 0: a constant answer
            scores.append([0.0, 1.0] if choice == 0 else [1.0, 0.0])
    with caplog.at_level(logging.WARNING):
        assert warn_if_majority(spec, examples, np.array(scores))
    message = caplog.records[-1].getMessage()
    assert 'dev accuracy 0.5700 over 100 questions with 1 distinct prediction' in message
    assert 'the most frequent answer alone scores 0.5700' in message


@pytest.mark.parametrize('delay', [0.3, 0.8, 1.5])
def test_ctrl_c_in_the_first_moments_of_run_pretraining_is_one_line(tmp_path, delay):
    """While MXNet is still being imported (the first second or two), where a KeyboardInterrupt
    once landed inside an import that printed its traceback (frames in importlib only) and went
    on: the start-up imports now run under :func:`bort.cli.ctrl_c_exits_at_once`."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('BORT_DEBUG', None)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'run_pretraining.py'),
                             '--data', str(tmp_path / 'absent'), '--kd_weight', '0',
                             '--output_dir', str(tmp_path / 'run')],
                            stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert 'Traceback' not in err, err
    assert proc.returncode in (130, 2), (proc.returncode, err)  # 2: it got to the data check
