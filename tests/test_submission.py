"""Submission files: exact content in each leaderboard format, and no silent overwrite."""
import json
import os

import numpy as np
import pytest

from bort.errors import UserError
from bort.finetune.castings import aggregate
from bort.finetune.readers import read_examples
from bort.finetune.submission import format_submission, submission_path, write_submission
from bort.finetune.tasks import TASKS


def test_glue_classification_tsv(tmp_path):
    path = write_submission('RTE', [0, 1, 2], [1, 0, 1], tmp_path)
    assert path == tmp_path / 'RTE.tsv'
    assert path.read_text() == ('index\tprediction\n0\tentailment\n1\tnot_entailment\n'
                                '2\tentailment\n')
    assert write_submission('CoLA', [0, 1], np.array([1, 0]), tmp_path).read_text() == \
        'index\tprediction\n0\t1\n1\t0\n'
    assert format_submission('MNLI-mm', [0, 1, 2], [0, 1, 2]) == \
        'index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n'
    assert submission_path('MNLI-m', tmp_path).name == 'MNLI-m.tsv'
    assert submission_path('AX', tmp_path).name == 'AX.tsv'


def test_stsb_floats_clipped_to_range_at_full_precision(tmp_path):
    text = write_submission('STS-B', [0, 1, 2], [3.14159, -0.2, 5.7], tmp_path).read_text()
    assert text == 'index\tprediction\n0\t3.14159\n1\t0.000\n2\t5.000\n'  # 3 decimals where exact


def test_stsb_submission_keeps_pearson_on_a_narrow_range(tmp_path):
    # Scores 1e-4 apart: rounding to 3 decimals would collapse them and change Pearson.
    rng = np.random.RandomState(0)
    scores = (2.5 + 1e-4 * rng.randn(50)).astype(np.float32)
    gold = scores + 1e-5 * rng.randn(50)
    path = write_submission('STS-B', list(range(50)), scores, tmp_path)
    written = np.array([float(line.split('\t')[1]) for line in path.read_text().split('\n')[1:-1]])
    np.testing.assert_array_equal(written, scores.astype(np.float64))
    assert np.corrcoef(written, gold)[0, 1] == np.corrcoef(scores, gold)[0, 1]


def test_superglue_label_spellings():
    assert format_submission('BoolQ', [0, 1], [1, 0]) == \
        '{"idx": 0, "label": "true"}\n{"idx": 1, "label": "false"}\n'
    assert format_submission('WiC', [3], [0]) == '{"idx": 3, "label": "false"}\n'
    assert format_submission('WSC', [0, 1], [1, 0]) == \
        '{"idx": 0, "label": "True"}\n{"idx": 1, "label": "False"}\n'
    assert format_submission('CB', [0, 1, 2], [0, 1, 2]) == (
        '{"idx": 0, "label": "entailment"}\n{"idx": 1, "label": "contradiction"}\n'
        '{"idx": 2, "label": "neutral"}\n')
    assert format_submission('SuperGLUE-RTE', [0], [0]) == \
        '{"idx": 0, "label": "not_entailment"}\n'
    assert format_submission('AX-b', [0], [1]) == '{"idx": 0, "label": "entailment"}\n'
    assert format_submission('AX-g', [np.int64(5)], [np.int64(1)]) == \
        '{"idx": 5, "label": "entailment"}\n'
    assert format_submission('COPA', [0, 1], [1, 0]) == \
        '{"idx": 0, "label": 1}\n{"idx": 1, "label": 0}\n'
    assert TASKS['SuperGLUE-RTE'].submission_file == 'RTE.jsonl'


def test_multirc_nested():
    ids = [(0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3)]
    text = format_submission('MultiRC', ids, [1, 0, 1, 0])
    assert [json.loads(line) for line in text.splitlines()] == [
        {'idx': 0, 'passage': {'questions': [
            {'idx': 0, 'answers': [{'idx': 0, 'label': 1}, {'idx': 1, 'label': 0}]},
            {'idx': 1, 'answers': [{'idx': 2, 'label': 1}]}]}},
        {'idx': 1, 'passage': {'questions': [{'idx': 2, 'answers': [{'idx': 3, 'label': 0}]}]}}]
    assert text.splitlines()[1] == ('{"idx": 1, "passage": {"questions": [{"idx": 2, "answers": '
                                    '[{"idx": 3, "label": 0}]}]}}')


def test_record_and_race():
    assert format_submission('ReCoRD', [7, 8], ['Rome', 'Paris']) == \
        '{"idx": 7, "label": "Rome"}\n{"idx": 8, "label": "Paris"}\n'
    ids = [('high2.txt', 1), ('high2.txt', 0), ('high10.txt', 0)]
    assert format_submission('RACE-H', ids, ['D', 'C', 'A']) == (
        '{"id": "high2.txt", "answers": ["C", "D"]}\n{"id": "high10.txt", "answers": ["A"]}\n')
    assert submission_path('RACE-M', '/x').name == 'RACE-M.jsonl'


def test_refuses_to_overwrite(tmp_path):
    path = write_submission('SST-2', [0], [1], tmp_path / 'out')
    with pytest.raises(FileExistsError, match='SST-2.tsv exists and is not replaced') as err:
        write_submission('SST-2', [0], [0], tmp_path / 'out')
    assert isinstance(err.value, UserError)
    assert path.read_text() == 'index\tprediction\n0\t1\n'
    write_submission('SST-2', [0], [0], tmp_path / 'out', overwrite=True)
    assert path.read_text() == 'index\tprediction\n0\t0\n'
    assert sorted(os.listdir(tmp_path / 'out')) == ['SST-2.tsv']  # no temporary left behind


def test_bad_inputs():
    with pytest.raises(ValueError, match='2 ids but 1 predictions'):
        format_submission('RTE', [0, 1], [1])
    with pytest.raises(ValueError, match='no predictions'):
        format_submission('RTE', [], [])
    with pytest.raises(ValueError, match='no class with index 3'):
        format_submission('RTE', [0], [3])


def test_read_aggregate_write_round_trip(tmp_path):
    record = {'idx': 4, 'source': 's', 'passage': {
        'text': 'Ann met Bob.', 'entities': [{'start': 0, 'end': 2}, {'start': 8, 'end': 10}]},
        'qas': [{'query': '@placeholder was met.', 'idx': 9}]}
    (tmp_path / 'ReCoRD').mkdir()
    (tmp_path / 'ReCoRD/test.jsonl').write_text(json.dumps(record) + '\n')
    examples = read_examples('ReCoRD', tmp_path, 'test')
    agg = aggregate('ReCoRD', examples, [[0.0, 0.1], [0.0, 0.9]])
    assert agg.labels is None
    path = write_submission('ReCoRD', agg.ids, agg.predictions, tmp_path / 'sub')
    assert path.read_text() == '{"idx": 9, "label": "Bob"}\n'
