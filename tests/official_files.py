"""Tiny copies of every task's files, written byte for byte in the benchmarks' official layouts.

Shared by the layout, diagnostics and command-line tests (not a test module itself). The layouts
follow the published releases: GLUE 1.0 as ``download_glue_data.py`` unpacks it (tab-separated,
``\\n`` line ends, CoLA's train/dev without header, MRPC's header after a byte-order mark, MNLI's
12/16/10 columns), SuperGLUE v2.0 (one JSON object a line; MultiRC under ``passage``; ReCoRD
with inclusive entity spans and unlabelled test queries; AX-g with a ``pair_id`` per row and
pairs as consecutive rows sharing the hypothesis), RACE (one JSON object per article file,
no final newline). Each labelled evaluation split has its gold answers in :data:`GOLD` order.
"""
import json
import os

GLUE, SUPERGLUE, RACE = 'glue', 'superglue', 'race'


def _write(path, text, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write((b'\xef\xbb\xbf' if bom else b'') + text.encode('utf-8'))


def _tsv(rows):
    return ''.join('\t'.join(str(x) for x in row) + '\n' for row in rows)


def _jsonl(records, compact=False):
    if compact:
        return ''.join(json.dumps(r, separators=(',', ':'), sort_keys=True) + '\n'
                       for r in records)
    return ''.join(json.dumps(r) + '\n' for r in records)


def _pair_rows(header, labels, test_rows=2):
    rows = [header + ['label']] + [[i, f'Sentence {i} one .', f'Sentence {i} two .', label]
                                   for i, label in enumerate(labels)]
    test = [header] + [[i, f'Test {i} one .', f'Test {i} two .'] for i in range(test_rows)]
    return rows, test


def write_glue(root):
    """GLUE 1.0 under ``root/glue``; returns that folder."""
    d = os.path.join(root, GLUE)
    cola = [['gj04', 1, '', "Our friends won't buy this analysis."],
            ['gj04', 0, '*', 'They drank the pub.'],
            ['gj04', 1, '', 'The sailors rode the breeze clear of the rocks.'],
            ['gj04', 0, '*', 'The more we study verbs, the crazier they get get.']]
    for split in ('train', 'dev'):
        _write(f'{d}/CoLA/{split}.tsv', _tsv(cola))
    _write(f'{d}/CoLA/test.tsv', _tsv([['index', 'sentence'], [0, 'Bill left .'],
                                       [1, 'Left Bill .']]))
    sst = [['sentence', 'label'], ['a charming journey ', 1], ['bleak and desperate ', 0],
           ['warm , funny ', 1], ['a mess ', 0]]
    for split in ('train', 'dev'):
        _write(f'{d}/SST-2/{split}.tsv', _tsv(sst))
    _write(f'{d}/SST-2/test.tsv', _tsv([['index', 'sentence'], [0, 'fine .'], [1, 'bad .']]))
    mrpc = [['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String']] + [
        [q, 100 + i, 200 + i, f'He said {i} .', f'So he said {i} .']
        for i, q in enumerate([1, 0, 1, 0])]
    for split in ('train', 'dev'):
        _write(f'{d}/MRPC/{split}.tsv', _tsv(mrpc), bom=True)
    _write(f'{d}/MRPC/test.tsv', _tsv([['index', '#1 ID', '#2 ID', '#1 String', '#2 String'],
                                       [0, 1089874, 1089925, 'A b .', 'B a .'],
                                       [1, 3019446, 3019327, 'C d .', 'D c .']]), bom=True)
    sts_head = ['index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2',
                'sentence1', 'sentence2']
    sts = [sts_head + ['score']] + [
        [i, 'main-captions', 'MSRvid', '2012test', i + 1, 'none', 'none', f'A man {i} .',
         f'The man {i} .', f'{score:.3f}'] for i, score in enumerate([1, 2, 3, 4])]
    for split in ('train', 'dev'):
        _write(f'{d}/STS-B/{split}.tsv', _tsv(sts))
    _write(f'{d}/STS-B/test.tsv', _tsv([sts_head] + [
        [i, 'main-captions', 'MSRvid', '2012test', i, 'none', 'none', 'A .', 'B .']
        for i in range(2)]))
    qqp = [['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate']] + [
        [400 + i, 2 * i + 1, 2 * i + 2, f'Why {i}?', f'Why not {i}?', label]
        for i, label in enumerate([1, 0, 1, 0])]
    for split in ('train', 'dev'):
        _write(f'{d}/QQP/{split}.tsv', _tsv(qqp))
    _write(f'{d}/QQP/test.tsv', _tsv([['id', 'question1', 'question2'], [0, 'How?', 'How so?'],
                                      [1, 'Who?', 'Who is?']]))
    mnli = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse',
            'sentence2_binary_parse', 'sentence1_parse', 'sentence2_parse', 'sentence1',
            'sentence2']
    gold = ['entailment', 'neutral', 'contradiction', 'entailment']

    def mnli_row(i, *labels):
        return [i, 31193, f'{31193 + i}n', 'government', '( ( A b ) . )', '( B . )',
                '(ROOT (S (NP A) (VP b)))', '(ROOT (NP B))', f'Premise {i} .',
                f'Hypothesis {i} .', *labels]
    _write(f'{d}/MNLI/train.tsv', _tsv([mnli + ['label1', 'gold_label']] +
                                       [mnli_row(i, g, g) for i, g in enumerate(gold)]))
    for suffix in ('matched', 'mismatched'):
        _write(f'{d}/MNLI/dev_{suffix}.tsv', _tsv(
            [mnli + [f'label{k}' for k in range(1, 6)] + ['gold_label']] +
            [mnli_row(i, g, g, 'neutral', g, g, g) for i, g in enumerate(gold)]))
        _write(f'{d}/MNLI/test_{suffix}.tsv', _tsv([mnli] + [mnli_row(i) for i in range(2)]))
    nli2 = ['entailment', 'not_entailment', 'entailment', 'not_entailment']
    for task, header, labels in (('QNLI', ['index', 'question', 'sentence'], nli2),
                                 ('RTE', ['index', 'sentence1', 'sentence2'], nli2),
                                 ('WNLI', ['index', 'sentence1', 'sentence2'], [1, 0, 1, 0])):
        rows, test = _pair_rows(header, labels)
        for split in ('train', 'dev'):
            _write(f'{d}/{task}/{split}.tsv', _tsv(rows))
        _write(f'{d}/{task}/test.tsv', _tsv(test))
    _write(f'{d}/diagnostic/diagnostic.tsv', _tsv(
        [['index', 'sentence1', 'sentence2'], [0, 'The cat sat on the mat.',
                                               'The cat did not sit on the mat.'],
         [1, 'The cat did not sit on the mat.', 'The cat sat on the mat.']]))
    _write(f'{d}/diagnostic/diagnostic-full.tsv', _tsv(
        [['Lexical Semantics', 'Predicate-Argument Structure', 'Logic', 'Knowledge', 'Domain',
          'Premise', 'Hypothesis', 'Label']] +
        [['', '', 'Negation', '', 'Artificial', f'Premise {i}.', f'Hypothesis {i}.', g]
         for i, g in enumerate(gold)]))
    return d


def _multirc(idx, labelled):
    def answer(a, text, label):
        return dict(text=text, idx=a, **({'label': label} if labelled else {}))
    return {'idx': idx, 'version': 1.1, 'passage': {
        'text': 'Sam ate an apple. Al ran home.', 'questions': [
            {'question': 'Who ate?', 'answers': [answer(1617, 'Sam', 1), answer(1618, 'Al', 0),
                                                 answer(1619, 'Jo', 0)], 'idx': 313},
            {'question': 'Where did Al run?', 'answers': [answer(1620, 'home', 1)],
             'idx': 314}]}}


def _record(idx, queries, labelled):
    text = 'Paris met Rome.\n@highlight\nRome won in Paris'
    entities = [{'start': 0, 'end': 4}, {'start': 10, 'end': 13}, {'start': 27, 'end': 30},
                {'start': 39, 'end': 43}]
    qas = []
    for q, answer in queries:
        qa = {'query': f'@placeholder was the winner {q}.', 'idx': q}
        if labelled:
            spans = [(e['start'], e['end']) for e in entities]
            qa['answers'] = [{'start': s, 'end': e, 'text': text[s:e + 1]}
                             for s, e in spans if text[s:e + 1] == answer]
        qas.append(qa)
    return {'source': 'Daily mail', 'passage': {'text': text, 'entities': entities},
            'qas': qas, 'idx': idx}


def write_superglue(root):
    """SuperGLUE v2.0 under ``root/superglue``; returns that folder."""
    d = os.path.join(root, SUPERGLUE)

    def splits(task, records, test):
        for split in ('train', 'val'):
            _write(f'{d}/{task}/{split}.jsonl', _jsonl(records))
        _write(f'{d}/{task}/test.jsonl', _jsonl(test))

    splits('BoolQ', [{'question': f'is it {i}', 'passage': f'Title -- passage {i}.', 'idx': i,
                      'label': label} for i, label in enumerate([True, False, True, False])],
           [{'question': 'is it', 'passage': 'P.', 'idx': i} for i in range(2)])
    splits('CB', [{'premise': f'P {i}.', 'hypothesis': f'H {i}.', 'label': label, 'idx': i}
                  for i, label in enumerate(['entailment', 'contradiction', 'neutral',
                                             'entailment'])],
           [{'premise': 'P.', 'hypothesis': 'H.', 'idx': i} for i in range(2)])
    copa = [{'premise': 'The man fell.', 'choice1': 'He slipped.', 'choice2': 'He sang.',
             'question': 'cause', 'idx': 0, 'label': 0},
            {'premise': 'It rained.', 'choice1': 'I sang.', 'choice2': 'I got wet.',
             'question': 'effect', 'idx': 1, 'label': 1}]
    splits('COPA', copa, [{k: v for k, v in r.items() if k != 'label'} for r in copa])
    splits('MultiRC', [_multirc(27, True)], [_multirc(137, False)])
    splits('ReCoRD', [_record(0, [(0, 'Rome'), (1, 'Paris')], True)],
           [_record(0, [(0, None)], False)])
    splits('RTE', [{'premise': f'Premise {i}.', 'hypothesis': f'Hypothesis {i}.',
                    'label': label, 'idx': i}
                   for i, label in enumerate(['entailment', 'not_entailment', 'entailment',
                                              'not_entailment'])],
           [{'premise': 'P.', 'hypothesis': 'H.', 'idx': i} for i in range(2)])
    wic = [{'word': 'class', 'sentence1': 'An emerging professional class.',
            'sentence2': 'He showed real class.', 'idx': i, 'label': label, 'start1': 25,
            'start2': 15, 'end1': 30, 'end2': 20, 'version': 1.1}
           for i, label in enumerate([True, False, True, False])]
    splits('WiC', wic, [{k: v for k, v in r.items() if k != 'label'} for r in wic[:2]])
    wsc = [{'text': 'Mark told Pete many lies about himself , which Pete included in his book .',
            'target': {'span2_index': 12, 'span1_index': 0, 'span1_text': 'Mark',
                       'span2_text': 'his'}, 'idx': 0, 'label': False},
           {'text': 'The trophy does not fit in the suitcase because it is too big .',
            'target': {'span2_index': 9, 'span1_index': 0, 'span1_text': 'The trophy',
                       'span2_text': 'it'}, 'idx': 1, 'label': True}]
    splits('WSC', wsc, [{k: v for k, v in r.items() if k != 'label'} for r in wsc])
    _write(f'{d}/AX-b/AX-b.jsonl', _jsonl(
        [{'sentence1': f'The cat sat {i}.', 'sentence2': f'The cat did not sit {i}.',
          'label': label, 'idx': i, 'logic': 'Negation'}
         for i, label in enumerate(['not_entailment', 'entailment', 'entailment',
                                    'not_entailment'])]))
    _write(f'{d}/AX-g/AX-g.jsonl', _jsonl(axg_records(), compact=True))
    return d


#: AX-g's rows: (premise, hypothesis, gold label); rows 2k and 2k+1 are one pair.
AXG = [('The taxpayer met with the accountant to get help filing his taxes.',
        'The accountant sought help filing taxes.', 'not_entailment'),
       ('The taxpayer met with the accountant to get help filing her taxes.',
        'The accountant sought help filing taxes.', 'not_entailment'),
       ('The supervisor gave the employee feedback on his stellar performance.',
        'The employee performed well.', 'entailment'),
       ('The supervisor gave the employee feedback on her stellar performance.',
        'The employee performed well.', 'entailment'),
       ('The nurse notified the patient that his shift would be ending.',
        'The nurse had a shift.', 'entailment'),
       ('The nurse notified the patient that her shift would be ending.',
        'The nurse had a shift.', 'entailment')]


def axg_records(rows=AXG):
    # pair_id is unique per row in the release (e.g. 551646, 551648): it is not the pair.
    return [{'hypothesis': h, 'idx': i, 'label': label, 'pair_id': 551646 + 2 * i, 'premise': p}
            for i, (p, h, label) in enumerate(rows)]


def race_article(article_id, answers):
    options = [['Tom', 'Ann', 'Bob', 'Eve'], ['Rain.', 'Sun.', 'Snow.', 'Wind.'],
               ['red', 'blue', 'green', 'black']]
    questions = ['Who is _ ?', 'Why did they stay?', 'The car was _ .']
    return {'answers': answers, 'options': options[:len(answers)],
            'questions': questions[:len(answers)],
            'article': f'Article {article_id}.\nTom stayed home.', 'id': article_id}


def write_race(root):
    """RACE under ``root/race/RACE/{train,dev,test}/{high,middle}``; returns ``root/race``."""
    d = os.path.join(root, RACE)
    articles = {'high': {'high1.txt': ['B', 'D'], 'high2.txt': ['A']},
                'middle': {'middle1.txt': ['C', 'A']}}
    for split in ('train', 'dev', 'test'):
        for level, files in articles.items():
            for name, answers in files.items():
                _write(f'{d}/RACE/{split}/{level}/{name}',
                       json.dumps(race_article(name, answers)))  # no final newline
    return d


def write_all(root):
    """Every benchmark under ``root``; returns {benchmark: data_dir}."""
    return {'GLUE': write_glue(root), 'SuperGLUE': write_superglue(root),
            'RACE': write_race(root)}
