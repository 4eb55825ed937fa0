"""Bort in miniature: verdict wording on constructed numbers, stage caching, the comparison rule,
the GLUE split, settings checks, the report from constructed figures, and (slow) one whole tiny
run on synthetic data with a stand-in teacher, rerun from its cache."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from bort.errors import ConfigError, UserError
from bort.experiments.config import BUDGETS, MiniatureConfig
from bort.experiments.finetuning import split_glue
from bort.experiments.miniature import (agora_stage_names, check_same_settings,
                                         choose_comparison, report_finished)
from bort.experiments.claims import first_rise
from bort.experiments.report import PNG_FILES, write_report
from bort.experiments.stages import ATTEMPT_FILE, DONE_FILE, StageLog, run_stage
from bort.experiments.verdicts import binomial_se, compare, spread

from toy_glue import write_rte


# -- verdicts ------------------------------------------------------------------------------------
def test_spread_matches_numpy():
    values = [0.81, 0.79, 0.84]
    s = spread(values)
    assert s.n == 3 and s.mean == pytest.approx(np.mean(values))
    assert s.sd == pytest.approx(np.std(values, ddof=1))
    assert spread([0.5]).n == 1 and math.isnan(spread([0.5]).sd)
    assert spread([]).n == 0 and spread([float('nan'), 0.7]).n == 1


def test_binomial_se():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert math.isnan(binomial_se(0.5, 0))


def test_compare_yes_no_and_noise():
    yes = compare([0.85, 0.86], [0.80, 0.81], 'KD ahead of MLM-only on SST-2 dev')
    assert yes['answer'] == 'yes' and yes['diff'] == pytest.approx(0.05)
    assert yes['se'] == pytest.approx(math.sqrt(2 * np.var([0.85, 0.86], ddof=1) / 2))
    assert yes['text'].startswith('KD ahead of MLM-only on SST-2 dev: yes, by +5.0 ± 0.7 points')
    no = compare([0.80, 0.81], [0.85, 0.86], 'KD ahead of MLM-only')
    assert no['answer'] == 'no' and '**no**' in no['text'] and '-5.0 ± 0.7 points' in no['text']
    # The same gap with a wide spread (or a floor) is noise, and is called that.
    wide = compare([0.90, 0.80], [0.80, 0.81], 'KD ahead')
    assert wide['answer'] == 'within noise' and 'within noise' in wide['text']
    # Two seeds that agree cannot make a 3-point gap on 277 dev examples real: the floor.
    assert compare([0.83, 0.84], [0.80, 0.81], 'KD ahead')['answer'] == 'yes'
    floored = compare([0.83, 0.84], [0.80, 0.81], 'KD ahead', floor=binomial_se(0.82, 277))
    assert floored['se'] == pytest.approx(binomial_se(0.82, 277))
    assert floored['answer'] == 'within noise'


def test_compare_lower_is_better_and_missing():
    faster = compare([10.0, 11.0, 10.5], [30.0, 31.0, 29.0], 'faster', scale=1.0, unit='ms',
                     higher_is_better=False)
    assert faster['answer'] == 'yes' and '-20.17 ± ' not in faster['text']
    assert compare([1.0], [2.0], 'x', higher_is_better=False, floor=0.1)['answer'] == 'yes'
    assert compare([], [0.5], 'x')['answer'] == 'not measured'
    unknown = compare([0.6], [0.5], 'one value each, no floor')
    assert unknown['answer'] == 'noise not measured' and 'noise not measured' in unknown['text']


# -- stages --------------------------------------------------------------------------------------
def test_run_stage_caches_and_reruns_after_a_failure(tmp_path):
    calls = []

    def stage(folder):
        calls.append(folder)
        with open(os.path.join(folder, 'out.txt'), 'w') as f:
            f.write('x')
        return {'value': len(calls)}

    log = StageLog()
    folder = str(tmp_path / 'a')
    assert run_stage('a', folder, stage, log) == {'value': 1}
    assert run_stage('a', folder, stage, log) == {'value': 1}  # cached: not run again
    assert len(calls) == 1 and log.records['a']['cached']
    done = json.loads((tmp_path / 'a' / DONE_FILE).read_text())
    assert done['figures'] == {'value': 1} and done['seconds'] >= 0 and done['load_start']

    def broken(folder):
        calls.append(folder)
        raise RuntimeError('killed')

    with pytest.raises(RuntimeError):
        run_stage('b', str(tmp_path / 'b'), broken)
    assert not (tmp_path / 'b' / DONE_FILE).exists()  # a failed stage runs again next time
    assert run_stage('b', str(tmp_path / 'b'), stage) == {'value': 3}


def test_run_stage_counts_a_killed_attempt(tmp_path):
    folder = tmp_path / 'k'
    folder.mkdir()
    start = 1_000_000.0
    (folder / ATTEMPT_FILE).write_text(json.dumps({'start': start, 'earlier_seconds': 5.0}))
    (folder / 'checkpoint').write_text('x')
    os.utime(folder / 'checkpoint', (start + 30, start + 30))  # the killed attempt's last file
    os.utime(folder / ATTEMPT_FILE, (start, start))
    ticks = iter([0.0, 10.0])
    log = StageLog()
    run_stage('k', str(folder), lambda f: {}, log, clock=lambda: next(ticks))
    record = log.records['k']
    assert record['seconds_earlier_attempts'] == pytest.approx(35.0)
    assert record['seconds'] == pytest.approx(45.0)


def test_run_stage_times_with_the_given_clock(tmp_path):
    ticks = iter([100.0, 160.5])
    log = StageLog()
    run_stage('s', str(tmp_path / 's'), lambda f: {}, log, clock=lambda: next(ticks))
    assert log.records['s']['seconds'] == pytest.approx(60.5)


# -- the comparison architecture ---------------------------------------------------------------------
def _record(rank, d, params, error):
    return {'rank': rank, 'num_layers': d, 'num_heads': 4, 'units': 128, 'hidden_size': 512,
            'params': params, 'error': error, 'w': 1.0 / rank}


def test_choose_comparison_rules():
    ranked = [_record(1, 2, 1_000_000, 5.0), _record(2, 3, 1_100_000, 5.1),
              _record(3, 4, 1_200_000, 5.6), _record(4, 5, 2_000_000, 6.0),
              _record(5, 1, 700_000, 5.3)]
    worst = choose_comparison(ranked, 'similar_params_worst_e', 0.25)
    assert worst['num_layers'] == 4 and 'worst e' in worst['why']  # 6.0 is outside the band
    assert choose_comparison(ranked, 'runner_up')['num_layers'] == 3
    lonely = [ranked[0], _record(2, 5, 2_000_000, 6.0), _record(3, 6, 3_000_000, 7.0)]
    nearest = choose_comparison(lonely, 'similar_params_worst_e', 0.25)
    assert nearest['num_layers'] == 5 and 'nearest' in nearest['why']
    with pytest.raises(UserError):
        choose_comparison(ranked[:1], 'runner_up')


# -- settings ------------------------------------------------------------------------------------
def test_config_presets_flags_and_checks(tmp_path):
    small = MiniatureConfig(glue_dir='g').resolved()
    assert small.pretrain_steps == BUDGETS['small']['pretrain_steps']
    assert small.seeds == BUDGETS['small']['seeds']
    assert small.tokens_per_run() == small.pretrain_steps * small.pretrain_batch_size * 64
    flag = MiniatureConfig(glue_dir='g', budget='full', pretrain_steps=7).resolved()
    assert flag.pretrain_steps == 7 and flag.epochs == BUDGETS['full']['epochs']
    assert flag.search_settings() == BUDGETS['full']['search']
    merged = MiniatureConfig(glue_dir='g', search='{"epsilon": 3}').resolved()
    assert merged.search_settings() == dict(BUDGETS['small']['search'], epsilon=3)
    for bad, word in ((dict(seeds=(0,)), 'seeds'), (dict(search='[1]'), 'search'),
                      (dict(tasks=('SST-2',)), 'RTE'), (dict(glue_dir=''), 'glue_dir')):
        values = dict(dict(glue_dir='g'), **bad)
        with pytest.raises(ConfigError, match=word):
            MiniatureConfig(**values).resolved().validate()


def test_rerun_with_other_settings_is_refused(tmp_path):
    out = str(tmp_path / 'run')
    config = MiniatureConfig(glue_dir='g', out=out).resolved()
    check_same_settings(out, config)
    check_same_settings(out, config)  # the same settings continue
    import dataclasses
    with pytest.raises(ConfigError, match='pretrain_steps'):
        check_same_settings(out, dataclasses.replace(config, pretrain_steps=1))


def test_split_glue_sets_rows_aside(tmp_path):
    glue = write_rte(str(tmp_path / 'glue'), n_train=40)
    before = (tmp_path / 'glue' / 'RTE' / 'train.tsv').read_text()
    folders = split_glue(glue, ['RTE'], str(tmp_path / 'split'), 10, seed=0)
    train = open(os.path.join(folders['train'], 'RTE', 'train.tsv')).read().splitlines()
    held = open(os.path.join(folders['heldout'], 'RTE', 'dev.tsv')).read().splitlines()
    rows = before.splitlines()
    assert train[0] == held[0] == rows[0]
    assert len(train) - 1 == 30 and len(held) - 1 == 10
    assert sorted(train[1:] + held[1:]) == sorted(rows[1:])  # disjoint and complete
    assert (tmp_path / 'glue' / 'RTE' / 'train.tsv').read_text() == before  # never modified
    assert os.path.isfile(os.path.join(folders['train'], 'RTE', 'dev.tsv'))
    with pytest.raises(FileNotFoundError, match='SST-2'):
        split_glue(glue, ['SST-2'], str(tmp_path / 'split2'), 0, seed=0)


def test_pretrain_curve_keeps_the_last_record_of_a_step(tmp_path):
    from bort.experiments.pretraining import pretrain_curve
    path = tmp_path / 'metrics.jsonl'
    records = [{'step': 10, 'eval_mlm_acc': 0.1, 'eval_mlm_top5': 0.2, 'eval_mlm_loss': 7.0},
               {'step': 20, 'mlm_loss': 6.0, 'tokens_per_s': 1.0},
               # a kill -9 after step 20's evaluation, resumed from step 10's checkpoint:
               {'step': 20, 'eval_mlm_acc': 0.3, 'eval_mlm_top5': 0.4, 'eval_mlm_loss': 6.0},
               {'step': 20, 'eval_mlm_acc': 0.31, 'eval_mlm_top5': 0.4, 'eval_mlm_loss': 6.0},
               {'step': 20, 'eval_mlm_acc': 0.5, 'final': True}]
    path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    curve = pretrain_curve(str(path), tokens_per_step=64)
    assert [(p['step'], p['tokens'], p['acc']) for p in curve] == [(10, 640, 0.1),
                                                                    (20, 1280, 0.31)]


# -- the report from constructed figures ----------------------------------------------------------
def test_first_rise():
    curve = [{'step': 10, 'tokens': 100, 'acc': 0.075}, {'step': 20, 'tokens': 200, 'acc': 0.09},
             {'step': 30, 'tokens': 300, 'acc': 0.15}]
    assert first_rise(curve, 0.075, 4000)['step'] == 20
    assert first_rise(curve, 0.075, 100)['step'] == 30  # fewer positions: a wider noise band
    assert first_rise(curve[:1], 0.075, 4000) is None


def _constructed_stages(tmp_path):
    """Figures as the stages return them, with a KD run *behind* MLM-only (a "no")."""
    log = StageLog()

    def add(name, figures):
        log.add(name, {'figures': figures, 'seconds': 60.0, 'load_start': [1.0],
                       'load_end': [1.5], 'cached': False})

    rec = lambda r, d, p, e: dict(_record(r, d, p, e), inference_cost=0.001 * d)  # noqa: E731
    add('teacher', {'folder': 'teacher_dir'})
    add('search', {'winner': rec(1, 2, 1e6, 5.0), 'comparison': dict(rec(3, 4, 1.2e6, 5.6),
                                                                      why='worst e'),
                   'candidates': [rec(1, 2, 1e6, 5.0)], 'table': '| Rank |\n|---|\n| 1 |',
                   'sigma': 0.05, 'verdict': 'e decides the top.', 'archs': {}})
    add('data', {'text_bytes': 2e6, 'tokens': 400000, 'sequences': {'train': 6000, 'eval': 300},
                 'unk_ratio': 0.001})
    add('reference', {'teacher_acc': 0.30, 'teacher_top5': 0.5, 'teacher_loss': 4.0,
                      'most_frequent_rate': 0.075, 'positions': 4000, 'batches': 20})
    # comparison_scratch_kd never leaves the rate (7.5 % on 4,000 positions): no verdict.
    curves = {'winner_scratch_kd': [0.08, 0.10], 'winner_scratch_mlm': [0.09, 0.14],
              'winner_scratch_mlm_time': [0.10, 0.16], 'comparison_scratch_kd': [0.08, 0.076]}
    for name, accs in curves.items():
        add(f'pretrain/{name}', {
            'arch': [2, 4, 128, 512], 'params': 1e6, 'steps': 200, 'tokens': 204800,
            'train_seconds': 120.0,
            'final_acc': accs[-1], 'final_top5': 0.2, 'final_loss': 6.0, 'tokens_per_s': 3000,
            'curve': [{'step': 100 * (i + 1), 'tokens': 102400 * (i + 1), 'acc': a,
                       'top5': 0.2, 'loss': 6.0} for i, a in enumerate(accs)]})
    scores = {'teacher': [0.80, 0.82], 'winner_scratch_kd': [0.70, 0.71],
              'winner_scratch_mlm': [0.70, 0.72], 'comparison_scratch_kd': [0.60, 0.62]}
    for model, values in scores.items():
        for task in ('SST-2', 'RTE'):
            for seed, v in enumerate(values):
                dev = v if task == 'SST-2' or model != 'teacher' else v - 0.2  # RTE: 60 %
                add(f'finetune/{model}_{task}_s{seed}', {
                    'dev': {'accuracy': dev}, 'heldout': {'accuracy': dev - 0.01},
                    'examples_seen': 100, 'folder': f'{model}_{task}_{seed}'})
    for seed in (0, 1):
        add(f'agora/winner_scratch_kd_RTE_s{seed}', {
            'dev': {'accuracy': 0.75}, 'heldout': {'accuracy': 0.69}, 'iterations': 2,
            'points_added': 10, 'examples_seen': 300, 'teacher_accuracy': 0.6, 'check': 0.0})
        add(f'agora/winner_scratch_kd_SST-2_s{seed}', {
            'dev': {'accuracy': 0.80}, 'heldout': {'accuracy': 0.80}, 'iterations': 2,
            'points_added': 10, 'examples_seen': 300, 'teacher_accuracy': 0.8,
            'check': 2 / 3})
    # Keys sorted, as the stage's figures come back from done.json.
    samples = {'comparison': [7.0, 7.1, 6.9], 'teacher': [30.0, 31.0, 29.0],
               'winner': [5.0, 5.2, 4.9]}
    add('latency', {'batch_size': 1, 'seq_len': 128, 'repeats': 3, 'device': 'cpu',
                    'threads': '2', 'models': {
                        n: {'median_ms': float(np.median(s)), 'q25_ms': min(s), 'q75_ms': max(s),
                            'samples_ms': s, 'arch': [2, 4, 128, 512], 'params': 1e6}
                        for n, s in samples.items()}})
    return log


SIZES = {'SST-2': 872, 'RTE': 277, 'RTE-heldout': 500, 'SST-2-heldout': 1000}


def test_report_from_constructed_figures_shows_every_no(tmp_path):
    config = MiniatureConfig(glue_dir='g', out=str(tmp_path)).resolved()
    result = write_report(config, _constructed_stages(tmp_path), SIZES)
    report = open(result['report']).read()
    for name in PNG_FILES:
        assert os.path.getsize(tmp_path / name) > 1000, name
    by_claim = {v['claim']: v for v in result['verdicts']}
    steps = next(v for c, v in by_claim.items() if c.startswith('Pretraining (Table 3)')
                 and 'equal steps' in c)
    assert steps['answer'] == 'no' and steps['text'] in report  # the "no" in full
    assert 'KD was ahead at 0 of 2 evaluations' in report
    timed = next(v for c, v in by_claim.items() if 'equal wall time' in c)
    assert timed['answer'] == 'no' and 'Training loops: 2.0 vs 2.0 min' in timed['text']
    sst = by_claim['SST-2 dev (Table 4): KD ahead of MLM-only (from scratch)']
    assert sst['answer'] == 'within noise'
    teacher = by_claim['SST-2 dev (Table 4): the distilled winner (from scratch) at least level '
                       'with the teacher']
    assert teacher['answer'] == 'no'
    assert by_claim['Latency: the winner faster than the teacher']['answer'] == 'yes'
    # The comparison never left the most-frequent-token rate: no verdict names it.
    for claim, v in by_claim.items():
        if 'comparison' in claim and not claim.startswith(('Search', 'Latency')):
            assert v['answer'] == 'not judged' and 'never left' in v['text'], claim
    assert 'enter no verdict: comparison_scratch_kd' in report
    # Agora: SST-2's teacher is above 2/3 (counted), RTE's is not (marked, not counted).
    rte = by_claim['RTE held-out (Table 5): Agora ahead of plain fine-tuning for winner, from '
                   'scratch, KD T=2']
    assert rte['answer'] == 'within noise' and not rte['premise_met']  # 69 vs 69.5 on 500
    assert rte['text'].startswith('[premise not met')
    sst_agora = next(v for c, v in by_claim.items() if c.startswith('SST-2 held-out (Table 5)'))
    assert sst_agora['premise_met'] and sst_agora['answer'] == 'yes'  # 80 vs 69.5 on 1,000
    assert '**not met**: Agora ran with the check at 0' in report
    assert 'met; the check was on at 0.667' in report
    # The premises come before the verdicts.
    assert report.index('## Premises') < report.index('## Verdicts')
    assert '| winner, from scratch, KD T=2 |' in report and '0.20M token slots' in report
    # 400,000 tokens in 6,300 sequences of at most 64 slots: 99 % filled.
    assert '≈ 0.20M real tokens' in report
    assert json.loads((tmp_path / 'report.json').read_text())['total_seconds'] > 0
    # The latency table reads teacher, winner, comparison, whatever the stored order.
    latency = report[report.index('## Inference latency'):]
    assert (latency.index('| teacher |') < latency.index('| winner |')
            < latency.index('| comparison |'))


def test_partial_report_leaves_out_what_has_not_run(tmp_path):
    config = MiniatureConfig(glue_dir='g', out=str(tmp_path)).resolved()
    log = _constructed_stages(tmp_path)
    for name in [n for n in log.records if n.startswith(('finetune/', 'agora/'))] + [
            'latency', 'pretrain/comparison_scratch_kd']:
        del log.records[name]
    result = write_report(config, log, {}, missing=['pretrain/comparison_scratch_kd', 'latency'])
    report = open(result['report']).read()
    assert 'partial' in report and 'pretrain/comparison_scratch_kd, latency' in report
    claims = [v['claim'] for v in result['verdicts']]
    assert any(c.startswith('Pretraining (Table 3)') for c in claims)
    assert not any(c.startswith(('SST-2', 'RTE', 'Latency', 'Pretraining: the searched'))
                   for c in claims)
    assert '## Table 4' not in report and '## Inference latency' not in report
    assert [os.path.basename(p) for p in result['pngs']] == ['pretrain_curves.png',
                                                            'stage_times.png']


def test_report_says_why_agora_did_not_run_where_its_premise_fails(tmp_path):
    """--agora_unmet skip (the full budget's preset): no Agora on RTE, whose teacher is at
    60 %; Table 5 says so, the premise row says Agora did not run, and no RTE verdict is judged.
    """
    assert MiniatureConfig(glue_dir='g', budget='full').resolved().agora_unmet == 'skip'
    config = MiniatureConfig(glue_dir='g', out=str(tmp_path), agora_unmet='skip').resolved()
    log = _constructed_stages(tmp_path)
    for name in [n for n in log.records if n.startswith('agora/') and '_RTE_' in n]:
        del log.records[name]
    result = write_report(config, log, SIZES)
    report = open(result['report']).read()
    assert '## Table 5 in miniature: Agora on RTE: not run' in report
    assert "has 60.0 % dev accuracy, not above the method's requirement of 66.7 %" in report
    assert 'Agora not run there (`--agora_unmet skip`)' in report
    assert '## Table 5 in miniature: Agora vs plain fine-tuning on SST-2' in report
    assert not any(v['claim'].startswith('RTE held-out (Table 5)') for v in result['verdicts'])


def test_report_only_does_not_list_a_skipped_agora_task_as_missing(tmp_path):
    """--report_only: with RTE's teacher at 60 % and --agora_unmet skip, RTE's Agora stages
    will never run, so they are not missing; SST-2's (teacher at 85 %) are."""
    glue = tmp_path / 'glue'
    glue.mkdir()
    config = MiniatureConfig(glue_dir=str(glue), out=str(tmp_path / 'run'),
                             agora_unmet='skip').resolved()
    check_same_settings(config.out, config)
    for task, accuracy in (('SST-2', 0.85), ('RTE', 0.60)):
        folder = tmp_path / 'run' / 'finetune' / f'teacher_{task}_s{config.seeds[0]}'
        folder.mkdir(parents=True)
        (folder / DONE_FILE).write_text(json.dumps({
            'figures': {'dev': {'accuracy': accuracy}, 'heldout': {'accuracy': accuracy},
                        'examples_seen': 100}, 'seconds': 1.0, 'load_start': [1.0],
            'load_end': [1.0]}))
    missing = report_finished(config)['missing']
    assert not set(agora_stage_names(config, ['RTE'])) & set(missing)
    assert set(agora_stage_names(config, ['SST-2'])) <= set(missing)


def test_report_adds_a_cached_teachers_recorded_build(tmp_path):
    """A run that found its teacher built says what the build cost once, and the total with it.
    """
    teacher = tmp_path / 'teacher_dir'
    teacher.mkdir()
    (teacher / 'mlm_adapt.json').write_text(json.dumps({
        'build_seconds': {'MLM adaptation (1000 steps)': 870.0, 'adaptation data': 6.0},
        'head_only_report': {'encode_seconds': 120.0, 'fit_seconds': 364.0}}))
    log = _constructed_stages(tmp_path)
    log.records['teacher']['figures']['folder'] = str(teacher)
    log.records['teacher']['seconds'] = 0.01
    config = MiniatureConfig(glue_dir='g', out=str(tmp_path)).resolved()
    result = write_report(config, log, SIZES)
    report = open(result['report']).read()
    build = (870 + 6 + 120 + 364) / 60  # 22.7 min
    assert f'= **{build:.1f} min**' in report
    assert 'MLM head on the frozen encoder (encode, fit) 8.1 min' in report
    assert f'**{(result["total_seconds"] / 60 + build):.1f} min** with the stages' in report
    # A teacher stage that took longer than the recorded build built it in this run: no line.
    log.records['teacher']['seconds'] = 2000.0
    report = open(write_report(config, log, SIZES)['report']).read()
    assert 'built before this run' not in report


# -- one whole tiny run -------------------------------------------------------------------------------
WORDS = ('the a model layer teacher student search error cost tree river stone light water '
         'green small large fast slow runs reads writes finds keeps loses under over near '
         'far bright dark cold warm old new cat dog sat mat yes no good bad film').split()


def _tiny_inputs(root):
    """A random-weight teacher with an MLM head and tokenizer, a corpus, toy RTE and SST-2."""
    import mxnet as mx
    from bort.arch import Architecture
    from bort.model import build_model, save_model
    from bort.tokenizers import WordPieceTokenizer
    from toy_glue import FILLER
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.'] + sorted(set(WORDS + FILLER))
    tokenizer = WordPieceTokenizer(vocab, lower=True)
    arch = Architecture(2, 4, 16, 32, vocab_size=tokenizer.vocab_size, max_length=40,
                        dropout=0.1, token_type_vocab_size=2, use_pooler=True,
                        name='tiny-teacher')
    mx.random.seed(0)
    teacher = os.path.join(root, 'teacher')
    save_model(build_model(arch, use_decoder=True), teacher)
    tokenizer.save(teacher)
    rng = np.random.RandomState(0)
    lines = []
    for _ in range(150):
        for _ in range(rng.randint(2, 5)):
            lines.append(' '.join(rng.choice(WORDS, rng.randint(4, 12))).capitalize() + ' .')
        lines.append('')
    corpus = os.path.join(root, 'corpus.txt')
    with open(corpus, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    glue = write_rte(os.path.join(root, 'glue'), n_train=48, n_dev=24)
    os.makedirs(os.path.join(glue, 'SST-2'), exist_ok=True)
    for split, n in (('train', 48), ('dev', 24)):
        rows = ['sentence\tlabel'] + [
            f'{" ".join(rng.choice(FILLER, 4))} {"good" if i % 2 else "bad"} film\t{i % 2}'
            for i in range(n)]
        with open(os.path.join(glue, 'SST-2', f'{split}.tsv'), 'w') as f:
            f.write('\n'.join(rows) + '\n')
    return teacher, corpus, glue


@pytest.mark.slow
def test_whole_tiny_run_and_its_cache(tmp_path):
    from bort.experiments.miniature import main, run_miniature
    teacher, corpus, glue = _tiny_inputs(str(tmp_path))
    search = {'num_layers': [1, 2], 'num_heads': [2], 'units': [8, 16], 'hidden_size': [16, 32],
              'epsilon': 1, 'steps': 3, 'batch_size': 4, 'seq_len': 16, 'heldout_batches': 2,
              'cost': 'flops', 'lr': 0.1, 'cache_topk': 8, 'noise_seeds': 1,
              'noise_candidates': 2, 'reference': []}
    out = str(tmp_path / 'mini')
    argv = ['--glue_dir', glue, '--out', out, '--teacher', teacher, '--corpus', corpus,
            '--search', json.dumps(search), '--pretrain_steps', '6', '--pretrain_batch_size',
            '4', '--seq_len', '16', '--eval_points', '2', '--eval_batches', '2', '--seeds', '0',
            '1', '--epochs', '1', '--max_train_examples', '0', '--max_length', '32',
            '--rte_heldout', '12', '--sst2_heldout', '8', '--agora_models',
            'winner_scratch_kd', '--agora_lrs', '0.001',
            '--ft_lr', '0.001', '--latency_repeats', '2', '--latency_seq_len', '16']
    result = main(argv)
    assert os.path.isfile(result['report'])
    for name in PNG_FILES:
        assert os.path.getsize(os.path.join(out, name)) > 1000, name
    stages = result['stages']
    assert not any(r['cached'] for r in stages.values())
    expected = {'teacher', 'search', 'data', 'reference', 'pretrain/winner_scratch_kd',
                'pretrain/winner_scratch_mlm', 'pretrain/winner_scratch_mlm_time',
                'pretrain/comparison_scratch_kd', 'glue', 'latency'}
    # The random tiny teacher is far below 2/3: Agora runs with the check off (premise not met).
    expected |= {f'agora/winner_scratch_kd_{t}_s{s}' for t in ('SST-2', 'RTE') for s in (0, 1)}
    expected |= {f'finetune/{m}_{t}_s{s}' for m in ('teacher', 'winner_scratch_kd',
                                                   'winner_scratch_mlm', 'comparison_scratch_kd')
                 for t in ('SST-2', 'RTE') for s in (0, 1)}
    assert set(stages) == expected
    for name in expected:
        assert os.path.isfile(os.path.join(out, name, DONE_FILE)), name
    report = open(result['report']).read()
    assert '## Table 1 in miniature' in report and '## Table 5 in miniature' in report
    assert all(v['answer'] in ('yes', 'no', 'within noise', 'noise not measured', 'not judged')
               for v in result['verdicts'])
    assert report.index('## Premises') < report.index('## Verdicts')
    assert '## Table 5 in miniature: Agora vs plain fine-tuning on SST-2' in report
    agora = json.load(open(os.path.join(out, 'agora', 'winner_scratch_kd_RTE_s0', DONE_FILE)))
    assert agora['figures']['check'] == 0.0 and not agora['figures']['premise_met']
    assert agora['figures']['heldout'] is not None
    winner = json.load(open(os.path.join(out, 'search', 'winner_arch.json')))
    kd = json.load(open(os.path.join(out, 'pretrain', 'winner_scratch_kd', DONE_FILE)))['figures']
    timed = json.load(open(os.path.join(out, 'pretrain', 'winner_scratch_mlm_time', DONE_FILE)))
    # The equal-time run was given the KD run's training-loop time.
    assert timed['figures']['max_minutes'] == pytest.approx(kd['train_seconds'] / 60)
    assert kd['arch'] == [winner[k] for k in ('num_layers', 'num_heads', 'units',
                                              'hidden_size')]
    assert kd['tokens'] == 6 * 4 * 16 and len(kd['curve']) == 2
    # --report_only: the report of what is finished, the rest listed as missing.
    os.remove(os.path.join(out, 'latency', DONE_FILE))
    partial = main(argv + ['--report_only'])
    assert partial['missing'] == ['latency'] and not os.path.exists(
        os.path.join(out, 'latency', DONE_FILE))
    assert 'partial' in open(partial['report']).read()
    # A second run finds every stage finished (the latency again) and rewrites the report.
    again = run_miniature(MiniatureConfig(**_config_values(argv)))
    assert [n for n, r in again['stages'].items() if not r['cached']] == ['latency']
    def stored(verdicts):  # the latency was measured again; everything else was read back
        return [v['text'] for v in verdicts if not v['claim'].startswith('Latency')]
    assert stored(again['verdicts']) == stored(result['verdicts'])
    # Another budget on the same folder is refused before anything runs.
    with pytest.raises(ConfigError, match='pretrain_steps'):
        run_miniature(MiniatureConfig(**dict(_config_values(argv), pretrain_steps=7)))


def _config_values(argv):
    from bort.cli import parse_with_config
    from bort.experiments.miniature import build_parser
    return parse_with_config(build_parser(), argv)


# -- issue 26: premises, equal wall time, Agora's check, the teacher-strength table ---------------
def test_left_rate_against_the_normal_approximation():
    from bort.experiments.verdicts import left_rate
    n, rate = 4000, 0.075
    for acc in (0.07, 0.075, 0.085, 0.09, 0.2):
        se = math.sqrt(acc * (1 - acc) / n)  # the standard error of a proportion, written out
        assert left_rate(acc, rate, n) == (acc - rate > 2 * se), acc
    assert not left_rate(float('nan'), rate, n) and not left_rate(None, rate, n)


def test_levels_off_matches_brute_force():
    from bort.experiments.verdicts import levels_off
    rng = np.random.RandomState(0)
    for _ in range(50):
        steps = sorted(rng.choice([100, 400, 800, 1600, 4000, 8000], 4, replace=False))
        accs = rng.uniform(0.2, 0.4, size=4)
        n = int(rng.choice([500, 5000, 50000]))
        best = max(accs)
        band = 2 * math.sqrt(2 * best * (1 - best) / n)
        expected = min(s for s, a in zip(steps, accs) if best - a <= band)
        assert levels_off(list(zip(steps, accs)), n) == expected
    assert levels_off([], 100) is None


def test_teacher_names_with_adaptation_steps():
    from bort.pretrain.default_teacher import DEFAULT_ADAPT_STEPS, adapted_steps
    assert adapted_steps('minilm') == DEFAULT_ADAPT_STEPS == 400
    assert adapted_steps('minilm-1600') == 1600
    assert adapted_steps('minilm-head') is None and adapted_steps('runs/x') is None
    assert adapted_steps('minilm-16x') is None
    with pytest.raises(ValueError, match='at least 1 step'):
        adapted_steps('minilm-0')


def test_full_budget_students_and_stages():
    from bort.experiments.config import finetuned_models, students
    from bort.experiments.miniature import stage_names
    full = MiniatureConfig(glue_dir='g', budget='full').resolved()
    full.validate()
    runs = [(s.name, s.init, s.objective, s.temperature) for s in students(full)]
    assert runs == [('winner_scratch_kd', 'scratch', 'kd', 2.0),
                    ('winner_scratch_kd_t1', 'scratch', 'kd', 1.0),
                    ('winner_scratch_mlm', 'scratch', 'mlm', None),
                    ('winner_scratch_mlm_time', 'scratch', 'mlm_time', None),
                    ('winner_teacher_kd', 'teacher', 'kd', 2.0),
                    ('winner_teacher_kd_t1', 'teacher', 'kd', 1.0),
                    ('winner_teacher_mlm', 'teacher', 'mlm', None),
                    ('winner_teacher_mlm_time', 'teacher', 'mlm_time', None),
                    ('comparison_scratch_kd', 'scratch', 'kd', 2.0)]
    assert finetuned_models(full) == ('teacher', 'winner_scratch_kd', 'winner_scratch_mlm',
                                      'winner_teacher_kd', 'winner_teacher_mlm',
                                      'comparison_scratch_kd')
    names = stage_names(full)
    assert names[:4] == ['teacher', 'search', 'data', 'reference']
    # The teacher table is its own run (--teacher_table_only): the full budget builds one
    # teacher, the preset's.
    assert full.teacher == 'minilm-1000' and not any(n.startswith('teacher_strength/')
                                                     for n in names)
    # The equal-time run follows its init's KD runs, whose time it is given.
    assert names.index('pretrain/winner_teacher_mlm_time') > names.index(
        'pretrain/winner_teacher_kd_t1')
    assert 'agora/winner_teacher_kd_SST-2_s2' in names and names[-1] == 'latency'
    assert len([n for n in names if n.startswith('finetune/')]) == 6 * 2 * 3
    table = dataclasses.replace(full, teacher_table_only=True, teacher_steps=(400, 1000, 2000))
    assert stage_names(table) == ['teacher', 'data', 'reference', 'teacher_strength/s400',
                                  'teacher_strength/s1000', 'teacher_strength/s2000']
    small = MiniatureConfig(glue_dir='g').resolved()
    assert [s.name for s in students(small)] == ['winner_scratch_kd', 'winner_scratch_mlm',
                                                 'winner_scratch_mlm_time',
                                                 'comparison_scratch_kd']
    assert small.teacher_steps == () and small.init_range == 0.02 and small.ft_init == 'normal'


def test_new_settings_are_checked():
    base = dict(glue_dir='g')
    for bad, word in ((dict(agora_models=('winner_kd',)), 'agora_models'),
                      (dict(agora_models=('teacher',)), 'agora_models'),
                      (dict(finetune_inits=('teacher',)), 'finetune_inits'),
                      (dict(temperatures=(2.0, 2.0)), 'temperatures'),
                      (dict(teacher_steps=(400, 400)), 'teacher_steps'),
                      (dict(agora_tasks=('SST-2',), tasks=('RTE',)), 'agora_tasks'),
                      (dict(inits=('other',)), 'inits')):
        with pytest.raises(ConfigError, match=word):
            MiniatureConfig(**dict(base, **bad)).resolved().validate()


def test_agora_check_follows_the_premise():
    from bort.experiments.finetuning import agora_check
    config = MiniatureConfig(glue_dir='g').resolved()
    assert config.agora_min_teacher_accuracy == pytest.approx(2 / 3)
    assert agora_check(config, 0.81) == pytest.approx(2 / 3)  # the check stays on
    assert agora_check(config, 0.6) == 0.0  # RTE kept, premise not met
    assert agora_check(dataclasses.replace(config, agora_unmet='skip'), 0.6) is None


def test_split_glue_sets_sst2_rows_aside(tmp_path):
    glue = str(tmp_path / 'glue')
    os.makedirs(os.path.join(glue, 'SST-2'))
    rows = ['sentence\tlabel'] + [f'row {i}\t{i % 2}' for i in range(30)]
    with open(os.path.join(glue, 'SST-2', 'train.tsv'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    folders = split_glue(glue, ['SST-2'], str(tmp_path / 'split'), {'SST-2': 8}, seed=1)
    train = open(os.path.join(folders['train'], 'SST-2', 'train.tsv')).read().splitlines()
    held = open(os.path.join(folders['heldout'], 'SST-2', 'dev.tsv')).read().splitlines()
    assert len(train) == 23 and len(held) == 9
    assert sorted(train[1:] + held[1:]) == sorted(rows[1:])
    with pytest.raises(ConfigError, match='--sst2_heldout'):
        split_glue(glue, ['SST-2'], str(tmp_path / 'split2'), {'SST-2': 30}, seed=1)


def test_equal_time_budget_from_the_kd_checkpoints(tmp_path):
    from bort.experiments.pretraining import equal_time_minutes, train_seconds
    run = tmp_path / 'run'
    (run / 'step-0000010').mkdir(parents=True)
    (run / 'step-0000010' / 'state.json').write_text(json.dumps({'train_seconds': 90.0}))
    (run / 'latest').write_text('step-0000010')
    assert train_seconds(str(run)) == 90.0
    assert train_seconds(str(tmp_path / 'none')) is None
    assert equal_time_minutes([{'train_seconds': 90.0}, {'train_seconds': 150.0}]) == 2.0
    with pytest.raises(UserError, match='no training time'):
        equal_time_minutes([{'train_seconds': None}])


def _strength_report(tmp_path, rows):
    """report.md of a run whose teacher-strength stages scored ``rows`` ((steps, top-1), on the
    constructed run's 4,000 held-out positions)."""
    config = MiniatureConfig(glue_dir='g', out=str(tmp_path),
                             teacher_steps=tuple(s for s, _ in rows)).resolved()
    log = _constructed_stages(tmp_path)
    for steps, acc in rows:
        log.add(f'teacher_strength/s{steps}', {'figures': {
            'steps': steps, 'acc': acc, 'top5': 0.5, 'loss': 4.0, 'adapt_heldout_acc': acc,
            'build_seconds': {'adapt': steps * 0.3}, 'folder': 'x'}, 'seconds': 1.0,
            'load_start': [1.0], 'load_end': [1.0], 'cached': False})
    return open(write_report(config, log, SIZES)['report']).read()


def test_teacher_strength_table_in_the_report(tmp_path):
    report = _strength_report(tmp_path, ((400, 0.257), (1600, 0.33), (4000, 0.335)))
    # 33.5 vs 33.0 on 4,000 positions is within 2 standard errors; 25.7 is not.
    assert 'levels off at **1600 steps**' in report and '| 4000 | 33.50 |' in report


def test_teacher_table_says_when_the_gain_has_not_levelled_off(tmp_path):
    """The measured case: 28.2, 30.0, 33.2 %, each row beyond 2 standard errors of the next:
    the report must not call the longest build a levelling-off point."""
    report = _strength_report(tmp_path, ((400, 0.2815), (1000, 0.3001), (2000, 0.3317)))
    assert 'No levelling off within the table' in report and 'levels off at' not in report
