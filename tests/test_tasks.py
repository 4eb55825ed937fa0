"""Task table, readers in every official layout, castings and their inverses."""
import json

import numpy as np
import pytest

from bort.errors import DataFormatError, UserError
from bort.finetune.castings import COPA_QUESTIONS, aggregate, balance_labels
from bort.finetune.readers import label_counts, read_examples
from bort.finetune.tasks import TASKS, Example, TaskSpec, TsvColumns, get_task, task_names


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return path


def write_jsonl(path, records):
    return write(path, [json.dumps(r) for r in records])


def tsv(*fields):
    return '\t'.join(str(f) for f in fields)


# ------------------------------------------------------------------------------------ table
def test_table_covers_all_23_tasks():
    expected = {'CoLA', 'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI-m', 'MNLI-mm', 'QNLI', 'RTE',
                'WNLI', 'AX', 'BoolQ', 'CB', 'COPA', 'MultiRC', 'ReCoRD', 'SuperGLUE-RTE',
                'WiC', 'WSC', 'AX-b', 'AX-g', 'RACE-H', 'RACE-M'}
    assert set(TASKS) == expected
    assert len(task_names('GLUE')) == 11
    assert len(task_names('superglue')) == 10
    assert task_names('RACE') == ('RACE-H', 'RACE-M')


def test_specs_are_consistent():
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.metrics, name
        assert set(spec.layouts) <= set(spec.files)
        if spec.benchmark != 'RACE':
            assert set(spec.layouts) == set(spec.files), name
        if spec.benchmark == 'GLUE':
            assert spec.submission_file == f'{name}.tsv'
        else:
            assert spec.submission_file.endswith('.jsonl')
    assert TASKS['SuperGLUE-RTE'].submission_file == 'RTE.jsonl'
    assert TASKS['AX-g'].submission_file == 'AX-g.jsonl'
    assert TASKS['STS-B'].is_regression and TASKS['STS-B'].num_classes == 1
    assert TASKS['MNLI-mm'].files['test'] == 'MNLI/test_mismatched.tsv'
    assert TASKS['BoolQ'].files == {'train': 'BoolQ/train.jsonl', 'dev': 'BoolQ/val.jsonl',
                                    'test': 'BoolQ/test.jsonl'}


def test_specs_are_frozen_and_lookup_ignores_case():
    spec = get_task('sst-2')
    assert spec is TASKS['SST-2'] and get_task(spec) is spec
    with pytest.raises(Exception):
        spec.name = 'x'
    with pytest.raises(TypeError):
        spec.files['train'] = 'elsewhere'
    with pytest.raises(KeyError, match='known tasks'):
        get_task('SQuAD')
    assert hash(spec) == hash('SST-2')


def test_label_index_is_type_strict():
    boolq = TASKS['BoolQ']
    assert boolq.label_index(True) == 1
    with pytest.raises(KeyError):
        boolq.label_index(1)
    assert boolq.submission_label(1) == 'true'
    with pytest.raises(ValueError):
        boolq.submission_label(2)


# ------------------------------------------------------------------------------------- GLUE
@pytest.fixture
def glue_dir(tmp_path):
    d = tmp_path / 'glue'
    write(d / 'CoLA/train.tsv', [tsv('gj04', 1, '', 'Our friends will fight.'),
                                 tsv('gj04', 0, '*', 'Us friends fight will.')])
    write(d / 'CoLA/test.tsv', [tsv('index', 'sentence'), tsv(0, 'Bill left.')])
    write(d / 'SST-2/train.tsv', [tsv('sentence', 'label'), tsv('a charming journey ', 1)])
    write(d / 'MRPC/dev.tsv', [tsv('Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'),
                               tsv(1, 11, 12, 'He said so .', 'So he said .')])
    write(d / 'MRPC/test.tsv', [tsv('index', '#1 ID', '#2 ID', '#1 String', '#2 String'),
                                tsv(0, 21, 22, 'A b .', 'B a .')])
    header = tsv('index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2',
                 'sentence1', 'sentence2', 'score')
    write(d / 'STS-B/train.tsv', [header, tsv(0, 'main', 'f', 2012, 1, 'none', 'none',
                                              'A plane takes off.', 'An air plane is taking off.',
                                              '5.000')])
    write(d / 'QQP/train.tsv', [tsv('id', 'qid1', 'qid2', 'question1', 'question2',
                                    'is_duplicate'),
                                tsv(7, 1, 2, 'Why?', 'Why not?', 0),
                                tsv(8, 3, 4, 'broken row'),
                                tsv(9, 5, 6, 'How?', 'How so?', 1)])
    mnli = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse',
            'sentence2_binary_parse', 'sentence1_parse', 'sentence2_parse', 'sentence1',
            'sentence2']
    write(d / 'MNLI/train.tsv', [tsv(*mnli, 'label1', 'gold_label'),
                                 tsv(0, 1, '1e', 'gov', 'p', 'p', 'p', 'p', 'It rains.',
                                     'It is wet.', 'entailment', 'entailment')])
    write(d / 'MNLI/dev_mismatched.tsv',
          [tsv(*mnli, 'label1', 'label2', 'label3', 'label4', 'label5', 'gold_label'),
           tsv(3, 1, '1n', 'fic', 'p', 'p', 'p', 'p', 'A cat.', 'A dog.', 'contradiction',
               'neutral', 'contradiction', 'contradiction', 'contradiction', 'contradiction')])
    write(d / 'MNLI/test_matched.tsv', [tsv(*mnli), tsv(5, 1, '1', 'gov', 'p', 'p', 'p', 'p',
                                                           'Sun.', 'Day.')])
    write(d / 'QNLI/dev.tsv', [tsv('index', 'question', 'sentence', 'label'),
                               tsv(0, 'Who?', 'Him.', 'not_entailment')])
    write(d / 'diagnostic/diagnostic.tsv', [tsv('index', 'sentence1', 'sentence2'),
                                            tsv(0, 'The cat sat.', 'The cat did not sit.')])
    write(d / 'diagnostic/diagnostic-full.tsv',
          [tsv('Lexical Semantics', 'Predicate-Argument Structure', 'Logic', 'Knowledge',
               'Domain', 'Premise', 'Hypothesis', 'Label'),
           tsv('', '', 'Negation', '', 'Artificial', 'The cat sat.', 'The cat did not sit.',
               'contradiction')])
    return d


def test_glue_readers(glue_dir):
    cola = read_examples('CoLA', glue_dir, 'train')
    assert [(e.text_a, e.text_b, e.label, e.idx) for e in cola] == [
        ('Our friends will fight.', None, 1, 0), ('Us friends fight will.', None, 0, 1)]
    assert cola[0].guid == 'CoLA-train-0'
    assert read_examples('CoLA', glue_dir, 'test')[0] == Example(
        'CoLA-test-0', 'Bill left.', None, None, idx=0)
    sst = read_examples('SST-2', glue_dir, 'train')[0]
    assert (sst.text_a, sst.label) == ('a charming journey', 1)
    mrpc = read_examples('MRPC', glue_dir, 'dev')[0]
    assert (mrpc.text_a, mrpc.text_b, mrpc.label) == ('He said so .', 'So he said .', 1)
    mrpc_test = read_examples('MRPC', glue_dir, 'test')[0]
    assert (mrpc_test.text_a, mrpc_test.label, mrpc_test.idx) == ('A b .', None, 0)
    sts = read_examples('STS-B', glue_dir, 'train')[0]
    assert sts.label == 5.0 and isinstance(sts.label, float)
    assert sts.text_b == 'An air plane is taking off.'


def test_mnli_label_is_last_column_in_train_and_dev(glue_dir):
    train = read_examples('MNLI-m', glue_dir, 'train')[0]
    dev = read_examples('MNLI-mm', glue_dir, 'dev')[0]
    test = read_examples('MNLI-m', glue_dir, 'test')[0]
    labels = TASKS['MNLI-m'].labels
    assert labels[train.label] == 'entailment' and labels[dev.label] == 'contradiction'
    assert (dev.text_a, dev.text_b, dev.idx) == ('A cat.', 'A dog.', 3)
    assert (test.text_a, test.label, test.idx) == ('Sun.', None, 5)


def test_ax_reads_unlabelled_test_and_labelled_full_file(glue_dir):
    test = read_examples('AX', glue_dir, 'test')[0]
    assert (test.text_b, test.label, test.idx) == ('The cat did not sit.', None, 0)
    full = read_examples('AX', glue_dir, 'dev')[0]
    assert TASKS['AX'].labels[full.label] == 'contradiction'
    assert TASKS['AX'].model_task == 'MNLI-m'


def test_qqp_skips_broken_rows_others_raise(glue_dir):
    qqp = read_examples('QQP', glue_dir, 'train')
    assert [e.idx for e in qqp] == [7, 9]
    write(glue_dir / 'QNLI/train.tsv', [tsv('index', 'question', 'sentence', 'label'),
                                        tsv(0, 'Who?', 'Him.', 'entailment'),
                                        tsv(1, 'Who?', 'Him.')])
    with pytest.raises(DataFormatError, match=r'QNLI/train\.tsv:3: expected 4') as err:
        read_examples('QNLI', glue_dir, 'train')
    assert err.value.line == 3 and err.value.path.endswith('train.tsv')
    assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)


def test_headerless_cola_checks_column_count(glue_dir):
    write(glue_dir / 'CoLA/dev.tsv', [tsv('gj04', 1, '', 'Fine.'), tsv('gj04', 1, 'Short.')])
    with pytest.raises(DataFormatError, match=r'dev\.tsv:2'):
        read_examples('CoLA', glue_dir, 'dev')


def test_unknown_and_non_numeric_labels(glue_dir):
    write(glue_dir / 'RTE/train.tsv', [tsv('index', 'sentence1', 'sentence2', 'label'),
                                       tsv(0, 'A.', 'B.', 'maybe')])
    with pytest.raises(DataFormatError, match=r"train\.tsv:2: unknown label 'maybe'"):
        read_examples('RTE', glue_dir, 'train')
    header = tsv('index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2',
                 'sentence1', 'sentence2', 'score')
    write(glue_dir / 'STS-B/dev.tsv', [header, tsv(0, 'g', 'f', 1, 1, 's', 's', 'a', 'b', 'x')])
    with pytest.raises(DataFormatError, match=r'dev\.tsv:2: label .x. is not a number'):
        read_examples('STS-B', glue_dir, 'dev')


def test_missing_file_and_split(glue_dir):
    with pytest.raises(FileNotFoundError, match='WNLI/train.tsv.*download_glue_data') as err:
        read_examples('WNLI', glue_dir, 'train')
    assert isinstance(err.value, UserError)
    with pytest.raises(ValueError, match='no .train. split') as err:
        read_examples('AX', glue_dir, 'train')
    assert isinstance(err.value, UserError)
    with pytest.raises(KeyError) as err:
        read_examples('SQuAD', glue_dir, 'train')
    assert isinstance(err.value, UserError) and str(err.value).startswith("unknown task 'SQuAD'")


# -------------------------------------------------------------------------------- SuperGLUE
@pytest.fixture
def sg_dir(tmp_path):
    d = tmp_path / 'superglue'
    write_jsonl(d / 'BoolQ/val.jsonl', [
        {'question': 'is it wet', 'passage': 'It rains.', 'idx': 0, 'label': True},
        {'question': 'is it dry', 'passage': 'It rains.', 'idx': 1, 'label': False}])
    write_jsonl(d / 'BoolQ/test.jsonl', [{'question': 'q', 'passage': 'p', 'idx': 0}])
    write_jsonl(d / 'CB/train.jsonl', [
        {'premise': 'P.', 'hypothesis': 'H.', 'label': 'neutral', 'idx': 4}])
    write_jsonl(d / 'COPA/val.jsonl', [
        {'premise': 'The man fell.', 'choice1': 'He slipped.', 'choice2': 'He sang.',
         'question': 'cause', 'label': 0, 'idx': 0},
        {'premise': 'It rained.', 'choice1': 'I sang.', 'choice2': 'I got wet.',
         'question': 'effect', 'label': 1, 'idx': 1}])
    write_jsonl(d / 'WiC/train.jsonl', [
        {'word': 'bank', 'sentence1': 'The bank.', 'sentence2': 'A river bank.', 'idx': 0,
         'label': False, 'start1': 4, 'end1': 8, 'start2': 8, 'end2': 12}])
    write_jsonl(d / 'WSC/train.jsonl', [
        {'text': 'The ball crashed through the table because it was made of styrofoam.',
         'target': {'span1_index': 4, 'span1_text': 'The table', 'span2_index': 7,
                    'span2_text': 'it'}, 'idx': 5, 'label': True}])
    write_jsonl(d / 'MultiRC/val.jsonl', [
        {'idx': 0, 'version': 1.1, 'paragraph': {'text': 'Sam ate.', 'questions': [
            {'question': 'Who ate?', 'idx': 0, 'answers': [
                {'text': 'Sam', 'idx': 0, 'label': 1}, {'text': 'Al', 'idx': 1, 'label': 0},
                {'text': 'Jo', 'idx': 2, 'label': 0}]},
            {'question': 'What did Sam do?', 'idx': 1, 'answers': [
                {'text': 'ate', 'idx': 3, 'label': 1}]}]}}])
    write_jsonl(d / 'ReCoRD/val.jsonl', [
        {'idx': 0, 'source': 'x', 'passage': {
            'text': 'Paris and Rome met Paris.',
            'entities': [{'start': 0, 'end': 4}, {'start': 10, 'end': 13},
                         {'start': 19, 'end': 23}]},
         'qas': [{'query': '@placeholder is in Italy.', 'idx': 7,
                  'answers': [{'start': 10, 'end': 13, 'text': 'Rome'}]}]}])
    # AX-g as released: pair_id differs within a pair; rows 2k, 2k+1 share the hypothesis.
    write_jsonl(d / 'AX-g/AX-g.jsonl', [
        {'premise': 'He left.', 'hypothesis': 'Someone left.', 'label': 'entailment',
         'idx': 0, 'pair_id': 10},
        {'premise': 'She left.', 'hypothesis': 'Someone left.', 'label': 'entailment',
         'idx': 1, 'pair_id': 12}])
    return d


def test_superglue_pair_tasks(sg_dir):
    boolq = read_examples('BoolQ', sg_dir, 'dev')
    assert [(e.text_a, e.text_b, e.label, e.idx) for e in boolq] == [
        ('is it wet', 'It rains.', 1, 0), ('is it dry', 'It rains.', 0, 1)]
    assert read_examples('BoolQ', sg_dir, 'test')[0].label is None
    cb = read_examples('CB', sg_dir, 'train')[0]
    assert TASKS['CB'].labels[cb.label] == 'neutral' and cb.idx == 4
    wic = read_examples('WiC', sg_dir, 'train')[0]
    assert (wic.text_a, wic.text_b, wic.label) == ('bank: The bank.', 'A river bank.', 0)
    axg = read_examples('AX-g', sg_dir, 'test')
    assert [e.group for e in axg] == [0, 0] and axg[0].label == 1


def test_byte_order_mark_is_dropped(tmp_path):
    path = write_jsonl(tmp_path / 'CB/val.jsonl', [
        {'premise': 'P.', 'hypothesis': 'H.', 'label': 'entailment', 'idx': 0}])
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
    assert read_examples('CB', tmp_path, 'dev')[0].label == 0


def test_copa_casting_and_inverse(sg_dir):
    ex = read_examples('COPA', sg_dir, 'dev')
    assert [(e.text_a, e.text_b, e.label, e.group, e.choice) for e in ex] == [
        (f"The man fell. {COPA_QUESTIONS['cause']}", 'He slipped.', 1, 0, 0),
        (f"The man fell. {COPA_QUESTIONS['cause']}", 'He sang.', 0, 0, 1),
        (f"It rained. {COPA_QUESTIONS['effect']}", 'I sang.', 0, 1, 0),
        (f"It rained. {COPA_QUESTIONS['effect']}", 'I got wet.', 1, 1, 1)]
    scores = [[0.2, 0.8], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]
    agg = aggregate('COPA', ex, scores)
    assert (agg.ids, agg.predictions, agg.labels, agg.groups) == ([0, 1], [0, 0], [0, 1], None)


def test_wsc_marks_spans(sg_dir):
    ex = read_examples('WSC', sg_dir, 'train')[0]
    assert ex.text_a == ('The ball crashed through *the table* because #it# was made of '
                         'styrofoam.')
    assert (ex.text_b, ex.label, ex.idx, ex.choice) == (None, 1, 5, 'The table')
    agg = aggregate('WSC', [ex], [[2.0, -1.0]])
    assert (agg.ids, agg.predictions, agg.labels) == ([5], [0], [1])


def test_multirc_casting_and_inverse(sg_dir):
    ex = read_examples('MultiRC', sg_dir, 'dev')
    assert [(e.text_b, e.label, e.group, e.idx) for e in ex] == [
        ('Who ate? Sam', 1, (0, 0), (0, 0, 0)), ('Who ate? Al', 0, (0, 0), (0, 0, 1)),
        ('Who ate? Jo', 0, (0, 0), (0, 0, 2)), ('What did Sam do? ate', 1, (0, 1), (0, 1, 3))]
    assert all(e.text_a == 'Sam ate.' for e in ex)
    agg = aggregate('MultiRC', ex, [[0, 1], [0, 1], [1, 0], [0, 1]])
    assert agg.predictions == [1, 1, 0, 1] and agg.labels == [1, 0, 0, 1]
    assert agg.groups == [(0, 0)] * 3 + [(0, 1)]


def test_record_candidates_are_passage_entities(sg_dir):
    ex = read_examples('ReCoRD', sg_dir, 'dev')
    # 'Paris' occurs twice but is one candidate; end offsets are inclusive.
    assert [(e.choice, e.text_b, e.label) for e in ex] == [
        ('Paris', 'Paris is in Italy.', 0), ('Rome', 'Rome is in Italy.', 1)]
    assert all(e.group == 7 and e.gold == ('Rome',) for e in ex)
    agg = aggregate('ReCoRD', ex, [[0.0, 3.0], [0.0, 1.0]])
    assert (agg.ids, agg.predictions, agg.labels) == ([7], ['Paris'], [('Rome',)])


@pytest.mark.parametrize('task,records,message', [
    ('BoolQ', ['{"question": "q", "passage": "p", "idx": 0, "label": true}', '{oops'],
     r'val\.jsonl:2: bad JSON'),
    ('BoolQ', ['{"question": "q", "idx": 0, "label": true}'],
     r"val\.jsonl:1: missing field 'passage'"),
    ('BoolQ', ['{"question": "q", "passage": "p", "idx": 0, "label": "yes"}'],
     r"val\.jsonl:1: unknown label 'yes'"),
    ('COPA', ['', '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", '
                  '"label": 0, "idx": 0}'], r'val\.jsonl:2: COPA question'),
    ('MultiRC', ['{"idx": 0, "paragraph": {"text": "t", "questions": [{"question": "q", '
                 '"idx": 0, "answers": [{"text": "a", "idx": 0}]}]}}'],
     r"val\.jsonl:1: missing field 'label'"),
    ('ReCoRD', ['{"idx": 0, "passage": {"text": "abc", "entities": [{"start": 1, "end": 9}]}, '
                '"qas": []}'], r'val\.jsonl:1: entity offsets'),
    ('WSC', ['{"text": "a b", "target": {"span1_index": 5, "span1_text": "x", "span2_index": 0, '
             '"span2_text": "a"}, "idx": 0, "label": true}'], r'val\.jsonl:1: span1_index 5'),
    ('CB', ['[1, 2]'], r'val\.jsonl:1: expected a JSON object'),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, task, records, message):
    write(tmp_path / get_task(task).files['dev'], records)
    with pytest.raises(DataFormatError, match=message):
        read_examples(task, tmp_path, 'dev')


# ------------------------------------------------------------------------------------- RACE
def race_article(article_id, answers):
    return {'article': f'Article {article_id}.', 'id': article_id,
            'questions': ['Who is _ ?', 'Why?'][:len(answers)],
            'options': [['Tom', 'Ann', 'Bob', 'Eve'], ['Rain.', 'Sun.', 'Snow.', 'Wind.']]
            [:len(answers)], 'answers': answers}


@pytest.fixture
def race_dir(tmp_path):
    d = tmp_path / 'data'
    for name, answers in [('high10.txt', ['C']), ('high2.txt', ['B', 'D'])]:
        write(d / 'RACE/dev/high' / name, [json.dumps(race_article(name, answers))])
    write(d / 'RACE/dev/middle/middle1.txt', [json.dumps(race_article('middle1.txt', ['A']))])
    return d


def test_race_reader_casting_and_inverse(race_dir):
    ex = read_examples('RACE-H', race_dir, 'dev')
    assert len(ex) == 12  # natural order: high2 (2 questions) before high10 (1)
    assert [e.group for e in ex[::4]] == [('high2.txt', 0), ('high2.txt', 1), ('high10.txt', 0)]
    first = ex[0]
    assert (first.text_a, first.text_b, first.label, first.choice, first.gold) == (
        'Article high2.txt.', 'Who is Tom ?', 0, 'A', 'B')
    assert ex[4].text_b == 'Why? Rain.' and ex[7].label == 1
    assert label_counts(ex) == {0: 9, 1: 3}
    scores = np.zeros((12, 2))
    scores[[2, 7, 8], 1] = 5.0  # picks C, D, A
    agg = aggregate('RACE-H', ex, scores)
    assert agg.ids == [('high2.txt', 0), ('high2.txt', 1), ('high10.txt', 0)]
    assert agg.predictions == ['C', 'D', 'A'] and agg.labels == ['B', 'D', 'C']
    assert len(read_examples('RACE-M', race_dir, 'dev')) == 4


def test_race_errors(race_dir):
    bad = race_dir / 'RACE/dev/high/high3.txt'
    write(bad, ['{"article": "a", "id": "high3.txt",', '  "questions": [}'])
    with pytest.raises(DataFormatError, match=r'high3\.txt:2: bad JSON'):
        read_examples('RACE-H', race_dir, 'dev')
    article = race_article('high3.txt', ['B'])
    article['answers'] = ['Z']
    write(bad, [json.dumps(article)])
    with pytest.raises(DataFormatError, match=r"high3\.txt:1: question 0: unknown answer 'Z'"):
        read_examples('RACE-H', race_dir, 'dev')
    del article['options']
    write(bad, [json.dumps(article)])
    with pytest.raises(DataFormatError, match="missing field 'options'"):
        read_examples('RACE-H', race_dir, 'dev')
    with pytest.raises(FileNotFoundError, match=r'RACE-H test split: no file .*RACE/test/high/\*'
                                                  r'\.txt .*RACE\.tar\.gz'):
        read_examples('RACE-H', race_dir, 'test')


# -------------------------------------------------------------------------------- balancing
def test_balancing_discards_negatives_for_training_only(race_dir):
    (race_dir / 'RACE/dev').rename(race_dir / 'RACE/train')
    ex = read_examples('RACE-H', race_dir, 'train')
    kept = read_examples('RACE-H', race_dir, 'train', balance=True, seed=3)
    assert label_counts(kept) == {0: 3, 1: 3}
    assert all(e in ex for e in kept) and [e.guid for e in kept] == sorted(
        (e.guid for e in kept), key=lambda g: int(g.rsplit('-', 1)[1]))
    assert kept == read_examples('RACE-H', race_dir, 'train', balance=True, seed=3)
    seeds = {tuple(e.guid for e in read_examples('RACE-H', race_dir, 'train', balance=True,
                                                 seed=s)) for s in range(10)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match='training data only'):
        read_examples('RACE-H', race_dir, 'dev', balance=True)


def test_balance_labels_multiclass_and_errors():
    ex = [Example(str(i), 't', None, label) for i, label in enumerate([0, 0, 0, 1, 2, 2])]
    kept = balance_labels(ex, seed=0)
    assert label_counts(kept) == {0: 1, 1: 1, 2: 1}
    with pytest.raises(ValueError):
        balance_labels([Example('0', 't', None, None)])
    with pytest.raises(ValueError):
        balance_labels([Example('0', 't', None, 0.5)])


# ---------------------------------------------------------------------------------- inverse
def test_aggregate_pair_regression_and_shape_checks():
    ex = [Example('0', 'a', 'b', 1.0, idx=0), Example('1', 'a', 'b', 4.0, idx=1)]
    agg = aggregate('STS-B', ex, [[1.5], [3.5]])
    assert agg.predictions == [1.5, 3.5] and agg.labels == [1.0, 4.0] and agg.groups is None
    ex = [Example('0', 'a', 'b', 2, idx=3), Example('1', 'a', 'b', None, idx=4)]
    agg = aggregate('MNLI-m', ex, [[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    assert agg.ids == [3, 4] and agg.predictions == [2, 0] and agg.labels is None
    with pytest.raises(ValueError, match='shape'):
        aggregate('MNLI-m', ex, [[0.1, 0.9], [0.5, 0.5]])


def test_custom_spec_drives_generic_reader(tmp_path):
    spec = TaskSpec(name='Toy', benchmark='GLUE', files={'dev': 'toy.tsv'},
                    layouts={'dev': TsvColumns(text_a=0, label=1, header=False, num_columns=2)},
                    labels=('no', 'yes'), metrics=('accuracy',), submission_file='Toy.tsv',
                    submission_format='glue_tsv')
    write(tmp_path / 'toy.tsv', [tsv('hi', 'yes'), '', tsv('bye', 'no')])
    assert [(e.text_a, e.label) for e in read_examples(spec, tmp_path, 'dev')] == [
        ('hi', 1), ('bye', 0)]
