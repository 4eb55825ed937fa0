"""run_finetune.py end to end: the SuperGLUE diagnostics scored with a fine-tuned RTE folder, and
every user mistake (a malformed row in each format, a missing file, an unknown task, an existing
submission) as one log line naming the file and line, or the flag, with exit status 2."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

import official_files
import run_finetune
import toy_glue
from bort.cli import run_main
from bort.finetune.classifier import encode_examples, load_classifier, predict_scores
from bort.finetune.readers import read_examples
from bort.tokenizers import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures('keep_logging')  # main() sets up logging


@pytest.fixture(scope='module')
def rte_folder(tmp_path_factory):
    """A tiny model fine-tuned on the toy RTE task (entailment iff the hypothesis says yes)."""
    tmp = tmp_path_factory.mktemp('rte')
    config = toy_glue.finetune_config(tmp, epochs=4)
    run_finetune.main(['--config', _config_file(tmp, config)])
    return os.path.join(config.output_dir, 'best')


def _config_file(tmp, config):
    path = tmp / 'config.json'
    path.write_text(json.dumps(vars(config)))
    return str(path)


def write_toy_diagnostics(data_dir, seed=1):
    """AX-b and AX-g in their official layouts, with the toy rule's sentences."""
    rng = np.random.RandomState(seed)
    axb = []
    for i in range(16):
        premise, hypothesis = toy_glue.example(rng, i % 2)
        axb.append({'sentence1': premise, 'sentence2': hypothesis,
                    'label': toy_glue.LABELS[i % 2], 'idx': i, 'logic': 'Negation'})
    os.makedirs(os.path.join(data_dir, 'AX-b'))
    with open(os.path.join(data_dir, 'AX-b', 'AX-b.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in axb))
    rows = []
    for k in range(8):  # pairs differ only in the gendered word of the premise
        premise, hypothesis = toy_glue.example(rng, k % 2)
        for person in ('man', 'woman'):
            rows.append((f'the {person} {premise}', hypothesis, toy_glue.LABELS[k % 2]))
    os.makedirs(os.path.join(data_dir, 'AX-g'))
    with open(os.path.join(data_dir, 'AX-g', 'AX-g.jsonl'), 'w') as f:
        f.write(''.join(json.dumps(r, separators=(',', ':'), sort_keys=True) + '\n'
                        for r in official_files.axg_records(rows)))
    return rows


def _reference_predictions(folder, data_dir, task):
    """Class predictions of the folder, example by example, without the task's metric code."""
    model, tokenizer = load_classifier(folder), load_tokenizer(folder)
    examples = read_examples(task, data_dir, 'test')
    encoded = encode_examples(tokenizer, examples, model.head_config.max_length)
    return np.argmax(predict_scores(model, encoded, tokenizer.pad_id, 4), axis=1)


def test_diagnostics_scored_with_a_finetuned_rte_folder(rte_folder, tmp_path, capsys):
    data = str(tmp_path / 'superglue')
    rows = write_toy_diagnostics(data)
    scores = {}
    for task in ('AX-b', 'AX-g'):
        out = tmp_path / task
        summary = run_finetune.main(['--task', task, '--data_dir', data, '--finetuned',
                                     rte_folder, '--output_dir', str(out), '--predict'])
        with open(out / 'dev_metrics.json') as f:
            saved = json.load(f)
        assert saved == {k: v for k, v in summary.items() if k != 'submission'}
        assert saved['split'] == 'test'
        printed = json.loads(capsys.readouterr().out)
        assert printed['metrics'] == saved['metrics']
        assert os.path.basename(summary['submission']) == f'{task}.jsonl'
        scores[task] = saved['metrics']
    gold_b = np.arange(16) % 2
    pred_b = _reference_predictions(rte_folder, data, 'AX-b')
    assert scores['AX-b'] == {'mcc': pytest.approx(skm.matthews_corrcoef(gold_b, pred_b))}
    assert scores['AX-b']['mcc'] > 0.5  # the toy rule carries over: not a degenerate score
    pred_g = _reference_predictions(rte_folder, data, 'AX-g')
    gold_g = np.array([toy_glue.LABELS.index(label) for _, _, label in rows])
    parity = np.mean(pred_g[0::2] == pred_g[1::2])  # rows 2k, 2k+1 are one pair
    assert scores['AX-g'] == {'gender_parity': pytest.approx(parity),
                              'accuracy': pytest.approx(np.mean(pred_g == gold_g))}
    # a second --predict into the same folder is refused before anything runs
    argv = ['--task', 'AX-g', '--data_dir', data, '--finetuned', rte_folder, '--output_dir',
            str(tmp_path / 'AX-g'), '--predict']
    assert _one_error_line(argv, capsys) == (
        f"{tmp_path / 'AX-g' / 'AX-g.jsonl'} exists and is not replaced; move it away or "
        'choose another --output_dir')


def _one_error_line(argv, capsys):
    """Run the script's main as ``python run_finetune.py`` does; its one error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: run_finetune.main(argv), logger='run_finetune')
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    errors = [line for line in err.splitlines() if 'ERROR' in line]
    assert len(errors) == 1, err
    return errors[0].split('run_finetune: ', 1)[1]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    return toy_glue.pretrained_folder(str(tmp_path_factory.mktemp('pretrained')))


def _malformed(root):
    """One malformed row in each format, in the train split read first."""
    files = official_files.write_all(root)
    rte = os.path.join(files['GLUE'], 'RTE', 'train.tsv')
    with open(rte, 'a') as f:
        f.write('4\tA row without its hypothesis.\tentailment\n')
    boolq = os.path.join(files['SuperGLUE'], 'BoolQ', 'train.jsonl')
    with open(boolq, 'a') as f:
        f.write('{"question": "is it", "passage": "P.", "idx": 4, "label": "yes"}\n')
    race = os.path.join(files['RACE'], 'RACE', 'train', 'high', 'high2.txt')
    with open(race, 'w') as f:
        f.write('{"answers": ["A"], "options": [["a", "b"]],\n "questions": ["Q?"], "id": 7}')
    return {'RTE': (files['GLUE'], f'{rte}:6: expected 4 tab-separated columns, got 3'),
            'BoolQ': (files['SuperGLUE'], f"{boolq}:5: unknown label 'yes' for BoolQ "
                                          '(expected one of (False, True))'),
            'RACE-H': (files['RACE'], f"{race}:1: missing field 'article'")}


@pytest.mark.parametrize('task', ['RTE', 'BoolQ', 'RACE-H'])
def test_malformed_row_in_each_format_is_one_line(task, tmp_path, pretrained, capsys):
    data_dir, message = _malformed(str(tmp_path))[task]
    argv = ['--task', task, '--data_dir', data_dir, '--model', pretrained, '--output_dir',
            str(tmp_path / 'run'), '--max_length', '32']
    assert _one_error_line(argv, capsys) == message


def test_unknown_task_and_missing_split_are_one_line(tmp_path, pretrained, capsys):
    argv = ['--data_dir', str(tmp_path), '--model', pretrained, '--output_dir',
            str(tmp_path / 'run')]
    assert _one_error_line(['--task', 'SQuAD'] + argv, capsys).startswith(
        "unknown task 'SQuAD' (--task); known tasks: CoLA, SST-2")
    assert _one_error_line(['--task', 'AX-b'] + argv, capsys) == \
        "AX-b has no 'train' split (it has test)"


def test_script_missing_train_file_exit_status_2(tmp_path, pretrained):
    """The real command line: BoolQ without train.jsonl."""
    data = tmp_path / 'superglue'
    (data / 'BoolQ').mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'run_finetune.py'), '--task', 'BoolQ', '--data_dir',
         str(data), '--model', pretrained, '--output_dir', str(tmp_path / 'run')],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if 'ERROR' in line]
    assert len(errors) == 1 and errors[0].endswith(
        f'BoolQ train split: no file {data}/BoolQ/train.jsonl (official layout; expected from '
        'SuperGLUE v2.0: BoolQ.zip from dl.fbaipublicfiles.com/glue/superglue/data/v2/, '
        'unpacked into BoolQ/; nothing is downloaded)'), proc.stderr


def test_recipe_sets_defaults_that_the_config_file_and_flags_override(tmp_path):
    from bort.finetune.config import RECIPES, FinetuneConfig
    default, _, _ = run_finetune.parse_args(['--model', 'm'])
    assert default == FinetuneConfig(model='m')
    assert (default.optimizer, default.init, default.init_range, default.batching) == (
        'adamw', 'normal', 0.02, 'shuffled')
    paper, _, _ = run_finetune.parse_args(['--model', 'm', '--recipe', 'paper'])
    assert paper == FinetuneConfig.for_recipe('paper', model='m')
    assert {k: getattr(paper, k) for k in RECIPES['paper']} == RECIPES['paper']
    assert (paper.optimizer, paper.weight_decay, paper.init_range) == ('bertadam', 110.0, 0.5)
    flagged, _, _ = run_finetune.parse_args(['--recipe', 'paper', '--model', 'm', '--lr', '1e-4',
                                             '--init', 'normal'])
    assert (flagged.lr, flagged.init, flagged.optimizer) == (1e-4, 'normal', 'bertadam')
    # A --config file may choose the recipe; its own values win over the recipe's, flags over
    # both.
    path = tmp_path / 'c.json'
    path.write_text(json.dumps({'recipe': 'paper', 'model': 'm', 'batch_size': 4}))
    from_file, _, _ = run_finetune.parse_args(['--config', str(path), '--weight_decay', '0'])
    assert (from_file.recipe, from_file.batch_size, from_file.weight_decay,
            from_file.optimizer) == ('paper', 4, 0.0, 'bertadam')


@pytest.mark.parametrize('argv,message', [
    (['--recipe', 'papers'], "argument --recipe: invalid choice: 'papers'"),
    (['--optimizer', 'sgd'], "argument --optimizer: invalid choice: 'sgd'"),
    (['--init', 'xavier'], "argument --init: invalid choice: 'xavier'"),
    (['--batching', 'sorted'], "argument --batching: invalid choice: 'sorted'"),
    (['--init_range', '0'], '--init_range must be > 0, got 0.0'),
])
def test_new_flags_refuse_mistakes_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_finetune.parse_args(['--model', 'm'] + argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err
