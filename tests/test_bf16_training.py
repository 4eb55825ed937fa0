"""bfloat16 mixed precision in training (``--dtype bfloat16``): which products run in bfloat16
(graph types, checked on every CPU: no bfloat16 kernel runs), that the parameters stay float32,
the refusal in one line where the CPU has no bfloat16 kernels, and, only where it has them, a
dense layer against numpy and a pretraining loss curve against float32's."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from bort import hardware
from bort.arch import Architecture
from bort.finetune.classifier import HeadConfig, TaskClassifier
from bort.finetune.config import FinetuneConfig
from bort.hardware import CpuSupport, UnsupportedHardware
from bort.layers import BFLOAT16, bf16_fully_connected, set_compute_dtype
from bort.model import build_model
from bort.pretrain.config import PretrainConfig
from bort.pretrain.loop import pretrain
from bort.search.config import SearchConfig

from pretrain_helpers import arch_json, prepared_data, student_arch
from test_bf16 import round_bf16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_HERE = hardware.cpu_support().bf16_usable
needs_bf16 = pytest.mark.skipif(not BF16_HERE, reason='no bfloat16 kernels on this CPU: '
                                + hardware.cpu_support().reason)
NO_BF16 = CpuSupport(False, False, False, False, 'float32: CPU lacks bfloat16 (test)')
ARCH = Architecture(num_layers=2, num_heads=2, units=16, hidden_size=32, vocab_size=40,
                    max_length=16, dropout=0.1, token_type_vocab_size=2, use_pooler=True)
MODEL_INPUTS = ('tokens', 'types', 'valid', 'positions')


def _node_types(block, names):
    """{output name: numpy dtype} of every node of ``block``'s graph on symbolic float32 inputs
    ``names`` (MXNet's type inference: nothing is computed)."""
    out = block(*[mx.sym.var(n) for n in names])
    sym = mx.sym.Group(list(out)) if isinstance(out, (list, tuple)) else out
    internals = sym.get_internals()
    _, types, _ = internals.infer_type(**{n: 'float32' for n in names})
    return dict(zip(internals.list_outputs(), types))


def _dense_outputs(types):
    return {n: t for n, t in types.items() if n.endswith('fullyconnected0_output')}


def test_every_dense_product_in_bf16_and_nothing_else():
    """Attention projections, output projections, both FFN layers, pooler and MLM head multiply
    in bfloat16; embeddings, LayerNorm, softmax and the outputs stay float32; the weights too."""
    model = build_model(ARCH, use_decoder=True)
    switched = set_compute_dtype(model, 'bfloat16')
    # per layer: qkv, proj, ffn_1, ffn_2; plus pooler and the decoder's two dense layers
    assert switched == 4 * ARCH.num_layers + 3
    types = _node_types(model, MODEL_INPUTS)
    dense = _dense_outputs(types)
    assert len(dense) == switched and all(np.dtype(t) == BFLOAT16 for t in dense.values())
    others = {n: t for n, t in types.items() if n not in dense and 'amp_cast' not in n
              and np.dtype(t) == BFLOAT16}
    assert not others, others
    assert all(np.dtype(p.dtype) == np.float32 for p in model.collect_params().values())
    assert set_compute_dtype(model, 'float32') == switched
    assert not any(np.dtype(t) == BFLOAT16 for t in _node_types(model, MODEL_INPUTS).values())


def test_task_head_multiplies_in_bf16_too():
    model = TaskClassifier(build_model(ARCH, use_decoder=False),
                           HeadConfig(task='RTE', num_classes=2, kind='linear'))
    model.head.initialize()
    assert set_compute_dtype(model, 'bfloat16') == 4 * ARCH.num_layers + 2  # pooler, head
    dense = _dense_outputs(_node_types(model, ('tokens', 'types', 'valid')))
    assert any('head' in n or 'classifier' in n for n in dense), sorted(dense)
    assert all(np.dtype(t) == BFLOAT16 for t in dense.values())


def test_unknown_compute_dtype_is_refused():
    with pytest.raises(ValueError, match='float16'):
        set_compute_dtype(build_model(ARCH), 'float16')


@pytest.mark.parametrize('make', [
    lambda: PretrainConfig(data='d', kd_weight=0, dtype='bfloat16'),
    lambda: FinetuneConfig(model='m', task='RTE', data_dir='d', dtype='bfloat16'),
    lambda: SearchConfig(dtype='bfloat16'),
])
def test_refused_in_one_line_without_bf16_kernels(monkeypatch, make):
    monkeypatch.setattr(hardware, '_DECISION', NO_BF16)
    with pytest.raises(UnsupportedHardware) as err:
        make().validate()
    text = str(err.value)
    assert '\n' not in text and '--dtype bfloat16' in text and 'AVX512-BF16 or AMX' in text


def test_bfloat16_on_the_gpu_is_refused():
    with pytest.raises(Exception, match='float16'):
        PretrainConfig(data='d', kd_weight=0, dtype='bfloat16', gpu=True).validate()


@pytest.mark.skipif(BF16_HERE, reason='this CPU runs bfloat16: nothing to refuse')
def test_command_refuses_with_exit_status_2(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, 'run_pretraining.py'),
                           '--data', str(tmp_path), '--kd_weight', '0', '--dtype', 'bfloat16',
                           '--output_dir', str(tmp_path / 'out')],
                          capture_output=True, text=True, cwd=REPO, check=False,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and '--dtype bfloat16' in lines[0]
    assert not (tmp_path / 'out').exists()


@needs_bf16
def test_bf16_dense_against_numpy():
    """Forward and backward of one bfloat16 product against numpy on the rounded operands."""
    rng = np.random.RandomState(0)
    x, w, b = rng.randn(5, 12), rng.randn(7, 12), rng.randn(7)
    xs, ws, bs = (mx.nd.array(v, dtype='float32') for v in (x, w, b))
    for v in (xs, ws, bs):
        v.attach_grad()
    with mx.autograd.record():
        y = bf16_fully_connected(mx.nd, xs, ws, bs, num_hidden=7)
    y.backward(mx.nd.ones_like(y))
    rx, rw, rb = (round_bf16(v.astype(np.float32)).astype(np.float64) for v in (x, w, b))
    ref = rx @ rw.T + rb
    assert y.dtype == np.float32 and ws.grad.dtype == np.float32
    np.testing.assert_allclose(y.asnumpy(), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())
    np.testing.assert_allclose(ws.grad.asnumpy(), np.ones((5, 7)).T @ rx, rtol=1e-2, atol=0.05)


@needs_bf16
def test_pretraining_loss_curve_near_float32(tmp_path):
    """20 MLM steps of a tiny student, same seed and data: the bfloat16 run's training losses
    stay within 2 % (relative) of float32's at every logged step, and both fall."""
    folder, tok = prepared_data(tmp_path)
    curves = {}
    for dtype in ('float32', 'bfloat16'):
        out = tmp_path / dtype
        pretrain(PretrainConfig(data=folder, output_dir=str(out), dtype=dtype,
                                arch=arch_json(student_arch(tok.vocab_size)), kd_weight=0.0,
                                mlm_weight=1.0, total_steps=20, batch_size=8, lr=1e-3,
                                max_predictions=8, log_interval=2, eval_interval=20,
                                eval_batches=2, checkpoint_interval=20, plot=False))
        records = [json.loads(ln) for ln in (out / 'metrics.jsonl').read_text().splitlines()]
        curves[dtype] = np.array([r['mlm_loss'] for r in records
                                  if 'mlm_loss' in r and not r.get('final')])
    full, half = curves['float32'], curves['bfloat16']
    assert len(full) == len(half) == 10
    np.testing.assert_allclose(half, full, rtol=0.02)
    assert full[-1] < full[0] and half[-1] < half[0]
