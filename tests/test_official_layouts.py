"""Every task read, scored and submitted from files in its benchmark's official layout.

The files (:mod:`official_files`) are tiny copies of the released formats: GLUE 1.0 TSV,
SuperGLUE v2.0 JSONL (MultiRC under ``passage``, ReCoRD with entity spans, AX-g's pairs), RACE's
one-JSON-per-article tree. For each task the expected example counts, the metrics of a
prediction that gets exactly the first original question wrong, and the submission are worked
out by hand below.
"""
import json
import math

import numpy as np
import pytest

import official_files
from bort.errors import DataFormatError
from bort.finetune.castings import aggregate
from bort.finetune.metrics import compute_metrics
from bort.finetune.readers import read_examples
from bort.finetune.submission import format_submission
from bort.finetune.tasks import TASKS, get_task

_MCC_2_1_1_0 = 2 / math.sqrt(12)  # tp 2, tn 1, fp 1, fn 0 (or tp 1, tn 2, fp 0, fn 1)

#: task -> (examples in train/dev/test, metrics with the first question wrong,
#:          first submission line with every prediction class 1, submission lines)
CASES = {
    'CoLA': ((4, 4, 2), {'mcc': _MCC_2_1_1_0}, '0\t1', 3),
    'SST-2': ((4, 4, 2), {'accuracy': 0.75}, '0\t1', 3),
    'MRPC': ((4, 4, 2), {'f1': 2 / 3, 'accuracy': 0.75}, '0\t1', 3),
    # labels 1..4, predictions 2, 2, 3, 4: cov 3.5, var 2.75 and 5; rank cov 4.5, var 4.5, 5
    'STS-B': ((4, 4, 2), {'pearson': 3.5 / math.sqrt(13.75), 'spearman': 4.5 / math.sqrt(22.5)},
              '0\t3.000', 3),
    'QQP': ((4, 4, 2), {'f1': 2 / 3, 'accuracy': 0.75}, '0\t1', 3),
    'MNLI-m': ((4, 4, 2), {'accuracy': 0.75}, '0\tneutral', 3),
    'MNLI-mm': ((4, 4, 2), {'accuracy': 0.75}, '0\tneutral', 3),
    'QNLI': ((4, 4, 2), {'accuracy': 0.75}, '0\tentailment', 3),
    'RTE': ((4, 4, 2), {'accuracy': 0.75}, '0\tentailment', 3),
    'WNLI': ((4, 4, 2), {'accuracy': 0.75}, '0\t1', 3),
    # 3 classes, labels 0 1 2 0, predictions 1 1 2 0: (3·4 - t·p 5) / sqrt((16-6)(16-6))
    'AX': ((None, 4, 2), {'mcc': 0.7}, '0\tneutral', 3),
    'BoolQ': ((4, 4, 2), {'accuracy': 0.75}, '{"idx": 0, "label": "true"}', 2),
    # per class F1 2/3, 2/3, 1
    'CB': ((4, 4, 2), {'macro_f1': 7 / 9, 'accuracy': 0.75},
           '{"idx": 0, "label": "contradiction"}', 2),
    'COPA': ((4, 4, 4), {'accuracy': 0.5}, '{"idx": 0, "label": 0}', 2),
    # answers 1 0 0 | 1 predicted 0 0 0 | 1: tp 1, fn 1; question 314 right
    'MultiRC': ((4, 4, 4), {'f1a': 2 / 3, 'em': 0.5},
                '{"idx": 137, "passage": {"questions": [{"idx": 313, "answers": [{"idx": 1617, '
                '"label": 1}, {"idx": 1618, "label": 1}, {"idx": 1619, "label": 1}]}, '
                '{"idx": 314, "answers": [{"idx": 1620, "label": 1}]}]}}', 1),
    'ReCoRD': ((4, 4, 2), {'answer_f1': 0.5, 'answer_em': 0.5}, '{"idx": 0, "label": "Paris"}',
               1),
    'SuperGLUE-RTE': ((4, 4, 2), {'accuracy': 0.75}, '{"idx": 0, "label": "entailment"}', 2),
    'WiC': ((4, 4, 2), {'accuracy': 0.75}, '{"idx": 0, "label": "true"}', 2),
    'WSC': ((2, 2, 2), {'accuracy': 0.5}, '{"idx": 0, "label": "True"}', 2),
    'AX-b': ((None, None, 4), {'mcc': _MCC_2_1_1_0}, '{"idx": 0, "label": "entailment"}', 4),
    # pairs (1, 0) (1, 1) (1, 1): parity 2/3; 5 of 6 right
    'AX-g': ((None, None, 6), {'gender_parity': 2 / 3, 'accuracy': 5 / 6},
             '{"idx": 0, "label": "entailment"}', 6),
    'RACE-H': ((12, 12, 12), {'accuracy': 2 / 3}, '{"id": "high1.txt", "answers": ["A", "A"]}',
               2),
    'RACE-M': ((8, 8, 8), {'accuracy': 0.5}, '{"id": "middle1.txt", "answers": ["A", "A"]}', 1),
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return official_files.write_all(str(tmp_path_factory.mktemp('official')))


def test_every_task_has_a_case():
    assert set(CASES) == set(TASKS)


def first_wrong_scores(spec, examples):
    """Gold scores, except that the first original question gets a wrong answer."""
    if spec.is_regression:
        scores = np.array([ex.label for ex in examples], dtype=float)
        scores[0] += 1.0
        return scores
    scores = np.eye(spec.num_classes)[[ex.label for ex in examples]]
    if spec.casting in ('copa', 'race', 'record'):  # one candidate per group wins
        wrong = next(i for i, ex in enumerate(examples)
                     if ex.group == examples[0].group and ex.label == 0)
        scores[wrong] = [0.0, 2.0]
    else:
        scores[0] = np.roll(scores[0], 1)
    return scores


@pytest.mark.parametrize('task', sorted(CASES))
def test_reads_scores_and_submits_the_official_layout(data, task):
    spec = get_task(task)
    counts, expected, first_line, lines = CASES[task]
    data_dir = data[spec.benchmark]
    for split, count in zip(('train', 'dev', 'test'), counts):
        assert (split in spec.files) == (count is not None), split
        if count is not None:
            assert len(read_examples(spec, data_dir, split)) == count, split
    examples = read_examples(spec, data_dir, spec.eval_split)
    if not spec.is_regression:  # gold scores give perfect metrics
        gold = aggregate(spec, examples, np.eye(spec.num_classes)[[ex.label for ex in examples]])
        perfect = compute_metrics(spec, gold.predictions, gold.labels, gold.groups)
        assert perfect == pytest.approx({name: 1.0 for name in spec.metrics})
    preds = aggregate(spec, examples, first_wrong_scores(spec, examples))
    metrics = compute_metrics(spec, preds.predictions, preds.labels, preds.groups)
    assert list(metrics) == list(spec.metrics)
    assert metrics == pytest.approx(expected)
    test = read_examples(spec, data_dir, 'test')
    constant = (np.full(len(test), 3.0) if spec.is_regression
                else np.tile(np.eye(spec.num_classes)[1], (len(test), 1)))
    out = aggregate(spec, test, constant)
    text = format_submission(spec, out.ids, out.predictions)
    body = text.splitlines()
    if spec.submission_format == 'glue_tsv':
        assert body[0] == 'index\tprediction'
        body = body[1:]
    assert body[0] == first_line
    assert len(text.splitlines()) == lines and text.endswith('\n')


def test_multirc_v1_paragraph_reads_like_v2_passage(data, tmp_path):
    v2 = read_examples('MultiRC', data['SuperGLUE'], 'dev')
    record = official_files._multirc(27, True)
    record['paragraph'] = record.pop('passage')
    (tmp_path / 'MultiRC').mkdir()
    (tmp_path / 'MultiRC/val.jsonl').write_text(json.dumps(record) + '\n')
    v1 = read_examples('MultiRC', tmp_path, 'dev')
    assert [(e.text_a, e.text_b, e.label, e.idx) for e in v1] == \
        [(e.text_a, e.text_b, e.label, e.idx) for e in v2]
    assert v2[0].idx == (27, 313, 1617) and v2[0].text_b == 'Who ate? Sam'
    del record['paragraph']
    (tmp_path / 'MultiRC/val.jsonl').write_text(json.dumps(record) + '\n')
    with pytest.raises(DataFormatError, match=r"val\.jsonl:1: missing field 'passage'"):
        read_examples('MultiRC', tmp_path, 'dev')


def test_record_v2_candidates_answers_and_unlabelled_test(data):
    dev = read_examples('ReCoRD', data['SuperGLUE'], 'dev')
    assert [(e.group, e.choice, e.label) for e in dev] == [
        (0, 'Paris', 0), (0, 'Rome', 1), (1, 'Paris', 1), (1, 'Rome', 0)]
    assert dev[1].text_b == 'Rome was the winner 0.' and dev[1].gold == ('Rome',)
    test = read_examples('ReCoRD', data['SuperGLUE'], 'test')
    assert [(e.choice, e.label, e.gold) for e in test] == [('Paris', None, None),
                                                         ('Rome', None, None)]


def test_race_tree_levels_and_natural_order(data):
    high = read_examples('RACE-H', data['RACE'], 'test')
    assert [e.idx for e in high[::4]] == [('high1.txt', 0), ('high1.txt', 1), ('high2.txt', 0)]
    assert high[0].text_b == 'Who is Tom ?' and high[0].gold == 'B'
    assert {e.idx[0] for e in read_examples('RACE-M', data['RACE'], 'train')} == {'middle1.txt'}


def test_axg_pairs_are_consecutive_rows_not_pair_ids(data):
    examples = read_examples('AX-g', data['SuperGLUE'], 'test')
    assert [e.group for e in examples] == [0, 0, 2, 2, 4, 4]
    # hand count: predictions per pair (0, 1) (1, 1) (0, 1) -> one pair of three agrees;
    # gold 0 0 1 1 1 1 -> rows 0, 2, 3, 5 right
    scores = np.eye(2)[[0, 1, 1, 1, 0, 1]]
    preds = aggregate('AX-g', examples, scores)
    assert compute_metrics('AX-g', preds.predictions, preds.labels, preds.groups) == \
        pytest.approx({'gender_parity': 1 / 3, 'accuracy': 4 / 6})


@pytest.mark.parametrize('rows,line,message', [
    (official_files.AXG[:5], 5, 'the last row has no partner'),
    (official_files.AXG[:1] + official_files.AXG[2:4], 2,
     "consecutive pairs with the same 'hypothesis'; this row's differs from line 1's"),
])
def test_axg_broken_pairs_name_file_and_line(tmp_path, rows, line, message):
    (tmp_path / 'AX-g').mkdir()
    (tmp_path / 'AX-g/AX-g.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in official_files.axg_records(rows)))
    with pytest.raises(DataFormatError, match=rf'AX-g\.jsonl:{line}: AX-g rows come in .*') as err:
        read_examples('AX-g', tmp_path, 'test')
    assert message in str(err.value)
