"""The Bayesian search (--strategy bo), its Pareto front and hypervolume, and the comparison mode.

End-to-end runs use the tiny random teacher of ``test_search_driver`` (its fixture and config
helper): a 12-tuple space, 3-step trainings, flops cost unless latency is the point.
"""
import itertools
import json
import os
import subprocess

import numpy as np
import pytest

from bort.search import STRATEGIES, run_search
from bort.search import evaluate as evaluate_module
from bort.search.bo import BayesianStrategy
from bort.search.config import parse_objectives
from bort.search.pareto import (hypervolume, hypervolume_2d, optuna_hypervolume, pareto_front,
                                reference_point)
from test_search_driver import REPO, _horovodrun, _rows, tiny_config, tiny_inputs  # noqa: F401

KNOB_KEYS = ('num_layers', 'num_heads', 'units', 'hidden_size')


# -- pure pieces -----------------------------------------------------------------------------
def brute_front(points):
    """Indices no other point dominates (<= everywhere, < somewhere), by definition."""
    keep = []
    for i, p in enumerate(points):
        if not any(all(q[k] <= p[k] for k in range(len(p)))
                   and any(q[k] < p[k] for k in range(len(p)))
                   for j, q in enumerate(points) if j != i):
            keep.append(i)
    return keep


def brute_hypervolume(points, ref):
    """Exact union volume by coordinate compression: every cell of the grid the points'
    and the reference's coordinates span counts when some point is <= its lower corner."""
    points = [p for p in points if all(p[k] < ref[k] for k in range(len(ref)))]
    axes = [sorted({p[k] for p in points} | {ref[k]}) for k in range(len(ref))]
    volume = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = [axes[k][c] for k, c in enumerate(cell)]
        if any(all(p[k] <= low[k] for k in range(len(ref))) for p in points):
            volume += np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)])
    return float(volume)


@pytest.mark.parametrize('dims', [2, 3])
def test_pareto_front_is_exactly_the_non_dominated_set(dims):
    rng = np.random.RandomState(dims)
    for _ in range(60):
        n = rng.randint(1, 14)
        # Small integer grids make ties and exact duplicates common.
        points = rng.randint(0, 4, size=(n, dims)).astype(float).tolist()
        assert pareto_front(points) == brute_front(points)
    assert pareto_front([[1, 1], [1, 1], [2, 0]]) == [0, 1, 2]  # duplicates both kept
    assert pareto_front([[1, 2], [1, 1]]) == [1]  # a tie in one objective still dominates
    assert pareto_front([[float('nan'), 0], [1, 1]]) == [1]  # diverged: never on the front
    assert pareto_front([]) == []


@pytest.mark.parametrize('dims', [1, 2, 3])
def test_hypervolume_exact_against_brute_force(dims):
    rng = np.random.RandomState(10 + dims)
    for _ in range(40):
        n = rng.randint(0, 9)
        points = (rng.randint(0, 6, size=(n, dims)) / 2.0).tolist()  # ties, duplicates
        ref = [2.5] * dims  # some points lie on or beyond it: they add nothing
        expected = brute_hypervolume(points, ref)
        assert hypervolume(points, ref) == pytest.approx(expected, abs=1e-12)
        if dims > 1 and n:
            check = optuna_hypervolume(points, ref)
            assert check is None or check == pytest.approx(expected, abs=1e-9)
    # Hand-computed: two boxes [1,3]x[2,3] and [2,3]x[1,3] overlap in [2,3]x[2,3]: 2 + 2 - 1.
    assert hypervolume_2d([[1, 2], [2, 1]], [3, 3]) == 3.0
    assert hypervolume([[1, 2, 1], [2, 1, 1]], [3, 3, 2]) == 3.0
    assert hypervolume([[3, 0]], [3, 3]) == 0.0


def test_reference_point_rule_and_objectives():
    ref = reference_point([0.5, 2.0, float('nan')], {'params': 20e6, 'inference_cost': 0.004},
                          ('error', 'latency', 'params'), latency_scale=1e3)
    assert ref['point'] == pytest.approx([2.2, 4.0, 20.0])
    assert 'worst' in ref['rule'] and ref['objectives'] == ['error', 'latency', 'params']
    assert parse_objectives('error,latency,params') == ('error', 'latency', 'params')
    with pytest.raises(ValueError):
        parse_objectives('error,params')
    assert STRATEGIES['bo'] is BayesianStrategy


# -- the strategy end to end -----------------------------------------------------------------
class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a training."""


class CountingTrainer:
    """Wraps train_candidate: records which tuples were trained; may fail after ``fail_after``."""

    def __init__(self, monkeypatch, fail_after=None):
        self.real = evaluate_module.train_candidate
        self.trained = []
        self.fail_after = fail_after
        monkeypatch.setattr(evaluate_module, 'train_candidate', self)

    def __call__(self, arch, *args, **kwargs):
        if self.fail_after is not None and len(self.trained) >= self.fail_after:
            raise Interrupted(f'interrupted after {self.fail_after} trainings')
        self.trained.append(arch.tuple)
        return self.real(arch, *args, **kwargs)


def bo_config(tiny_inputs, out, **changes):
    values = dict(strategy='bo', max_candidates=6, bo_startup=2, reference=())
    values.update(changes)
    return tiny_config(tiny_inputs, out, **values)


def _trials(out):
    """Every trial of the study in ``out``, checked: only valid tuples trained, each once;
    invalid ones pruned with a violated 'valid' constraint."""
    trials = json.loads((out / 'results.json').read_text())['strategy']['trials']
    trained = [tuple(t['tuple']) for t in trials if t['status'] == 'trained']
    assert len(trained) == len(set(trained)) and all(h % a == 0 for _, a, h, _ in trained)
    for t in trials:
        if t['status'] == 'invalid':
            d, a, h, i = t['tuple']
            assert h % a and t['state'] == 'PRUNED' and t['constraints'] == {'valid': 1.0}
        if t['status'] in ('duplicate', 'infeasible'):
            assert t['state'] == ('FAIL' if t['status'] == 'duplicate' else 'PRUNED')
    return trials


def test_bo_end_to_end(tiny_inputs, tmp_path, monkeypatch):
    counter = CountingTrainer(monkeypatch)
    out = tmp_path / 'bo'
    result = run_search(bo_config(tiny_inputs, out))
    assert result['complete'] and len(result['candidates']) == 6
    assert len(counter.trained) == len(set(counter.trained)) == 6  # budget, no tuple twice
    assert all(h % a == 0 for _, a, h, _ in counter.trained)  # invalid tuples never trained
    for name in ('results.json', 'table.md', 'pareto.json', 'pareto.png', 'bo_study.db',
                 'best_arch.json'):
        assert (out / name).exists(), name
    results = json.loads((out / 'results.json').read_text())
    trials = _trials(out)
    trained = [t for t in trials if t['status'] == 'trained']
    assert len(trained) == 6
    assert all(t['state'] in ('PRUNED', 'FAIL') for t in trials if t['status'] != 'trained')
    # The front in pareto.json is exactly the non-dominated trained trials.
    pareto = json.loads((out / 'pareto.json').read_text())
    points = [[t['values']['error'], t['values']['latency']] for t in trained]
    expected = {trained[i]['number'] for i in brute_front(points)}
    assert {r['trial'] for r in pareto['front']} == expected
    ref = pareto['reference_point']['point']
    assert ref[0] == pytest.approx(1.1 * max(p[0] for p in points))
    assert ref[1] == pytest.approx(results['teacher']['inference_cost'])  # flops: GFLOP
    assert pareto['hypervolume'] == pytest.approx(brute_hypervolume(points, ref))
    assert pareto['hypervolume_check_optuna'] == pytest.approx(pareto['hypervolume'])
    # Every front member carries its W and rank from the common table.
    ranks = {tuple(r[k] for k in KNOB_KEYS): r['rank'] for r in results['candidates']}
    for row in pareto['front']:
        assert row['rank'] == ranks[tuple(row[k] for k in KNOB_KEYS)]
    assert '## Pareto front' in (out / 'table.md').read_text()


def _space_params(tiny_inputs):
    """p of every valid tuple of the tiny space, as the search counts it."""
    from bort.arch import load_arch
    from bort.costs import num_parameters
    teacher = load_arch(os.path.join(tiny_inputs[0], 'arch.json')).replace(use_pooler=False)
    return {(d, a, h, i): num_parameters(teacher.replace(num_layers=d, num_heads=a, units=h,
                                                         hidden_size=i))
            for d, a, h, i in itertools.product((1, 2), (2, 3), (12, 16), (16, 32))
            if h % a == 0}


@pytest.mark.slow
def test_constraints_never_trained(tiny_inputs, tmp_path, monkeypatch):
    counter = CountingTrainer(monkeypatch)
    space_p = _space_params(tiny_inputs)
    max_params = float(np.median(sorted(set(space_p.values()))))
    out = tmp_path / 'params'
    measured = dict(cost='measured', latency_seq_len=8, latency_warmup=1, latency_repeats=3,
                    bo_remeasure_repeats=3)
    result = run_search(bo_config(tiny_inputs, out, max_candidates=12, max_params=max_params,
                                  **measured))
    assert result['complete']
    assert counter.trained and all(space_p[t] <= max_params for t in counter.trained)
    trials = _trials(out)
    infeasible = [t for t in trials if t['status'] == 'infeasible']
    assert infeasible and all(space_p[tuple(t['tuple'])] > max_params for t in infeasible)
    assert all(t['constraints']['params'] > 0 for t in infeasible)
    # The budget exceeds the feasible tuples: every one of them trained, none twice.
    assert sorted(counter.trained) == sorted(t for t, p in space_p.items() if p <= max_params)
    pareto = json.loads((out / 'pareto.json').read_text())
    assert pareto['front']
    for row in pareto['front']:  # latency figures with their setting, and re-measured
        for key in ('search_latency', 'remeasured'):
            entry = row[key]
            assert entry['batch_size'] == 1 and entry['seq_len'] == 8 and entry['device']
            assert entry['threads'] and entry['p10_s'] <= entry['median_s'] <= entry['p90_s']
        assert row['remeasured']['repeats'] == 3
        # ... and relative to the teacher, timed beside the front.
        assert row['ratio_to_teacher']['search'] == pytest.approx(
            row['inference_cost'] / pareto['teacher']['inference_cost'])
        assert row['ratio_to_teacher']['remeasured'] == pytest.approx(
            row['remeasured']['per_sample_s'] / pareto['teacher']['remeasured']['per_sample_s'])
    # The front re-checked with the re-measured latencies: dominance by brute force.
    front = pareto['front']
    for row in front:
        mine = (row['error'], row['ratio_to_teacher']['remeasured'])
        beaten = any(o is not row and o['error'] <= mine[0]
                     and o['ratio_to_teacher']['remeasured'] <= mine[1]
                     and (o['error'], o['ratio_to_teacher']['remeasured']) != mine
                     for o in front)
        assert row['dominated_after_remeasure'] == beaten
    assert 'Re-checked after re-measurement' in (out / 'table.md').read_text()
    # A latency limit: tuples measured above it are rejected before training.
    counter.trained.clear()
    costs = json.loads((out / 'costs.json').read_text())['measured']
    limit_ms = float(np.median([1e3 * c['seconds_per_sample'] for c in costs.values()]))
    out = tmp_path / 'latency'
    run_search(bo_config(tiny_inputs, out, max_candidates=12, max_latency_ms=limit_ms,
                         bo_remeasure=False, **measured))
    latency = {tuple(c['tuple']): 1e3 * c['seconds_per_sample'] for c in
               json.loads((out / 'costs.json').read_text())['measured'].values()}
    assert all(latency[t] <= limit_ms for t in counter.trained)
    rejected = [t for t in _trials(out) if t['status'] == 'infeasible']
    assert all(latency[tuple(t['tuple'])] > limit_ms and t['constraints']['latency'] > 0
               for t in rejected)
    assert len(counter.trained) + len(rejected) == len(space_p)


def _study_rows(out):
    return [(t['number'], t['status'], t['tuple']) for t in _trials(out)]


@pytest.mark.slow
@pytest.mark.parametrize('where', ['training', 'tell'])
def test_resume_continues_the_same_study(tiny_inputs, tmp_path, monkeypatch, where):
    """Interrupted during the 4th training, or after it (stored) but before Optuna heard of
    it; restarted: the same study, trial for trial, and no training twice."""
    import optuna
    whole = run_search(bo_config(tiny_inputs, tmp_path / 'whole'))
    counter = CountingTrainer(monkeypatch, fail_after=3 if where == 'training' else None)
    if where == 'tell':
        real_tell, told = optuna.study.Study.tell, []

        def tell(study, trial, values=None, **kwargs):
            if values is not None and len(told) == 3:
                raise Interrupted('killed before the 4th result reached the study')
            told.extend([values] if values is not None else [])
            return real_tell(study, trial, values, **kwargs)
        monkeypatch.setattr(optuna.study.Study, 'tell', tell)
    out = tmp_path / 'resumed'
    with pytest.raises(Interrupted):
        run_search(bo_config(tiny_inputs, out))
    stored = 3 if where == 'training' else 4
    assert len(os.listdir(out / 'candidates')) == stored
    assert not (out / 'results.json').exists()
    study = optuna.load_study(study_name='bort-bo', storage=f'sqlite:///{out}/bo_study.db')
    states = [t.state.name for t in study.trials if t.user_attrs.get('status') != 'duplicate']
    assert states.count('COMPLETE') == 3 and states.count('RUNNING') == 1  # one in flight
    before = {tuple(int(v[1:]) for v in name[:-len('.json')].split('-'))
              for name in os.listdir(out / 'candidates')}
    monkeypatch.undo()
    counter = CountingTrainer(monkeypatch)
    resumed = run_search(bo_config(tiny_inputs, out))
    # Budget 6 in all, each tuple trained once: the stored ones are read back, not retrained.
    assert len(counter.trained) == len(set(counter.trained)) == 6 - stored
    assert not set(counter.trained) & before
    assert resumed['complete'] and len(resumed['candidates']) == 6
    # The re-seeded sampler makes the resumed study the uninterrupted one, trial for trial.
    assert _study_rows(out) == _study_rows(tmp_path / 'whole')
    assert _rows(resumed) == _rows(whole)
    assert (out / 'pareto.json').read_text() == (tmp_path / 'whole' / 'pareto.json').read_text()
    # A finished study rerun trains nothing and writes the same outputs.
    counter.trained.clear()
    again = run_search(bo_config(tiny_inputs, out))
    assert counter.trained == [] and again['table'] == resumed['table']
    assert _study_rows(out) == _study_rows(tmp_path / 'whole')
    # Other objectives on the same study are refused, before anything is written.
    with pytest.raises(evaluate_module.SettingsMismatchError,
                       match='other settings.*bo_objectives differs'):
        run_search(bo_config(tiny_inputs, out, bo_objectives='error,latency,params'))


@pytest.mark.slow
def test_resume_after_sigkill(tiny_inputs, tmp_path):
    """Killed (SIGKILL) mid-study, restarted: the budget in all, no finished trial retrained."""
    import time
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    out = tmp_path / 'killed'
    path = tmp_path / 'bo.json'
    path.write_text(json.dumps(bo_config(tiny_inputs, out, steps=40).to_dict()))
    command = [os.sys.executable, os.path.join(REPO, 'run_search.py'), '--config', str(path)]
    proc = subprocess.Popen(command, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / 'candidates').is_dir() and len(
                [f for f in os.listdir(out / 'candidates') if f.endswith('.json')]) >= 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / 'results.json').exists(), 'the run ended before it was killed'
    # Finished candidates only: the kill may land while one is being written (a .tmp file that
    # is never read; the resumed run writes that candidate again).
    before = {f: os.stat(out / 'candidates' / f).st_mtime_ns
              for f in os.listdir(out / 'candidates') if f.endswith('.json')}
    assert 2 <= len(before) < 6
    done = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {f: os.stat(out / 'candidates' / f).st_mtime_ns
             for f in os.listdir(out / 'candidates') if f.endswith('.json')}
    assert len(after) == 6 and all(after[f] == t for f, t in before.items())  # not retrained
    trials = _trials(out)
    assert sum(t['status'] == 'trained' for t in trials) == 6
    assert not any(t['state'] == 'RUNNING' for t in trials)


@pytest.mark.parametrize('changes', [dict(bo_sampler='nsga2'), dict(bo_sampler='random'),
                                     dict(bo_sampler='gp', max_candidates=4),
                                     dict(bo_objectives='error,latency,params')])
@pytest.mark.slow
def test_samplers_and_three_objectives(tiny_inputs, tmp_path, monkeypatch, changes):
    counter = CountingTrainer(monkeypatch)
    out = tmp_path / 'bo'
    config = bo_config(tiny_inputs, out, **changes)
    result = run_search(config)
    assert result['complete'] and len(counter.trained) == len(set(counter.trained)) == \
        config.max_candidates
    objectives = parse_objectives(config.bo_objectives)
    trained = [t for t in _trials(out) if t['status'] == 'trained']
    points = [[t['values'][o] for o in objectives] for t in trained]
    pareto = json.loads((out / 'pareto.json').read_text())
    assert {r['trial'] for r in pareto['front']} == {trained[i]['number']
                                                     for i in brute_front(points)}
    assert len(pareto['reference_point']['point']) == len(objectives)
    assert pareto['hypervolume'] == pytest.approx(
        brute_hypervolume(points, pareto['reference_point']['point']))


@pytest.mark.slow
def test_compare_mode_equal_budget(tiny_inputs, tmp_path):
    out = tmp_path / 'compare'
    config = tiny_config(tiny_inputs, out, strategy='compare', reference=())
    result = run_search(config)
    comparison = json.loads((out / 'comparison.json').read_text())
    assert result['table'] == (out / 'comparison.md').read_text()
    assert (out / 'comparison.png').exists() and (out / 'best_arch.json').exists()
    rows = {r['strategy']: r for r in comparison['strategies']}
    # 12 valid tuples, ε = 3: 4 trainings each.
    assert comparison['setup'] == dict(space=12, epsilon=3, budget=4, sampler='tpe',
                                       latency_unit='GFLOP/sample')
    assert rows['fptas']['trained'] == rows['bo']['trained'] == 4
    # One teacher cache: built by the first run, only read by the second.
    assert rows['fptas']['teacher_forward_calls'] == config.steps + config.heldout_batches
    assert rows['bo']['teacher_forward_calls'] == 0
    results = {n: json.loads((out / n / 'results.json').read_text()) for n in rows}
    assert results['fptas']['teacher'] == results['bo']['teacher']
    # One reference point: 1.1 x the worst error of both; each hypervolume against it.
    errors = [r['error'] for n in rows for r in results[n]['candidates']]
    ref = comparison['reference_point']['point']
    assert ref == pytest.approx([1.1 * max(errors), results['fptas']['teacher']['inference_cost']])
    for name, row in rows.items():
        points = [[r['error'], r['inference_cost']] for r in results[name]['candidates']]
        assert row['hypervolume'] == pytest.approx(brute_hypervolume(points, ref))
        best = results[name]['candidates'][0]
        assert row['best_w'] == pytest.approx(best['w'])
    # --max_candidates sets the budget of both: ε = ⌈12/2⌉ = 6.
    small = run_search(tiny_config(tiny_inputs, tmp_path / 'small', strategy='compare',
                                   max_candidates=2, reference=()))
    assert [r['trained'] for r in small['comparison']['strategies']] == [2, 2]
    assert small['comparison']['setup']['epsilon'] == 6


@pytest.mark.horovod
@pytest.mark.skipif(_horovodrun() is None, reason='horovodrun is not installed')
def test_two_workers_ask_in_pairs(tiny_inputs, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    out = tmp_path / 'np2'
    path = tmp_path / 'np2.json'
    path.write_text(json.dumps(bo_config(tiny_inputs, out).to_dict()))
    command = [_horovodrun(), '-np', '2', '-H', 'localhost:2', '--gloo', os.sys.executable,
               os.path.join(REPO, 'run_search.py'), '--config', str(path)]
    done = subprocess.run(command, env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / 'results.json').read_text())
    assert results['run']['workers'] == 2 and results['complete']
    trained = [t for t in results['strategy']['trials'] if t['status'] == 'trained']
    assert len(trained) == 6 and len({tuple(t['tuple']) for t in trained}) == 6
    assert (out / 'pareto.json').exists()


# -- one latency measurement for every strategy ------------------------------------------------
@pytest.mark.parametrize('threads', [1, 0])
def test_bo_remeasures_through_the_cost_models_measurement(monkeypatch, threads):
    """BO's final re-measurement times exactly as the cost model behind every strategy's i:
    the same function, input shape, warm-up, threads, clock and device (only the repeats are
    BO's own), so a candidate gets the same latency whichever strategy found it."""
    import mxnet as mx
    from bort.arch import Architecture
    from bort.inference import isolated
    from bort.inference.latency import LatencyResult
    from bort.search.bo_report import remeasure
    from bort.search.config import SearchConfig
    from bort.search.inference import CostModel

    calls = []

    def timing(archs, batch_size, seq_len, warmup, repeats, threads=1, clock='process',
               ctx=None):
        calls.append(dict(batch_size=batch_size, seq_len=seq_len, warmup=warmup,
                          threads=threads, clock=clock, ctx=ctx))
        # A fixed time per shape: both paths must then report the same figures.
        return {label: LatencyResult(samples=[1e-3 * sum(a.tuple) * (1 + 0.01 * k)
                                              for k in range(repeats)],
                                     batch_size=batch_size, seq_len=seq_len, warmup=warmup,
                                     repeats=repeats, device='cpu', threads=threads or 2,
                                     label=label, clock=clock if threads else 'wall')
                for label, a in archs.items()}

    monkeypatch.setattr(isolated, 'time_encoders', timing)
    config = SearchConfig(cost='measured', latency_seq_len=8, latency_batch_size=2,
                          latency_warmup=1, latency_repeats=5, latency_threads=threads)
    costs = CostModel(config, ctx=mx.cpu(0))
    arch = Architecture(1, 2, 8, 16, vocab_size=30, max_length=16)
    costs.cost(arch)  # how every strategy's i is measured
    searched = costs.record(arch)
    again = remeasure([arch], costs, repeats=5)[arch.tuple]
    assert len(calls) == 2 and calls[1] == calls[0]
    assert calls[0] == dict(batch_size=2, seq_len=8, warmup=1, threads=threads,
                            clock='process' if threads else 'wall', ctx=mx.cpu(0))
    assert again['per_sample_s'] == searched['seconds_per_sample']
    assert (again['p10_s'], again['p90_s']) == (searched['p10_s'], searched['p90_s'])
    assert again['clock'] == ('process' if threads else 'wall')


def test_bo_remeasure_runs_in_the_timing_process():
    """By default the re-measurement runs in a one-thread child on its CPU clock, as the
    search's costs (it used to time in the search process, with its threads, by wall clock)."""
    from bort.arch import Architecture
    from bort.search.bo_report import remeasure
    from bort.search.config import SearchConfig
    from bort.search.inference import CostModel
    config = SearchConfig(cost='measured', latency_seq_len=8, latency_warmup=1,
                          latency_repeats=3)
    arch = Architecture(1, 2, 8, 16, vocab_size=30, max_length=16)
    again = remeasure([arch], CostModel(config), repeats=3)[arch.tuple]
    assert again['threads'] == 1 and again['clock'] == 'process' and again['repeats'] == 3
    assert 0 < again['p10_s'] <= again['median_s'] <= again['p90_s']
