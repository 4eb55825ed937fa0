"""The whole search on a tiny random teacher: teacher cache, resume, workers, outputs, script."""
import json
import os
import shutil
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from bort.arch import Architecture, load_arch
from bort.model import build_model, load_model, save_model
from bort.search import SearchConfig, run_search
from bort.errors import ConfigError, DataFormatError
from bort.search.evaluate import SettingsMismatchError
from bort.search.space import arch_key
from bort.tokenizers import WordPieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ('the a model layer teacher student search error cost tree river stone light water '
         'green small large fast slow runs reads writes finds keeps loses under over near '
         'far bright dark cold warm old new').split()


@pytest.fixture(scope='module')
def tiny_inputs(tmp_path_factory):
    """A random-weight teacher with an MLM head and its WordPiece tokenizer, and a corpus."""
    root = tmp_path_factory.mktemp('search_inputs')
    tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.'] + WORDS
    tokenizer = WordPieceTokenizer(tokens, lower=True)
    arch = Architecture(2, 4, 16, 32, vocab_size=tokenizer.vocab_size, max_length=24,
                        dropout=0.1, token_type_vocab_size=2, use_pooler=True,
                        name='tiny-teacher')
    mx.random.seed(0)
    teacher = str(root / 'teacher')
    save_model(build_model(arch, use_decoder=True), teacher)
    tokenizer.save(teacher)
    rng = np.random.RandomState(0)
    lines = []
    for _ in range(60):
        for _ in range(rng.randint(2, 5)):
            lines.append(' '.join(rng.choice(WORDS, rng.randint(4, 9))).capitalize() + ' .')
        lines.append('')
    corpus = str(root / 'corpus.txt')
    with open(corpus, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return teacher, corpus


def tiny_config(tiny_inputs, out, **changes):
    teacher, corpus = tiny_inputs
    values = dict(teacher=teacher, corpus=(corpus,), out=str(out), num_layers=(1, 2),
                  num_heads=(2, 3), units=(12, 16), hidden_size=(16, 32), epsilon=3, steps=3,
                  batch_size=4, seq_len=16, heldout_batches=2, cost='flops', lr=0.1,
                  cache_topk=8, progress=False, noise_seeds=0, fidelity_factor=0, init='scratch')
    values.update(changes)
    return SearchConfig(**values)


def _rows(result):
    keys = ('num_layers', 'num_heads', 'units', 'hidden_size', 'params', 'inference_cost',
            'error', 'w', 'rank')
    return [{k: r[k] for k in keys} for r in result['candidates']]


def test_search_outputs(tiny_inputs, tmp_path):
    config = tiny_config(tiny_inputs, tmp_path / 'out')
    result = run_search(config)
    out = tmp_path / 'out'
    for name in ('config.json', 'results.json', 'table.md', 'pareto.png', 'best_arch.json'):
        assert (out / name).exists(), name
    results = json.loads((out / 'results.json').read_text())
    # 2·2·2·2 = 16 tuples; A = 3 does not divide H = 16: 4 skipped.
    assert results['space']['skipped'] == 4 and results['space']['valid'] == 12
    assert len(results['candidates']) == 4 and results['complete']
    assert results['teacher']['params'] > 0 and results['teacher']['inference_cost'] > 0
    first = results['candidates'][0]
    for key in ('rank', 'num_layers', 'num_heads', 'units', 'hidden_size', 'params',
                'inference_cost', 'error', 'w'):
        assert key in first
    assert [r['rank'] for r in results['candidates']] == [1, 2, 3, 4]
    ws = [r['w'] for r in results['candidates']]
    assert ws == sorted(ws, reverse=True)
    best = load_arch(str(out / 'best_arch.json'))
    assert best.tuple == arch_key(first)
    assert best.vocab_size == 6 + len(WORDS) and not best.use_pooler  # the teacher's vocabulary
    table = (out / 'table.md').read_text()
    assert 'tiny-teacher (T)' in table and 'bert_base' in table
    assert table == result['table']
    assert table.startswith('| Rank |')
    # Baselines: the context-free floor (the teacher's mean distribution on the held-out
    # positions, computed here from the cache files) is below any other fixed distribution.
    base = results['baseline']
    rows = []
    for path in sorted((out / 'teacher_cache').glob('*/heldout-*.npz')):
        logits = np.load(path)['logits'].astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        rows.append(p / p.sum(1, keepdims=True))
    p = np.concatenate(rows)
    assert base['context_free'] == pytest.approx(-(p * np.log(p.mean(0))).sum(1).mean(), rel=1e-6)
    assert base['context_free'] <= base['unigram'] + 1e-9
    assert base['uniform'] == pytest.approx(np.log(6 + len(WORDS)))


def test_teacher_runs_once_per_batch(tiny_inputs, tmp_path):
    config = tiny_config(tiny_inputs, tmp_path / 'out')
    batches = config.steps + config.heldout_batches
    first = run_search(config)
    assert len(first['candidates']) == 4
    assert first['teacher_forward_calls'] == batches  # not 4 candidates × batches
    # A new run on the same folder reads the cache (and the finished candidates).
    again = run_search(config)
    assert again['teacher_forward_calls'] == 0
    assert _rows(again) == _rows(first)
    # Without the cache the teacher runs at every step and evaluation of every candidate.
    online = run_search(tiny_config(tiny_inputs, tmp_path / 'online', teacher_cache=False,
                                    cache_topk=0))
    assert online['teacher_forward_calls'] == 4 * batches
    # Full float16 targets match the online ones up to float16 rounding of the logits.
    full = run_search(tiny_config(tiny_inputs, tmp_path / 'full', cache_topk=0))
    np.testing.assert_allclose([r['error'] for r in _rows(full)],
                               [r['error'] for r in _rows(online)], rtol=1e-3)


def test_resume_after_interruption(tiny_inputs, tmp_path):
    reference = run_search(tiny_config(tiny_inputs, tmp_path / 'whole'))
    out = tmp_path / 'resumed'
    partial = run_search(tiny_config(tiny_inputs, out, max_candidates=2))
    assert not partial['complete'] and len(partial['candidates']) == 2
    assert 'Incomplete' in (out / 'table.md').read_text()
    assert len(list((out / 'candidates').glob('*.json'))) == 2
    resumed = run_search(tiny_config(tiny_inputs, out))
    assert resumed['complete']
    assert _rows(resumed) == _rows(reference)
    assert (out / 'table.md').read_text() == (tmp_path / 'whole' / 'table.md').read_text()
    # e as KL divergence: the same trained candidates, shifted by the teacher's entropy.
    kl = run_search(tiny_config(tiny_inputs, tmp_path / 'whole', error='kl'))
    assert kl['teacher_forward_calls'] == 0
    entropy = json.loads((tmp_path / 'whole' / 'results.json').read_text())['teacher'][
        'heldout_entropy']
    assert entropy > 0
    shift = {arch_key(r): r['error'] for r in reference['candidates']}
    for r in kl['candidates']:
        assert r['error'] == pytest.approx(shift[arch_key(r)] - entropy)
        assert r['error'] > 0  # cross-entropy is at least the teacher's entropy
    # Results of other settings are refused, not mixed.
    with pytest.raises(SettingsMismatchError):
        run_search(tiny_config(tiny_inputs, out, lr=0.2))


def test_resume_refuses_other_teacher_weights(tiny_inputs, tmp_path):
    """The same --teacher setting resolving to other weights must not reuse stored results."""
    teacher, corpus = tiny_inputs
    other = str(tmp_path / 'teacher')
    shutil.copytree(teacher, other)
    run_search(tiny_config((other, corpus), tmp_path / 'out', max_candidates=1))
    model = load_model(other)
    mx.random.seed(1)
    model.initialize(force_reinit=True)
    save_model(model, other)
    with pytest.raises(SettingsMismatchError):
        run_search(tiny_config((other, corpus), tmp_path / 'out'))


def _script(config_path, env, cwd, workers=1):
    command = [sys.executable, os.path.join(REPO, 'run_search.py'), '--config', str(config_path)]
    if workers > 1:
        command = [_horovodrun(), '-np', str(workers), '-H', f'localhost:{workers}',
                   '--gloo'] + command
    return command


@pytest.mark.slow
def test_resume_after_sigkill(tiny_inputs, tmp_path):
    """A search killed (SIGKILL) between candidates ends, once restarted, with the same table."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    tables = {}
    for name in ('whole', 'killed'):
        out = tmp_path / name
        path = tmp_path / f'{name}.json'
        path.write_text(json.dumps(tiny_config(tiny_inputs, out, steps=40).to_dict()))
        if name == 'killed':
            proc = subprocess.Popen(_script(path, env, tmp_path), env=env, cwd=str(tmp_path),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if (out / 'candidates').is_dir() and list((out / 'candidates').glob('*.json')):
                    break
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            assert not (out / 'results.json').exists(), 'the run ended before it was killed'
            # A kill during a write may leave a candidate's .tmpPID file: not a candidate.
            assert 1 <= len(list((out / 'candidates').glob('*.json'))) < 4
        done = subprocess.run(_script(path, env, tmp_path), env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        tables[name] = (out / 'table.md').read_text()
    assert tables['killed'] == tables['whole']


def test_measured_cost_cached(tiny_inputs, tmp_path):
    config = tiny_config(tiny_inputs, tmp_path / 'out', cost='measured', latency_seq_len=8,
                         latency_warmup=1, latency_repeats=2, epsilon=6, reference=())
    first = run_search(config)
    costs = json.loads((tmp_path / 'out' / 'costs.json').read_text())
    assert costs['settings']['kind'] == 'measured' and costs['environment']['device']
    # the teacher, the tied tuples (A = 2 and 3 at H = 12), the candidates
    assert len(costs['measured']) >= 4
    assert all(r['inference_cost'] > 0 for r in first['candidates'])
    again = run_search(config)  # nothing re-measured: the same numbers, the same table
    assert again['table'] == first['table']
    assert 'CPU seconds per sample at batch 1, sequence length 8' in first['table']
    assert 'timed in the same rounds as the teacher' in first['table']


def test_run_search_script(tiny_inputs, tmp_path):
    sys.path.insert(0, REPO)
    import run_search  # nothing runs at import
    config = tiny_config(tiny_inputs, tmp_path / 'out').to_dict()
    config.update(epsilon=100, steps=2)
    path = tmp_path / 'search.json'
    path.write_text(json.dumps({k.replace('_', '-') if k == 'cache_topk' else k: v
                                for k, v in config.items()}))
    parsed = run_search.parse_config(['--config', str(path), '--steps', '1'])
    assert parsed.steps == 1 and parsed.epsilon == 100  # the flag wins over the file
    assert parsed.num_heads == (2, 3) and parsed.corpus == config['corpus']
    assert run_search.parse_config(['--no-teacher_cache']).teacher_cache is False
    assert run_search.parse_config([]) == SearchConfig()  # no flags: the built-in default
    with pytest.raises(ConfigError, match='--epsilon must be >= 1'):
        run_search.parse_config(['--epsilon', '0'])
    result = run_search.main(['--config', str(path)])
    assert len(result['candidates']) == 1


def _horovodrun():
    local = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return local if os.path.exists(local) else shutil.which('horovodrun')


@pytest.mark.horovod
@pytest.mark.skipif(_horovodrun() is None, reason='horovodrun is not installed')
def test_two_workers_same_table_as_one(tiny_inputs, tmp_path):
    """One process, horovodrun -np 1 and -np 2: the same table and e curves."""
    # Workers and the single process alike run the fused operators (their dropout stream).
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    env.pop('BORT_FUSED_OPS', None)
    tables, curves = {}, {}
    for name, workers in (('single', 1), ('np1', 1), ('np2', 2)):
        out = tmp_path / name
        config = tiny_config(tiny_inputs, out, epsilon=2).to_dict()
        path = tmp_path / f'{name}.json'
        path.write_text(json.dumps(config))
        command = _script(path, env, tmp_path, workers)
        if name == 'np1':
            command = [_horovodrun(), '-np', '1', '-H', 'localhost:1', '--gloo'] + command
        done = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        tables[name] = (out / 'table.md').read_text()
        results = json.loads((out / 'results.json').read_text())
        assert results['run']['workers'] == workers
        assert len(results['candidates']) == 6
        lines = (out / 'metrics.jsonl').read_text().splitlines()  # rank 0 alone writes
        curves[name] = [(r['step'], r['arch'], r['error']) for r in map(json.loads, lines)
                        if not r.get('final')]
        assert len(curves[name]) == 6 and list(out.glob('events.out.tfevents.*'))
    assert tables['np1'] == tables['single'] and tables['np2'] == tables['single']
    assert curves['np1'] == curves['single'] and curves['np2'] == curves['single']


def test_refused_reruns_change_nothing(tiny_inputs, tmp_path):
    """A rerun with other settings, another strategy or a bad budget is refused before it
    writes anything: config.json, the table and the teacher caches stay as they were."""
    out = tmp_path / 'out'
    first = run_search(tiny_config(tiny_inputs, out))
    config_before = (out / 'config.json').read_text()
    table_before = (out / 'table.md').read_text()
    caches = sorted(os.listdir(out / 'teacher_cache'))
    for changes in ({'lr': 0.2}, {'strategy': 'bo', 'max_candidates': 2},
                    {'batch_size': 2}, {'noise_seeds': 1}):
        with pytest.raises(SettingsMismatchError, match='other settings'):
            run_search(tiny_config(tiny_inputs, out, **changes))
        assert (out / 'config.json').read_text() == config_before
        assert sorted(os.listdir(out / 'teacher_cache')) == caches, changes
    with pytest.raises(ConfigError, match='--max_candidates must be >= 0'):
        run_search(tiny_config(tiny_inputs, out, max_candidates=-1))
    assert (out / 'table.md').read_text() == table_before
    # A resumed run adds its wall time to the earlier ones rather than replacing them.
    again = run_search(tiny_config(tiny_inputs, out))
    run = json.loads((out / 'results.json').read_text())['run']
    assert len(run['sessions_seconds']) == 2
    assert run['wall_seconds_total'] == pytest.approx(sum(run['sessions_seconds']), abs=0.11)
    assert again['table'].split('\n')[:8] == first['table'].split('\n')[:8]


def test_bad_inputs_fail_early_and_leave_no_folder(tiny_inputs, tmp_path):
    teacher, corpus = tiny_inputs
    # No valid tuple: refused before the teacher is even looked at (it does not exist here).
    out = tmp_path / 'grid'
    with pytest.raises(ConfigError, match=r'no tuple .* divisible by num_heads \(A=3\)'):
        run_search(tiny_config((str(tmp_path / 'absent'), corpus), out, num_heads=(3,),
                               units=(16,)))
    assert not out.exists()
    # A corpus that is not UTF-8: one error naming the file; the fresh folder is removed
    # (its teacher cache would have been half-made).
    bad = tmp_path / 'latin1.txt'
    bad.write_bytes('Caf\xe9 cr\xe8me .\n'.encode('latin-1'))
    out = tmp_path / 'latin'
    with pytest.raises(DataFormatError, match='latin1.txt.*not UTF-8'):
        run_search(tiny_config((teacher, str(bad)), out))
    assert not out.exists()


def test_stale_temporary_files_are_not_candidates(tiny_inputs, tmp_path):
    out = tmp_path / 'out'
    run_search(tiny_config(tiny_inputs, out, max_candidates=1))
    stale = out / 'candidates' / 'D1-A2-H12-I16.json.tmp999999'
    stale.write_text('{"half": ')  # what a SIGKILL during a write leaves
    result = run_search(tiny_config(tiny_inputs, out))
    assert result['complete'] and len(result['candidates']) == 4
    assert not stale.exists()


def test_folder_held_second_run_refused(tiny_inputs, tmp_path):
    """A second run on a held --out: one line and exit status 2."""
    out = tmp_path / 'out'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time\nfrom bort.runlock import hold_folder\n'
        'with hold_folder(sys.argv[1], what="holder"):\n'
        '    print("held", flush=True)\n    time.sleep(60)\n'), str(out)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == 'held'
        path = tmp_path / 'c.json'
        path.write_text(json.dumps(tiny_config(tiny_inputs, out).to_dict()))
        done = subprocess.run(_script(path, None, tmp_path), capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
        assert done.returncode == 2
        lines = [l for l in done.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and 'in use by another run' in lines[0], done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_trust_checks_end_to_end(tiny_inputs, tmp_path):
    """Noise and fidelity retrainings: stored apart, resumable, arithmetic as in trust.py, and
    the s-step results identical with the checks on (the longer run gets fresh batches after
    the same first s)."""
    from scipy import stats
    plain = run_search(tiny_config(tiny_inputs, tmp_path / 'plain', epsilon=2))
    config = tiny_config(tiny_inputs, tmp_path / 'out', epsilon=2, noise_seeds=2,
                         noise_candidates=2, fidelity_factor=2, fidelity_candidates=4)
    result = run_search(config)
    assert _rows(result) == _rows(plain)
    trust = result['trust']
    noise = trust['noise']
    assert noise['df'] == 2 * 2 and len(noise['candidates']) == 2
    folder = tmp_path / 'out' / 'candidates'
    assert len(list((folder / 'seed+1').glob('*.json'))) == 2
    assert len(list((folder / 'steps-x2').glob('*.json'))) == 4
    groups = [c['errors'] for c in noise['candidates']]
    assert noise['sigma'] == pytest.approx(np.sqrt(np.mean([np.var(g, ddof=1) for g in groups])))
    fid = trust['fidelity']
    assert fid['candidates'] == 4 and fid['factor'] == 2
    short = [r['error_short'] for r in fid['rows']]
    long = [r['error_long'] for r in fid['rows']]
    if np.ptp(short) and np.ptp(long):
        assert fid['tau_error'] == pytest.approx(stats.kendalltau(short, long).statistic)
    top = result['candidates'][0]
    assert top['w_low'] <= top['w'] <= top['w_high'] and top['error_sd'] == noise['sigma']
    assert 'Seed noise of e' in result['table'] and 'Verdict' in result['table']
    assert 'Kendall τ(e after s, e after 2·s)' in result['table']
    again = run_search(config)  # everything stored: nothing retrained, the same table
    assert again['table'] == result['table']


def test_unigram_decoder_bias_starts_candidates_at_the_unigram(tiny_inputs, tmp_path):
    """With --decoder_bias unigram and a negligible step, every candidate's e is the unigram
    baseline's (log frequencies of the training tokens, counted here with numpy); with 'zero'
    it is the uniform distribution's."""
    results = {}
    for bias in ('unigram', 'zero'):
        config = tiny_config(tiny_inputs, tmp_path / bias, decoder_bias=bias, steps=1, lr=1e-12)
        results[bias] = run_search(config)
    base = json.loads((tmp_path / 'zero' / 'results.json').read_text())['baseline']
    for record in results['unigram']['candidates']:
        assert record['error'] == pytest.approx(base['unigram'], abs=0.05)
    for record in results['zero']['candidates']:
        assert record['error'] == pytest.approx(base['uniform'], abs=0.05)
    assert abs(base['unigram'] - base['uniform']) > 0.2  # the two starts are told apart



def test_search_curves_per_candidate_and_resumed_without_repeats(tiny_inputs, tmp_path):
    """metrics.jsonl and TensorBoard events: e, costs and training loss per candidate in the
    order evaluated, the best e so far, a final summary; a resumed search adds only new steps."""
    from test_log import _read_events
    out = tmp_path / 'out'
    run_search(tiny_config(tiny_inputs, out, max_candidates=2))
    result = run_search(tiny_config(tiny_inputs, out))
    records = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    steps = [r for r in records if not r.get('final')]
    assert [r['step'] for r in steps] == [1, 2, 3, 4]  # the first two were not logged twice
    by_arch = {'<{}, {}, {}, {}>'.format(*arch_key(r)): r for r in result['candidates']}
    assert sorted(r['arch'] for r in steps) == sorted(by_arch)
    for r in steps:
        for key in ('error', 'cross_entropy', 'train_loss', 'params', 'inference_cost'):
            assert r[key] == pytest.approx(by_arch[r['arch']][key]), key
    errors = [r['error'] for r in steps]
    assert [r['best_error'] for r in steps] == pytest.approx(np.minimum.accumulate(errors))
    final = records[-1]
    assert final['final'] and final['candidates'] == 4
    assert final['best_w'] == pytest.approx(result['best']['w'])
    scalars = _read_events(out)
    assert [s for s, _ in scalars['error']] == [1, 2, 3, 4]
    assert [v for _, v in scalars['error']] == pytest.approx(errors, rel=1e-6)
    assert [v for _, v in scalars['best_w']] == pytest.approx([r['best_w'] for r in records
                                                              if r.get('final')], rel=1e-6)
    assert 'arch' not in scalars and 'diverged' not in scalars


def test_init_teacher_extracts_candidates(tiny_inputs, tmp_path):
    """--init teacher: the teacher's own tuple, extracted and barely trained, has e = KL ≈ 0
    (it is the teacher); from scratch it is far from it. A grid tuple that does not fit inside
    the teacher is refused before anything is trained, naming the dimension."""
    from bort.arch import ArchitectureError
    own = dict(num_layers=(2,), num_heads=(4,), units=(16,), hidden_size=(32,), epsilon=1,
               steps=1, lr=1e-12, error='kl')
    extracted = run_search(tiny_config(tiny_inputs, tmp_path / 'x', init='teacher', **own))
    scratch = run_search(tiny_config(tiny_inputs, tmp_path / 's', **own))
    assert extracted['candidates'][0]['error'] == pytest.approx(0.0, abs=0.02)
    assert scratch['candidates'][0]['error'] > 0.2
    assert SearchConfig(teacher='t', corpus=('c',)).init == 'teacher'  # the default
    with pytest.raises(ArchitectureError, match='hidden_size.*pass --init scratch'):
        run_search(tiny_config(tiny_inputs, tmp_path / 'big', init='teacher',
                               num_heads=(4,), units=(16,), hidden_size=(16, 64)))
