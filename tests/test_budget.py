"""Time budgets (--max_minutes) and Ctrl-C in the training loops, on a fake clock: the run ends
at the first step past the budget with a checkpoint, an evaluation and the final model; Ctrl-C
ends after the current step with a checkpoint a resume continues from; a run that learnt
nothing says so in one warning line."""
import json
import logging
import os
import signal

import numpy as np
import pytest

from bort.optim import learning_rate
from bort.pretrain.config import PretrainConfig
from bort.pretrain.evaluate import most_frequent_rate, warn_if_constant
from bort.pretrain.loop import pretrain
from bort.pretrain.stream import MLMBatch
from bort.stopping import INTERRUPTED, OUT_OF_TIME, RunBudget, schedule_position
from pretrain_helpers import arch_json, prepared_data, student_arch


class FakeClock:
    """Each reading is ``step`` seconds after the previous one."""

    def __init__(self, step=1.0):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


class InterruptingClock(FakeClock):
    """Sends this process SIGINT at its ``at``-th reading (as Ctrl-C would)."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def __call__(self):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().__call__()


# -- bort.stopping -----------------------------------------------------------------------------
def test_budget_counts_earlier_processes_and_stops_past_it():
    clock = FakeClock(step=30.0)
    budget = RunBudget(minutes=2, spent=45.0, clock=clock)  # the first reading starts it
    assert budget.elapsed() == pytest.approx(75.0)  # 45 spent + one 30 s tick
    assert budget.stop_reason() is None  # 105 s of 120
    assert budget.stop_reason() == OUT_OF_TIME  # 135 s
    assert RunBudget(0, clock=FakeClock(1e9)).stop_reason() is None  # no budget: never


def test_paused_time_is_not_counted():
    """Evaluations and checkpoints run inside paused(): a budget buys training time only, so an
    equal-time comparison does not depend on how often each run evaluates."""
    clock = FakeClock(step=10.0)                   # each reading 10 s after the last
    budget = RunBudget(minutes=1, clock=clock)     # starts at 10
    with budget.paused():                          # paused from 20 ...
        clock(), clock()                           # 30, 40
        with budget.paused():                      # nested: counted once
            clock()                                # 50
    # ... to 60 (40 s paused); read at 70: 60 s since the start, 20 of them training
    assert budget.elapsed() == pytest.approx(20.0)
    with budget.paused():                          # paused from 80
        inside = budget.elapsed()                  # read at 90: the open pause not counted
    assert inside == pytest.approx(30.0)           # (then paused until 100: 60 s in all)
    assert budget.stop_reason() is None            # read at 110: 40 s of 60
    assert budget.elapsed() == pytest.approx(50.0)  # read at 120


def test_first_ctrl_c_is_deferred_second_stops_at_once():
    with RunBudget() as budget:
        os.kill(os.getpid(), signal.SIGINT)
        assert budget.interrupted and budget.stop_reason() == INTERRUPTED
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    # The handler is given back: outside the block Ctrl-C is Python's again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_schedule_follows_the_clock_under_a_budget():
    assert schedule_position(5, 100, None) == (5, 100)
    assert schedule_position(5, 100, RunBudget(0)) == (5, 100)
    clock = FakeClock(step=30.0)
    budget = RunBudget(minutes=1, clock=clock)
    step, total = schedule_position(0, 100, budget)  # 30 s of 60: half-way in time
    assert step / total == pytest.approx(0.5)
    # Warm-up 10 % then linear decay to 0, as fractions of the budget.
    assert learning_rate(step, total, 1.0, 0.1) == pytest.approx((1 - 0.5) / 0.9, rel=1e-4)
    step, total = schedule_position(90, 100, RunBudget(minutes=60, clock=FakeClock()))
    assert step / total == pytest.approx(0.9)  # steps ahead of time: the steps count
    step, total = schedule_position(1, 100, RunBudget(minutes=1, clock=FakeClock(100.0)))
    assert learning_rate(step, total, 1.0, 0.1) == 0.0  # the budget is spent


# -- the constant-prediction hint ----------------------------------------------------------------
def test_most_frequent_rate_counts_real_positions_only():
    labels = np.array([[5, 5, 7, 0], [5, 9, 0, 0]])
    weights = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.float32)
    batch = MLMBatch(labels, labels, np.array([4, 4]), labels, labels, weights)
    assert most_frequent_rate([batch]) == pytest.approx(3 / 5)


def test_warning_only_at_the_most_frequent_rate(caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_if_constant(0.076, 0.075)
        assert not warn_if_constant(0.20, 0.075)
    assert len(caplog.records) == 1 and 'most-frequent-token rate' in caplog.text


# -- pretraining -----------------------------------------------------------------------------------
@pytest.fixture
def data(tmp_path):
    return prepared_data(tmp_path)


def _config(tmp_path, data, name='run', **changes):
    folder, tok = data
    values = dict(data=folder, output_dir=str(tmp_path / name),
                  arch=arch_json(student_arch(tok.vocab_size)), kd_weight=0.0, mlm_weight=1.0,
                  total_steps=1000, batch_size=4, lr=1e-3, warmup_ratio=0.2, max_predictions=8,
                  log_interval=2, eval_interval=500, eval_batches=2, checkpoint_interval=500,
                  plot=False)
    values.update(changes)
    return PretrainConfig(**values)


def test_pretraining_budget_ends_with_checkpoint_evaluation_and_model(tmp_path, data, caplog):
    config = _config(tmp_path, data, max_minutes=1)
    with caplog.at_level(logging.WARNING):
        result = pretrain(config, clock=FakeClock(step=10.0))
    out = tmp_path / 'run'
    assert result['stopped'] == OUT_OF_TIME and 0 < result['step'] < 20
    assert 'eval_mlm_acc' in result and 'eval_most_frequent_rate' in result
    assert (out / 'latest').read_text().strip() == f'step-{result["step"]:07d}'
    assert (out / 'model' / 'model.params').is_file()
    with open(out / f'step-{result["step"]:07d}' / 'state.json') as f:
        assert json.load(f)['train_seconds'] >= 60
    # A handful of steps learn nothing: the run says so.
    assert 'most-frequent-token rate' in caplog.text


def test_pretraining_budget_buys_the_same_steps_however_slow_evaluation_is(tmp_path, data,
                                                                           monkeypatch):
    """A held-out evaluation that takes 1,000 s (on the fake clock) every 3 steps: the budget
    still ends the run at the step it ends a run whose evaluation takes no time."""
    from bort.pretrain import loop
    real = loop.evaluate
    steps = {}
    for slow in (False, True):
        clock = FakeClock(step=10.0)

        def timed(*args, _clock=clock, _slow=slow, **kwargs):
            if _slow:
                _clock.now += 1000.0
            return real(*args, **kwargs)

        monkeypatch.setattr(loop, 'evaluate', timed)
        config = _config(tmp_path, data, name=f'slow{slow}', max_minutes=5, eval_interval=3,
                         checkpoint_interval=3)
        steps[slow] = pretrain(config, clock=clock)['step']
    assert 3 < steps[False] == steps[True]


def test_ctrl_c_checkpoints_the_step_it_finished_and_resume_continues(tmp_path, data):
    # A budget far away makes the loop read the clock every step (the clock sends the signal).
    config = _config(tmp_path, data, total_steps=8, max_minutes=600)
    with pytest.raises(KeyboardInterrupt, match='--resume'):
        pretrain(config, clock=InterruptingClock(at=4))
    out = tmp_path / 'run'
    stopped_at = int((out / 'latest').read_text().strip()[5:])
    assert 0 < stopped_at < 8 and not (out / 'model').exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    result = pretrain(_config(tmp_path, data, total_steps=8, max_minutes=600, resume=True))
    assert result['step'] == 8 and (out / 'model' / 'model.params').is_file()


# -- fine-tuning -------------------------------------------------------------------------------
def _weights(folder):
    import mxnet as mx
    return {k: v.asnumpy() for k, v in mx.nd.load(os.path.join(folder, 'model.params')).items()}


def test_finetuning_budget_ends_mid_epoch_with_evaluation_and_checkpoint(tmp_path):
    import toy_glue
    from bort.finetune.loop import finetune
    config = toy_glue.finetune_config(tmp_path, epochs=50, max_minutes=1)
    result = finetune(config, show_progress=False, clock=FakeClock(step=4.0))
    assert result.stopped == OUT_OF_TIME and 0 < result.steps < 50 * 8
    assert result.history[-1]['stopped'] == OUT_OF_TIME and 'accuracy' in result.history[-1]
    assert os.path.isfile(os.path.join(result.folder, 'model.params'))
    with open(os.path.join(config.output_dir, 'dev_metrics.json')) as f:
        assert json.load(f)['stopped'] == OUT_OF_TIME
    checkpoints = os.path.join(config.output_dir, 'checkpoints')
    assert open(os.path.join(checkpoints, 'latest')).read().strip() == \
        f'step-{result.steps:07d}'


def test_finetuning_ctrl_c_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import toy_glue
    from bort.finetune import loop
    straight = loop.finetune(toy_glue.finetune_config(
        tmp_path, epochs=2, output_dir=str(tmp_path / 'straight'), head_dropout=0.1),
        show_progress=False)
    config = toy_glue.finetune_config(tmp_path, epochs=2, output_dir=str(tmp_path / 'cut'),
                                      head_dropout=0.1)
    calls, real = [], loop.train_step

    def ctrl_c_in_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # Ctrl-C arrives in the middle of a step
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, 'train_step', ctrl_c_in_step_5)
    with pytest.raises(KeyboardInterrupt, match='same command'):
        loop.finetune(config, show_progress=False)
    with open(os.path.join(config.output_dir, 'checkpoints', 'latest')) as f:
        assert f.read().strip() == 'step-0000005'  # the step it was in, finished
    resumed = loop.finetune(config, show_progress=False)
    assert resumed.steps == straight.steps == 16
    want = _weights(os.path.join(str(tmp_path / 'straight'), 'checkpoints', 'step-0000016'))
    got = _weights(os.path.join(config.output_dir, 'checkpoints', 'step-0000016'))
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_model_that_learnt_nothing_is_named_in_one_warning(tmp_path, caplog):
    import toy_glue
    from bort.finetune.loop import finetune
    config = toy_glue.finetune_config(tmp_path, epochs=1, lr=1e-9)
    with caplog.at_level(logging.WARNING):
        finetune(config, show_progress=False)
    warned = [r for r in caplog.records if 'most frequent answer' in r.getMessage()]
    assert len(warned) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        finetune(toy_glue.finetune_config(tmp_path, epochs=4, output_dir=str(tmp_path / 'ok')),
                 show_progress=False)
    assert 'most frequent answer' not in caplog.text


def test_predict_with_finetuned_writes_beside_it(tmp_path):
    from bort.finetune.config import DEFAULT_OUTPUT_DIR, FinetuneConfig, with_output_dir
    config = FinetuneConfig(model='m')
    assert with_output_dir(config).output_dir == DEFAULT_OUTPUT_DIR
    assert with_output_dir(config, 'runs/rte/best').output_dir == 'runs/rte'
    (tmp_path / 'run' / 'best').mkdir(parents=True)
    assert with_output_dir(config, str(tmp_path / 'run')).output_dir == str(tmp_path / 'run')
    assert with_output_dir(FinetuneConfig(output_dir='x'), 'runs/rte/best').output_dir == 'x'


# -- Agora -----------------------------------------------------------------------------------------
def test_agora_budget_keeps_the_best_student_so_far(tmp_path):
    import toy_glue
    from bort.finetune.agora import run_agora
    from bort.finetune.config import AgoraConfig
    from bort.finetune.loop import finetune
    teacher = finetune(toy_glue.finetune_config(tmp_path, epochs=5, output_dir=str(
        tmp_path / 'teacher')), show_progress=False).folder
    base = toy_glue.finetune_config(tmp_path, epochs=2, output_dir=str(tmp_path / 'agora'),
                                    max_minutes=1)
    grid = AgoraConfig(teacher=teacher, seeds=[0, 1, 2], lrs=[1e-3], weight_decays=[0.0],
                       warmup_ratios=[0.1], batch_sizes=[8], transform='swap')
    result = run_agora(base, grid, clock=FakeClock(step=2.0))
    assert result.stopped == OUT_OF_TIME and result.iterations == 0
    assert os.path.isfile(os.path.join(result.folder, 'model.params'))
    with open(os.path.join(base.output_dir, 'chs.json')) as f:
        summary = json.load(f)
    assert summary['stopped'] == OUT_OF_TIME and summary['dev_score'] == result.score
