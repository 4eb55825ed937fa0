"""The faster training step gives the plain step's numbers.

Each faster piece against its plain counterpart (or a numpy reference): the fused gradient norm,
the clip folded into the optimizer's update, the additive attention mask and the fused training
operators (:mod:`bort.kernels`, each also against numpy in ``test_kernels.py``) in the training
graph, the teacher's logits through the fast inference graph; then a few whole steps of
pretraining (gradient accumulation: grad_req 'add') and fine-tuning, faster path against plain
path (GluonNLP's length softmax, MXNet's own operators, the plain norm and clip), loss and
weights to 1e-5.
"""
import contextlib
import math
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest

from bort import kernels
from bort.arch import Architecture
from bort.distributed import Comm
from bort.layers import SelfAttentionCell
from bort.model import BortModel, build_model
from bort.optim import NORM_CHUNK, global_norm, make_trainer, optimizer_step
from bort.pretrain import loop as pretrain_loop
from bort.pretrain.stream import MLMBatch
from bort.pretrain.teacher import Teacher, mlm_logits

TINY = dict(num_layers=2, num_heads=4, units=32, hidden_size=64, vocab_size=99, max_length=32,
            dropout=0.0, token_type_vocab_size=2, use_pooler=False)


def _arch(**changes):
    return Architecture(**dict(TINY, **changes))


def plain_optimizer_step(trainer, params, max_norm=0.0, scale=1.0):
    """The step as written before: norm in float64 numpy, gradients scaled, then the update."""
    trainer.allreduce_grads()
    grads = [p.grad() for p in params if p.grad_req != 'null']
    total = math.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads))
    norm = total / scale
    if not math.isfinite(norm):
        return norm
    if max_norm and norm > max_norm:
        for g in grads:
            g *= max_norm / norm
    trainer.update(scale)
    return norm


class plain_graph:  # pylint: disable=invalid-name
    """Within: models traced with GluonNLP's length softmax and MXNet's own operators."""

    def __enter__(self):
        SelfAttentionCell.additive_mask = False
        BortModel.fused_kernels = False

    def __exit__(self, *exc):
        SelfAttentionCell.additive_mask = True
        BortModel.fused_kernels = True


def _graph_ops(model, *inputs):
    """Operator names in the model's traced training graph."""
    model(*inputs)  # traces (and caches) the graph
    graph = model._cached_graph[1]  # pylint: disable=protected-access
    return {node['op'] for node in __import__('json').loads(graph.tojson())['nodes']}


def _batch(arch, rng, size=3, length=12, masked=3, full=False):
    ids = rng.randint(5, arch.vocab_size, size=(size, length)).astype(np.int32)
    valid = np.full(size, length, np.int32) if full else rng.randint(length // 2, length + 1,
                                                                      size=size).astype(np.int32)
    valid[0] = length
    positions = np.stack([np.sort(rng.choice(np.arange(1, v), masked, replace=False))
                          for v in valid]).astype(np.int32)
    weights = np.ones((size, masked), np.float32)
    weights[-1, -1] = 0  # a padded prediction
    return MLMBatch(ids, (rng.rand(size, length) > 0.5).astype(np.int32), valid, positions,
                    rng.randint(5, arch.vocab_size, size=(size, masked)).astype(np.int32),
                    weights)


def test_global_norm_against_numpy():
    rng = np.random.RandomState(0)
    shapes = [(3,), (NORM_CHUNK + 5,), (7, 3 * NORM_CHUNK // 7 + 1), (1,)]
    arrays = [rng.randn(*s).astype(np.float32) * (i + 1) for i, s in enumerate(shapes)]
    expected = math.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in arrays))
    grads = [mx.nd.array(a) for a in arrays]
    cache = SimpleNamespace()
    assert float(global_norm(grads).asscalar()) == pytest.approx(expected, rel=1e-6)
    assert float(global_norm(grads, cache).asscalar()) == pytest.approx(expected, rel=1e-6)
    grads[1][:] = 0  # in place, as the gradients change between steps: the views follow
    expected = math.sqrt(sum((a.astype(np.float64) ** 2).sum() for i, a in enumerate(arrays)
                             if i != 1))
    assert float(global_norm(grads, cache).asscalar()) == pytest.approx(expected, rel=1e-6)
    grads[0][0] = np.inf
    assert not math.isfinite(float(global_norm(grads, cache).asscalar()))


@pytest.mark.parametrize('optimizer', ['bertadam', 'sgd'])
@pytest.mark.parametrize('max_norm', [0.0, 0.5, 1e6])
def test_optimizer_step_equals_plain(optimizer, max_norm):
    """Clip folded into rescale_grad == gradients scaled first; norms equal."""
    rng = np.random.RandomState(1)
    sides = []
    for _ in range(2):
        params = mx.gluon.ParameterDict()
        for name, shape in (('w', (40, 3)), ('big', (NORM_CHUNK + 9,)), ('bias', (3,))):
            params.get(name, shape=shape)
        params.initialize(mx.init.Constant(0.5))
        trainer = make_trainer(params, Comm(), optimizer, lr=0.01, weight_decay=0.01,
                               momentum=0.9)
        sides.append((params, trainer))
    for step in range(3):
        grads = {k: rng.randn(*p.shape).astype(np.float32) for k, p in sides[0][0].items()}
        norms = []
        for (params, trainer), fn in zip(sides, (optimizer_step, plain_optimizer_step)):
            with mx.autograd.record():  # a backward marks the gradients fresh
                total = mx.nd.add_n(*[(p.data() * mx.nd.array(grads[key])).sum()
                                      for key, p in params.items()])
            total.backward()
            norms.append(fn(trainer, params.values(), max_norm=max_norm, scale=2.0))
        assert norms[0] == pytest.approx(norms[1], rel=1e-6)
    for (k, fast), slow in zip(sides[0][0].items(), sides[1][0].values()):
        # Not exact: the fused norm is float32, the reference's float64 (and with a clip so
        # strong that Adam's epsilon dominates, float32 rounding alone moves weights ~2e-6).
        np.testing.assert_allclose(fast.data().asnumpy(), slow.data().asnumpy(), rtol=1e-5,
                                   atol=1e-5, err_msg=k)


def test_optimizer_step_skips_non_finite():
    params = mx.gluon.ParameterDict()
    params.get('w', shape=(4,))
    params.initialize(mx.init.Constant(1.0))
    trainer = make_trainer(params, Comm(), 'sgd', lr=0.1)
    with mx.autograd.record():
        total = (params['w'].data() * mx.nd.array([1, np.nan, 0, 0])).sum()
    total.backward()
    assert not math.isfinite(optimizer_step(trainer, params.values(), 1.0))
    np.testing.assert_array_equal(params['w'].data().asnumpy(), 1.0)


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('hybridize', [False, True])
def test_training_graph_equals_plain(hybridize, fused):
    """Additive mask (and the fused operators) against the length softmax and MXNet's
    operators: outputs and every gradient of the training graph, padded rows included."""
    if fused and not kernels.train_ops_usable():
        pytest.skip('the fused training operators cannot be built here')
    arch = _arch()
    batch = _batch(arch, np.random.RandomState(2)).as_nd()
    results = []
    for plain in (False, True):
        BortModel.fused_kernels = fused
        try:
            with plain_graph() if plain else contextlib.nullcontext():
                mx.random.seed(3)
                model = build_model(arch)
                if hybridize:
                    model.hybridize(static_alloc=True)
                with mx.autograd.record():
                    logits = mlm_logits(model, batch)
                    loss = (logits ** 2).mean()
                loss.backward()
        finally:
            BortModel.fused_kernels = True
        results.append((logits.asnumpy(), {k: p.grad().asnumpy() for k, p in
                                           model.collect_params().items()}))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for (k, a), b in zip(results[0][1].items(), results[1][1].values()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7, err_msg=k)


def test_training_graph_uses_the_fused_operators():
    if not kernels.train_ops_usable():
        pytest.skip('the fused training operators cannot be built here')
    arch = _arch(dropout=0.1)
    batch = _batch(arch, np.random.RandomState(2)).as_nd()
    args = (batch['input_ids'], batch['segment_ids'], batch['valid_length'], batch['positions'])
    model = build_model(arch)
    model.hybridize()
    ops = _graph_ops(model, *args)
    assert {kernels.OP_LAYER_NORM, kernels.OP_DROPOUT, kernels.OP_SELF_ATTENTION} <= ops
    assert 'LayerNorm' not in ops and '_contrib_interleaved_matmul_selfatt_qk' not in ops
    with plain_graph():
        model = build_model(arch)
        model.hybridize()
        ops = _graph_ops(model, *args)
    assert not any(op.startswith('bort_') for op in ops) and 'LayerNorm' in ops


def test_float16_cast_keeps_length_softmax():
    model = build_model(_arch())
    model.cast('float16')
    assert not model.encoder.transformer_cells[0].attention_cell.additive_mask
    model.cast('float32')
    assert model.encoder.transformer_cells[0].attention_cell.additive_mask


@pytest.mark.parametrize('full', [False, True])
@pytest.mark.parametrize('pooler', [False, True])
def test_fast_teacher_logits_equal_plain(full, pooler):
    """The fast encoder + MLM head at the masked positions == the plain graph."""
    arch = _arch(use_pooler=pooler)
    mx.random.seed(4)
    model = build_model(arch)
    fast, plain = Teacher(model, fast=True), Teacher(model)
    batch = _batch(arch, np.random.RandomState(5), full=full).as_nd()
    got, expected = fast.logits(batch), plain.logits(batch)
    assert fast._fast is not None and plain._fast is None  # pylint: disable=protected-access
    assert got.shape == expected.shape == (3, 3, arch.vocab_size)
    np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-5, atol=1e-5)


def _pretrain_run(fast: bool, steps: int = 4, kd_weight: float = 0.5):
    """Losses and final weights of a few pretraining steps, faster or plain path."""
    arch = _arch()
    mx.random.seed(6)
    teacher = Teacher(build_model(_arch(num_layers=3, units=48, hidden_size=96)), fast=fast)
    student = build_model(arch)
    student.hybridize(static_alloc=True)
    comm = Comm()
    trainer = make_trainer(student.collect_params(), comm, 'bertadam', lr=1e-3)
    params = [p for p in student.collect_params().values() if p.grad_req != 'null']
    for p in params:
        p.grad_req = 'add'
    config = SimpleNamespace(mlm_weight=0.1, kd_weight=kd_weight, temperature=2.0,
                             released_quirks=False, max_grad_norm=0.1)
    rng = np.random.RandomState(7)
    losses, norms = [], []
    for _ in range(steps):
        micro = [_batch(arch, rng), _batch(arch, rng, length=10)]
        norm, sums = pretrain_loop.pretrain_step(student, teacher if kd_weight else None, micro,
                                                 config, comm, trainer, params)
        losses.append(sums[2] / sums[4])
        norms.append(norm)
    return losses, norms, {k: p.data().asnumpy() for k, p in student.collect_params().items()}


@pytest.mark.parametrize('kd_weight', [0.5, 0.0])
def test_pretrain_steps_equal_plain(monkeypatch, kd_weight):
    """Fast teacher, additive mask and fused clip+update against the plain graph and step."""
    fast = _pretrain_run(True, kd_weight=kd_weight)
    with plain_graph():
        monkeypatch.setattr(pretrain_loop, 'optimizer_step', plain_optimizer_step)
        plain = _pretrain_run(False, kd_weight=kd_weight)
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
    np.testing.assert_allclose(fast[1], plain[1], rtol=1e-5)
    assert max(fast[1]) > 0.1  # the clip was active
    for (k, a), b in zip(fast[2].items(), plain[2].values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=k)


def test_finetune_steps_equal_plain(monkeypatch):
    # pylint: disable=import-outside-toplevel
    from bort.finetune import loop as finetune_loop
    from bort.finetune.classifier import HeadConfig, TaskClassifier, task_loss

    def run():
        mx.random.seed(8)
        model = TaskClassifier(build_model(_arch(), use_decoder=False),
                               HeadConfig(task='CB', num_classes=3, kind='linear', dropout=0.0))
        model.head.initialize(mx.init.Uniform(0.5))
        model.hybridize(static_alloc=True)
        trainer = make_trainer(model.collect_params(), Comm(), 'bertadam', lr=1e-3)
        params = [p for p in model.collect_params().values() if p.grad_req != 'null']
        rng = np.random.RandomState(9)
        losses = []
        for _ in range(3):
            b = _batch(_arch(), rng, size=4)
            inputs = (mx.nd.array(b.input_ids, dtype='int32'),
                      mx.nd.array(b.segment_ids, dtype='int32'),
                      mx.nd.array(b.valid_length, dtype='float32'))
            target = mx.nd.array(rng.randint(0, 3, size=4), dtype='float32')
            loss, _ = finetune_loop.train_step(model, trainer, params, task_loss('CB'), inputs,
                                               target, 0.25, 0.1)
            losses.append(float(loss.asscalar()))
        return losses, [p.data().asnumpy() for p in params]

    fast = run()
    with plain_graph():
        monkeypatch.setattr(finetune_loop, 'optimizer_step', plain_optimizer_step)
        plain = run()
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-5)
    for a, b in zip(fast[1], plain[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('clip_gradient', [None, 0.3])
def test_fused_bertadam_equals_gluonnlp(monkeypatch, tmp_path, fused, clip_gradient):
    """One operator for every parameter == GluonNLP's BERTAdam in groups (no decay on biases,
    a gradient clip, a skipped non-finite step, states saved and loaded in between)."""
    from bort import optim  # pylint: disable=import-outside-toplevel
    if not fused:
        monkeypatch.setattr(optim.kernels, 'adamw_ready', lambda arrays: False)
    rng = np.random.RandomState(11)
    sides = []
    for name in ('fused', 'plain'):
        params = mx.gluon.ParameterDict()
        for key, shape in (('w', (40, 3)), ('big', (NORM_CHUNK * 5 + 3,)), ('x_bias', (3,)),
                           ('ln_gamma', (7,))):
            params.get(key, shape=shape)
        params.initialize(mx.init.Constant(0.5))
        if name == 'plain':
            for key, param in params.items():
                param.wd_mult = 0.0 if optim.no_decay(key) else 1.0
            trainer = mx.gluon.Trainer(params, 'bertadam', {'learning_rate': 0.01, 'wd': 0.01,
                                                            'epsilon': 1e-6}, kvstore=None)
        else:
            trainer = make_trainer(params, Comm(), 'bertadam', lr=0.01, weight_decay=0.01)
            assert type(trainer._optimizer).__name__ == 'FusedBERTAdam'  # pylint: disable=protected-access
        trainer._optimizer.clip_gradient = clip_gradient  # pylint: disable=protected-access
        sides.append((params, trainer))
    for step, scale in enumerate([2.0, 0.5, float('inf'), 1.0]):
        grads = {k: rng.randn(*p.shape).astype(np.float32) * (5 if step == 1 else 1)
                 for k, p in sides[0][0].items()}
        grads['big'][:7] = 0  # untouched rows: the moments still decay
        for side, (params, trainer) in enumerate(sides):
            for key, param in params.items():
                param.grad()[:] = grads[key]
                param.data()._fresh_grad = True  # pylint: disable=protected-access
            trainer.update(scale)  # inf: rescale 0, the update skipped
            if step == 1:  # a checkpoint and resume
                trainer.save_states(str(tmp_path / f'{side}.states'))
                trainer.load_states(str(tmp_path / f'{side}.states'))
    assert type(sides[0][1]._optimizer).__name__ == 'FusedBERTAdam'  # pylint: disable=protected-access
    for (key, a), b in zip(sides[0][0].items(), sides[1][0].values()):
        # Float32 rounding (the operators contract a * b + c differently), amplified where the
        # second moment is small.
        np.testing.assert_allclose(a.data().asnumpy(), b.data().asnumpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=key)
