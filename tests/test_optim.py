"""bort.optim against closed forms and numpy: schedules, BERT-Adam, global-norm clipping."""
import math

import mxnet as mx
import numpy as np
import pytest

from bort.distributed import Comm
from bort.model import build_model
from bort.optim import clip_global_norm, learning_rate, make_trainer, optimizer_step, zero_grads


def _schedule(decay, total, base, warmup):
    """The whole schedule in closed form, as numpy: rates for steps 0 .. total + 4."""
    current = np.arange(1, total + 6, dtype=np.float64)  # step + 1: the step being taken
    if decay == 'linear':  # a tent: 0 → base over the warm-up, base → 0 at total
        corners = {0: [0, total], total: [0, total]}.get(warmup, [0, warmup, total])
        heights = {0: [base, 0.0], total: [0.0, base]}.get(warmup, [0.0, base, 0.0])
        return np.interp(current, corners, heights, right=0.0)
    if decay == 'noam':
        return base * np.minimum(current / max(warmup, 1), np.sqrt(max(warmup, 1) / current))
    return np.where(current <= warmup, base * current / max(warmup, 1), base)


@pytest.mark.parametrize('decay', ['linear', 'noam', 'constant'])
@pytest.mark.parametrize('total,warmup_ratio', [(100, 0.1), (37, 0.25), (20, 0.0), (8, 1.0)])
def test_schedules_against_closed_form(decay, total, warmup_ratio):
    base = 3e-4
    warmup = int(round(warmup_ratio * total))
    got = [learning_rate(step, total, base, warmup_ratio, decay) for step in range(total + 5)]
    np.testing.assert_allclose(got, _schedule(decay, total, base, warmup), rtol=1e-12, atol=0)


def test_schedule_landmarks():
    """Values worked out by hand: 10 warm-up steps of 100, peak 1e-3."""
    lr = lambda step, decay: learning_rate(step, 100, 1e-3, 0.1, decay)  # noqa: E731
    assert lr(0, 'linear') == pytest.approx(1e-4)
    assert lr(9, 'linear') == pytest.approx(1e-3)  # the last warm-up step reaches the peak
    assert lr(54, 'linear') == pytest.approx(1e-3 * 45 / 90)
    assert lr(99, 'linear') == 0.0 and lr(150, 'linear') == 0.0
    assert lr(39, 'noam') == pytest.approx(5e-4)  # sqrt(10 / 40) = 1/2
    assert lr(9, 'noam') == pytest.approx(1e-3)
    assert lr(99, 'constant') == pytest.approx(1e-3)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match='unknown schedule'):
        learning_rate(0, 10, 1e-3, 0.1, 'cosine')
    with pytest.raises(ValueError, match='warmup_ratio'):
        learning_rate(0, 10, 1e-3, 1.5)


def _exempt_by_structure(model):
    """Ids of LayerNorm scales/shifts and biases, found from the block types, not the names."""
    exempt = set()

    def visit(block):
        if isinstance(block, mx.gluon.nn.LayerNorm):
            exempt.update(id(p) for p in block.params.values())
        for attr in ('bias', 'i2h_bias'):
            param = getattr(block, attr, None)
            if isinstance(param, mx.gluon.Parameter):
                exempt.add(id(param))
        for child in block._children.values():  # pylint: disable=protected-access
            visit(child)

    visit(model)
    return exempt


def _set_grads(params, grads):
    """Backpropagate sum(w · G) so that every gradient is G (and fresh for the trainer)."""
    with mx.autograd.record():
        loss = mx.nd.add_n(*[(p.data() * mx.nd.array(grads[name])).sum()
                             for name, p in params.items()])
    loss.backward()


def test_bertadam_decays_no_layernorm_or_bias(tiny_arch):
    """With zero gradients Adam's moments stay 0, so one step is pure weight decay:
    w ← w − lr·wd·w on weights and nothing on LayerNorm parameters and biases."""
    model = build_model(tiny_arch, use_decoder=True)
    model(mx.nd.ones((1, 4)), None, mx.nd.array([4]), mx.nd.array([[0]]))  # shapes known
    params = model.collect_params()
    before = {name: p.data().asnumpy().copy() for name, p in params.items()}
    _set_grads(params, {name: np.zeros(p.shape) for name, p in params.items()})
    lr, wd = 0.1, 0.5
    trainer = make_trainer(params, Comm(), 'bertadam', lr=lr, weight_decay=wd)
    trainer.step(1)
    exempt = _exempt_by_structure(model)
    assert any(id(p) in exempt for p in params.values()) and \
        any(id(p) not in exempt for p in params.values())
    for name, p in params.items():
        expected = before[name] if id(p) in exempt else before[name] * (1 - lr * wd)
        np.testing.assert_allclose(p.data().asnumpy(), expected, rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_bertadam_update_against_numpy():
    """Two steps of BERT-Adam (decoupled weight decay, no bias correction) written from the
    formula: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², w ← w − lr·(m / (√v + ε) + wd·w)."""
    rng = np.random.RandomState(0)
    params = _small_net().collect_params()
    lr, wd, eps = 0.05, 0.1, 1e-6
    trainer = make_trainer(params, Comm(), 'bertadam', lr=lr, weight_decay=wd, epsilon=eps)
    # BERT-Adam's default betas, as the float32 kernel holds them (1 − β2 is 0.00099999 there)
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
    weights = {name: p.data().asnumpy().astype(np.float64) for name, p in params.items()}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    for _ in range(2):
        grads = {name: rng.normal(size=p.shape) for name, p in params.items()}
        _set_grads(params, grads)
        for name, p in params.items():
            grad = grads[name]
            m, v = moments[name]
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad ** 2
            decay = 0.0 if name.endswith(('_bias', '_gamma', '_beta')) else wd
            weights[name] = weights[name] - lr * (m / (np.sqrt(v) + eps) + decay * weights[name])
            moments[name] = (m, v)
        trainer.step(1)
    # Each step moves a weight by about lr·√10 = 0.16; the float32 kernel is accurate to
    # ~3e-5 of that. Weight decay (lr·wd·w ~ 2e-3) or bias correction (×3 on the first step)
    # would be far outside the tolerance.
    for name, p in params.items():
        np.testing.assert_allclose(p.data().asnumpy(), weights[name], rtol=0, atol=2e-5,
                                   err_msg=name)


def _params_with_grads(grads):
    params = mx.gluon.ParameterDict('clip_')
    for n, grad in enumerate(grads):
        params.get(f'p{n}', shape=grad.shape).initialize(mx.init.Zero())
    _set_grads(params, {name: g for name, g in zip(params.keys(), grads)})
    return list(params.values())


def test_clip_global_norm_against_numpy():
    rng = np.random.RandomState(1)
    grads = [rng.normal(size=(3, 4)), rng.normal(size=(5,)), rng.normal(size=(2, 2, 2))]
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads))  # = ‖concat(g)‖₂
    assert norm == pytest.approx(np.linalg.norm(np.concatenate([g.ravel() for g in grads])))

    params = _params_with_grads(grads)
    assert clip_global_norm(params, 10 * norm) == pytest.approx(norm, rel=1e-5)
    for p, g in zip(params, grads):  # below the limit: untouched
        np.testing.assert_allclose(p.grad().asnumpy(), g, rtol=1e-6)

    assert clip_global_norm(params, 1.0) == pytest.approx(norm, rel=1e-5)
    clipped = [p.grad().asnumpy() for p in params]
    assert np.linalg.norm(np.concatenate([c.ravel() for c in clipped])) == pytest.approx(1.0,
                                                                                       rel=1e-5)
    for c, g in zip(clipped, grads):  # the same direction, every array scaled alike
        np.testing.assert_allclose(c, g / norm, rtol=1e-5, atol=1e-7)


def test_clip_skips_frozen_and_leaves_non_finite_gradients():
    grads = [np.array([3.0, 4.0]), np.array([100.0])]
    params = _params_with_grads(grads)
    params[1].grad_req = 'null'  # frozen: not part of the norm
    assert clip_global_norm(params, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(params[0].grad().asnumpy(), [0.6, 0.8], rtol=1e-6)

    bad = _params_with_grads([np.array([1.0, np.nan]), np.array([2.0])])
    assert math.isnan(clip_global_norm(bad, 1.0))
    np.testing.assert_array_equal(bad[1].grad().asnumpy(), [2.0])
    assert clip_global_norm([], 1.0) == 0.0


def test_optimizer_step_clips_then_updates_with_sgd():
    """One process: w ← w − lr · clip(g / scale), and a non-finite gradient skips the update."""
    params = mx.gluon.ParameterDict('step_')
    params.get('w', shape=(2,)).initialize(mx.init.Zero())
    params.get('u', shape=(3,)).initialize(mx.init.Zero())
    trainer = make_trainer(params, Comm(), 'sgd', lr=0.5, weight_decay=0.0)
    _set_grads(params, {'step_w': np.array([6.0, 8.0]), 'step_u': np.zeros(3)})
    norm = optimizer_step(trainer, params.values(), max_norm=1.0, scale=2.0)
    assert norm == pytest.approx(5.0)  # the norm of g / 2
    w = params['step_w']
    np.testing.assert_allclose(w.data().asnumpy(), -0.5 * np.array([0.6, 0.8]), rtol=1e-5)
    _set_grads(params, {'step_w': np.array([np.inf, 1.0]), 'step_u': np.ones(3)})
    before = w.data().asnumpy().copy()
    assert not math.isfinite(optimizer_step(trainer, params.values(), max_norm=1.0))
    np.testing.assert_array_equal(w.data().asnumpy(), before)


def test_make_trainer_rejects_unknown_optimizer():
    net = mx.gluon.nn.Dense(2, in_units=2)
    net.initialize()
    with pytest.raises(ValueError, match='unknown optimizer'):
        make_trainer(net.collect_params(), Comm(), 'lamb')


def _small_net():
    net = mx.gluon.nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(mx.gluon.nn.Dense(3, in_units=4), mx.gluon.nn.LayerNorm(in_channels=3))
    mx.random.seed(0)
    net.initialize(mx.init.Normal(0.5))
    return net


@pytest.mark.parametrize('steps, beta2', [(1, 0.999), (5, 0.999), (5, 0.98)])
def test_adamw_update_against_numpy(steps, beta2):
    """AdamW written from PyTorch's documented algorithm: m̂ = m/(1−β1^t), v̂ = v/(1−β2^t),
    w ← w − lr·wd·w − lr·m̂/(√v̂ + ε). The first step moves each weight by about lr (BERT-Adam
    moves it 3.2·lr): a missing correction would be far outside the tolerance."""
    rng = np.random.RandomState(1)
    net = _small_net()
    params = net.collect_params()
    lr, wd, eps = 0.05, 0.1, 1e-6
    trainer = make_trainer(params, Comm(), 'adamw', lr=lr, weight_decay=wd, epsilon=eps,
                           beta2=beta2)
    b1, b2 = float(np.float32(0.9)), float(np.float32(beta2))
    weights = {name: p.data().asnumpy().astype(np.float64) for name, p in params.items()}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    for t in range(1, steps + 1):
        grads = {name: rng.normal(size=p.shape) for name, p in params.items()}
        _set_grads(params, grads)
        for name in params:
            m, v = moments[name]
            m = b1 * m + (1 - b1) * grads[name]
            v = b2 * v + (1 - b2) * grads[name] ** 2
            decay = 0.0 if name.endswith(('_bias', '_gamma', '_beta')) else wd
            w = weights[name] * (1 - lr * decay)
            weights[name] = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
            moments[name] = (m, v)
        trainer.step(1)
    for name, p in params.items():
        np.testing.assert_allclose(p.data().asnumpy(), weights[name], rtol=0, atol=2e-5,
                                   err_msg=name)


def test_adamw_matches_torch_adamw():
    """Ten steps of our AdamW against ``torch.optim.AdamW`` (an independent implementation)
    from the same weights and gradients, with the schedule changing the rate every step."""
    torch = pytest.importorskip('torch')
    rng = np.random.RandomState(2)
    net = _small_net()
    params = net.collect_params()
    trainer = make_trainer(params, Comm(), 'adamw', lr=0.01, weight_decay=0.05, epsilon=1e-6)
    tensors = {name: torch.tensor(p.data().asnumpy(), dtype=torch.float64, requires_grad=True)
               for name, p in params.items()}
    decayed = [t for n, t in tensors.items() if not n.endswith(('_bias', '_gamma', '_beta'))]
    exempt = [t for n, t in tensors.items() if n.endswith(('_bias', '_gamma', '_beta'))]
    reference = torch.optim.AdamW([{'params': decayed, 'weight_decay': 0.05},
                                   {'params': exempt, 'weight_decay': 0.0}], lr=0.01,
                                  betas=(float(np.float32(0.9)), float(np.float32(0.999))),
                                  eps=1e-6)
    for step in range(10):
        rate = learning_rate(step, 10, 0.01, 0.3)
        trainer.set_learning_rate(rate)
        for group in reference.param_groups:
            group['lr'] = rate
        grads = {name: rng.normal(size=p.shape) for name, p in params.items()}
        _set_grads(params, grads)
        trainer.step(1)
        for name, t in tensors.items():
            t.grad = torch.tensor(grads[name])
        reference.step()
    for name, p in params.items():
        np.testing.assert_allclose(p.data().asnumpy(), tensors[name].detach().numpy(), rtol=0,
                                   atol=1e-5, err_msg=name)


def test_adamw_resumes_with_its_step_count(tmp_path):
    """Trainer state saved after 3 steps and loaded into a new trainer continues the bias
    correction at t = 4 (it restarted at t = 1 before: the loaded counts were replaced by the
    per-device table at the first update)."""
    from bort.checkpoint import load_trainer_state, save_trainer_state
    rng = np.random.RandomState(3)
    grads = [{name: rng.normal(size=p.shape) for name, p in _small_net().collect_params().items()}
             for _ in range(5)]

    def run(split):
        net = _small_net()
        params = net.collect_params()
        trainer = make_trainer(params, Comm(), 'adamw', lr=0.05, weight_decay=0.0)
        for step, g in enumerate(grads):
            if step == split:
                save_trainer_state(trainer, str(tmp_path / 'state'))
                trainer = make_trainer(params, Comm(), 'adamw', lr=0.05, weight_decay=0.0)
                load_trainer_state(trainer, str(tmp_path / 'state'), mx.cpu())
            _set_grads(params, {n: g[n.replace(net.prefix, 'net_', 1)] for n in params})
            trainer.step(1)
        return {n: p.data().asnumpy() for n, p in params.items()}

    straight, resumed = run(None), run(3)
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_adam_without_decay_is_fused_and_equals_mxnets_adam():
    """'adam' with weight decay 0 (the search's default) runs FusedAdam: eight steps with a
    changing rate against MXNet's own Adam (``adam_update`` per parameter) and against numpy
    (ε on √v, as MXNet's Adam); with weight decay it stays MXNet's Adam."""
    rng = np.random.RandomState(3)
    lr, eps = 0.02, 1e-6
    nets = [_small_net(), _small_net()]
    fused = make_trainer(nets[0].collect_params(), Comm(), 'adam', lr=lr, weight_decay=0.0,
                         epsilon=eps)
    assert type(fused._optimizer).__name__ == 'FusedAdam'  # pylint: disable=protected-access
    plain = mx.gluon.Trainer(nets[1].collect_params(), 'adam',
                             {'learning_rate': lr, 'wd': 0.0, 'epsilon': eps})
    params = [net.collect_params() for net in nets]
    b1, b2 = float(np.float32(0.9)), float(np.float32(0.999))
    weights = {name: p.data().asnumpy().astype(np.float64) for name, p in params[0].items()}
    moments = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in weights.items()}
    for t in range(1, 9):
        rate = learning_rate(t - 1, 8, lr, 0.25)
        grads = {name: rng.normal(size=p.shape) for name, p in params[0].items()}
        for trainer, ps in zip((fused, plain), params):
            trainer.set_learning_rate(rate)
            _set_grads(ps, dict(zip(ps.keys(), grads.values())))
            trainer.step(1)
        for name in weights:
            m, v = moments[name]
            m = b1 * m + (1 - b1) * grads[name]
            v = b2 * v + (1 - b2) * grads[name] ** 2
            step = rate * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            weights[name] = weights[name] - step * m / (np.sqrt(v) + eps)
            moments[name] = (m, v)
    for (name, p), q in zip(params[0].items(), params[1].values()):
        np.testing.assert_allclose(p.data().asnumpy(), q.data().asnumpy(), rtol=0, atol=1e-6,
                                   err_msg=name)
        np.testing.assert_allclose(p.data().asnumpy(), weights[name], rtol=0, atol=2e-5,
                                   err_msg=name)
    decayed = make_trainer(_small_net().collect_params(), Comm(), 'adam', weight_decay=0.01)
    assert type(decayed._optimizer).__name__ == 'Adam'  # pylint: disable=protected-access


def test_zero_grads_zeroes_every_accumulated_gradient():
    """Gradients accumulated twice (grad_req 'add'), then zeroed in one call: all exactly 0,
    weights untouched, and the next accumulation starts from 0."""
    net = _small_net()
    params = net.collect_params()
    params.setattr('grad_req', 'add')
    grads = {name: np.full(p.shape, 0.5) for name, p in params.items()}
    weights = {name: p.data().asnumpy() for name, p in params.items()}
    _set_grads(params, grads)
    _set_grads(params, grads)
    assert all(np.allclose(p.grad().asnumpy(), 1.0) for p in params.values())
    zero_grads(params.values())
    for name, p in params.items():
        assert not p.grad().asnumpy().any(), name
        np.testing.assert_array_equal(p.data().asnumpy(), weights[name])
    _set_grads(params, grads)
    assert all(np.allclose(p.grad().asnumpy(), 0.5) for p in params.values())
