"""One training step, the project's against a plain PyTorch reference of the same shapes and loss.

Each row runs in a child process of its own (so its peak RSS is its own), both sides in that one
process, timed in interleaved rounds (ours, torch, torch, ours, ...) after a warm-up, each step
synchronised at its end (``mx.nd.waitall()``; PyTorch's CPU ops are synchronous). Synthetic
data of fixed shapes: token ids uniform over the vocabulary, valid lengths uniform in
[L/2, L] (the first row full), masked positions drawn among the valid ones.

Rows (``(num_layers, num_heads, units, hidden_size)``, vocabulary 30,522 everywhere):

- ``kd``: student <4, 4, 128, 512>, teacher <6, 12, 384, 1536>, 16 × 64 tokens, 11 masked
  positions a row; loss 0.1 · MLM + 0.5 · T² · soft CE (T = 2) at the masked positions,
  global-norm clip 1. Ours: :func:`bort.pretrain.loop.pretrain_step`, what
  ``run_pretraining.py`` runs; torch: ``BertForMaskedLM``'s encoder, the masked positions'
  hidden states gathered, its MLM head on those only, teacher under ``no_grad``.
- ``kd_bort``: the same with the Bort student <4, 8, 1024, 768> and a BERT-base teacher
  <12, 12, 768, 3072>, 8 × 128 tokens, 20 masked positions a row.
- ``mlm``: ``kd``'s student alone, MLM loss only.
- ``adapt``: the default teacher's MLM adaptation (:mod:`bort.pretrain.default_teacher`):
  MLM-only pretraining of an all-MiniLM-L6-v2-shaped model <6, 12, 384, 1536> at 16 x 128,
  20 masked positions a row.
- ``finetune``: a MiniLM-shaped encoder <6, 12, 384, 1536> with a linear 3-class head on the
  first token, 8 × 128, softmax cross-entropy. Ours: :func:`bort.finetune.loop.train_step`.
- ``search``: ``kd``'s student trained as a search candidate against cached top-1024 teacher
  targets with the even tail. Ours: :func:`bort.search.trainer.candidate_step`.

Every row's optimizer is the project's default for its journey, read from the config classes
(:func:`row_optimizer`): ``PretrainConfig``'s for ``kd``, ``kd_bort``, ``mlm`` and ``adapt``
(AdamW), ``FinetuneConfig``'s for ``finetune``, ``SearchConfig``'s for ``search`` (MXNet's
Adam); the PyTorch side runs the same update (``torch.optim.AdamW`` / ``Adam`` / ``SGD``).

PyTorch sides (``benchmarks/torch_train_step.py``):

- ``torch``: the reference, gathering the masked positions before the MLM head as ours does;
- ``torch-all``: ``BertForMaskedLM``'s default, decoding every position and picking the masked
  ones after (rows with an MLM head: all but ``finetune``); what this benchmark compared
  against before issue 25;
- ``torch-bf16``: the reference under ``torch.autocast('cpu', dtype=torch.bfloat16)``, only
  where the CPU has bfloat16 instructions (AVX512-BF16 or AMX, :mod:`bort.hardware`); elsewhere
  the table says "not measured: CPU lacks bf16".

Our bfloat16 side, ``ours-bf16`` (``--dtype bfloat16``: dense layers multiplied in bfloat16,
float32 weights), runs where oneDNN has bfloat16 kernels; its ratio is torch-bf16 / ours-bf16.

Columns: median step time and interquartile range of each side, tokens (real, unpadded) per
second at the median, each PyTorch side's time / ours (above 1: ours faster), and the row
process's peak RSS (after our side's warm-up alone, and at the end with every side).

    PYTHONPATH=. python benchmarks/bench_train_step.py --repeats 10 --warmup 3 --threads 2 --plain

``--plain`` adds a third side: our step with the pieces issue 14 replaced put back (GluonNLP's
length softmax in attention, MXNet's LayerNorm, Dropout and softmax in place of the fused
operators of :mod:`bort.kernels`, the norm as ``(g ** 2).sum()`` per gradient and a clipping
pass), so before and after come from one run, interleaved.

PyTorch and transformers are the ``[hf]`` extra: the reference only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from torch_train_step import torch_step

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VOCAB = 30522

ROWS = {
    'kd': dict(kind='kd', student=(4, 4, 128, 512), teacher=(6, 12, 384, 1536), batch=16,
               seq=64, masked=11),
    'kd_bort': dict(kind='kd', student=(4, 8, 1024, 768), teacher=(12, 12, 768, 3072), batch=8,
                    seq=128, masked=20),
    'mlm': dict(kind='mlm', student=(4, 4, 128, 512), batch=16, seq=64, masked=11),
    'adapt': dict(kind='mlm', student=(6, 12, 384, 1536), batch=16, seq=128, masked=20),
    'finetune': dict(kind='finetune', student=(6, 12, 384, 1536), batch=8, seq=128, classes=3),
    'search': dict(kind='search', student=(4, 4, 128, 512), batch=16, seq=64, masked=11,
                   topk=1024),
}


def row_optimizer(kind):
    """The default optimizer settings of the journey a row's kind times: name, lr, weight decay,
    epsilon, beta2, momentum (the dataclass defaults of the project's config classes)."""
    # pylint: disable=import-outside-toplevel
    import dataclasses
    from bort.finetune.config import FinetuneConfig
    from bort.pretrain.config import PretrainConfig
    from bort.search.config import SearchConfig
    config = {'finetune': FinetuneConfig, 'search': SearchConfig}.get(kind, PretrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return dict(name=defaults['optimizer'], lr=defaults['lr'],
                weight_decay=defaults['weight_decay'],
                epsilon=defaults.get('adam_epsilon', defaults.get('epsilon', 1e-6)),
                beta2=defaults.get('adam_beta2', 0.999), momentum=defaults.get('momentum', 0.0))


def _make_trainer(params, comm, row):
    """Our trainer with the row's optimizer (:func:`row_optimizer`, in ``row['optimizer']``)."""
    from bort.optim import make_trainer  # pylint: disable=import-outside-toplevel
    o = row['optimizer']
    return make_trainer(params, comm, o['name'], lr=o['lr'], weight_decay=o['weight_decay'],
                        epsilon=o['epsilon'], momentum=o['momentum'], beta2=o['beta2'])


# -- data ----------------------------------------------------------------------------------------
def synthetic(row, seed=0):
    """Arrays of one batch (numpy): ids, types, valid lengths, positions, labels, weights."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.RandomState(seed)
    b, length = row['batch'], row['seq']
    ids = rng.randint(5, VOCAB, size=(b, length)).astype(np.int32)
    valid = rng.randint(length // 2, length + 1, size=b).astype(np.int32)
    valid[0] = length
    types = np.zeros((b, length), np.int32)
    for i in range(b):
        types[i, valid[i] // 2:valid[i]] = 1
    m = row.get('masked', 1)
    positions = np.stack([np.sort(rng.choice(np.arange(1, valid[i]), m, replace=False))
                          for i in range(b)]).astype(np.int32)
    labels = rng.randint(5, VOCAB, size=(b, m)).astype(np.int32)
    weights = np.ones((b, m), np.float32)
    return dict(ids=ids, types=types, valid=valid, positions=positions, labels=labels,
                weights=weights, classes=rng.randint(0, row.get('classes', 2), size=b))


def _arch(shape, dropout=0.1):
    from bort.arch import Architecture  # pylint: disable=import-outside-toplevel
    layers, heads, units, hidden = shape
    return Architecture(num_layers=layers, num_heads=heads, units=units, hidden_size=hidden,
                        vocab_size=VOCAB, max_length=512, dropout=dropout,
                        layer_norm_eps=1e-12, token_type_vocab_size=2, use_pooler=False)


# -- ours ----------------------------------------------------------------------------------------
def ours_step(row, data, dtype='float32'):
    """A zero-argument function running one of our training steps (synchronised); with
    ``dtype='bfloat16'`` every model's dense layers multiply in bfloat16
    (:func:`bort.layers.set_compute_dtype`, what ``--dtype bfloat16`` runs)."""
    # pylint: disable=import-outside-toplevel
    import mxnet as mx
    import numpy as np
    from types import SimpleNamespace
    from bort.distributed import Comm
    from bort.layers import set_compute_dtype
    from bort.model import build_model
    from bort.pretrain.stream import MLMBatch
    comm = Comm(ctx=mx.cpu())
    mx.random.seed(0)
    batch = MLMBatch(data['ids'], data['types'], data['valid'], data['positions'],
                     data['labels'], data['weights'])
    kind = row['kind']
    if kind in ('kd', 'mlm'):
        from bort.pretrain import loop
        from bort.pretrain.teacher import Teacher
        student = build_model(_arch(row['student']))
        student.hybridize(static_alloc=True)
        teacher = None
        config = SimpleNamespace(mlm_weight=1.0, kd_weight=0.0, temperature=2.0,
                                 released_quirks=False, max_grad_norm=1.0)
        if kind == 'kd':
            teacher = Teacher(build_model(_arch(row['teacher'])))
            config.mlm_weight, config.kd_weight = 0.1, 0.5
            set_compute_dtype(teacher.model, dtype)
        set_compute_dtype(student, dtype)
        trainer = _make_trainer(student.collect_params(), comm, row)
        params = [p for p in student.collect_params().values() if p.grad_req != 'null']
        for p in params:
            p.grad_req = 'add'

        def step():
            loop.pretrain_step(student, teacher, [batch], config, comm, trainer, params)
            mx.nd.waitall()
        return step
    if kind == 'finetune':
        from bort.finetune.classifier import HeadConfig, TaskClassifier, task_loss
        from bort.finetune.loop import train_step
        model = TaskClassifier(build_model(_arch(row['student']), use_decoder=False),
                               HeadConfig(task='CB', num_classes=row['classes'], kind='linear'))
        model.head.initialize(mx.init.Uniform(0.5))
        set_compute_dtype(model, dtype)
        model.hybridize(static_alloc=True)
        trainer = _make_trainer(model.collect_params(), comm, row)
        params = [p for p in model.collect_params().values() if p.grad_req != 'null']
        inputs = (mx.nd.array(data['ids'], dtype='int32'), mx.nd.array(data['types'], dtype='int32'),
                  mx.nd.array(data['valid'], dtype='float32'))
        target = mx.nd.array(data['classes'], dtype='float32')
        loss_fn = task_loss('CB')

        def step():
            train_step(model, trainer, params, loss_fn, inputs, target, 1.0 / len(target), 1.0)
            mx.nd.waitall()
        return step
    # search: cached top-k targets, as TeacherTargets.build loads them
    from bort.search.targets import TeacherTargets, _Target, real_rows
    from bort.search.trainer import candidate_step
    model = build_model(_arch(row['student']))
    set_compute_dtype(model, dtype)
    model.hybridize(static_alloc=True)
    trainer = _make_trainer(model.collect_params(), comm, row)
    params = [p for p in model.collect_params().values() if p.grad_req != 'null']
    rows = real_rows(batch)
    rng = np.random.RandomState(1)
    k = row['topk']
    ids = np.stack([rng.choice(VOCAB, k, replace=False) for _ in rows]).astype(np.int32)
    values = -np.sort(-rng.randn(len(rows), k) * 2, axis=1)
    lse = (values.max(1) + np.log(np.exp(values - values.max(1, keepdims=True)).sum(1)) + 0.5)
    targets = TeacherTargets(None, SimpleNamespace(train=[batch], heldout=[]), mx.cpu(),
                             folder='(synthetic)', topk=k, tail=True, temperature=1.0)
    targets._train = [_Target(rows, topk_logits=values.astype(np.float16), topk_ids=ids,  # pylint: disable=protected-access
                              logsumexp=lse.astype(np.float32))]
    nd = batch.as_nd()

    def step():
        candidate_step(model, trainer, params, targets, 0, nd, 1.0)
        mx.nd.waitall()
    return step


def _plain_optimizer_step(trainer, params, max_norm=0.0, scale=1.0):
    """``bort.optim.optimizer_step`` as it was before issue 14: ``(g ** 2).sum()`` per gradient
    (after a float32 copy), the norm read, then a scaling pass over every gradient."""
    # pylint: disable=import-outside-toplevel
    import math
    import mxnet as mx
    trainer.allreduce_grads()
    grads = [p.list_grad()[0] for p in params if p.grad_req != 'null']
    norm = mx.nd.sqrt(mx.nd.add_n(*[(g.astype('float32') ** 2).sum() for g in grads]))
    total = float(norm.asscalar()) / scale
    if math.isfinite(total) and 0 < max_norm < total:
        for g in grads:
            g *= max_norm / total
    if math.isfinite(total):
        trainer.update(scale)
    return total


def plain_step(row, data):
    """Our step with the pieces issue 14 replaced put back (the 'before' side, same process):
    GluonNLP's length softmax in attention, MXNet's own operators, the plain norm and clip."""
    # pylint: disable=import-outside-toplevel
    from bort.finetune import loop as finetune_loop
    from bort.layers import SelfAttentionCell
    from bort.model import BortModel
    from bort.pretrain import loop as pretrain_loop
    from bort.search import trainer as search_trainer
    modules = (pretrain_loop, finetune_loop, search_trainer)

    def run():
        saved = [m.optimizer_step for m in modules]
        for m in modules:
            m.optimizer_step = _plain_optimizer_step
        try:
            step()
        finally:
            for m, fn in zip(modules, saved):
                m.optimizer_step = fn

    SelfAttentionCell.additive_mask = False
    BortModel.fused_kernels = False
    try:
        step = ours_step(row, data)
        run()  # the graphs are traced on this first call: length softmax, MXNet's operators
    finally:
        SelfAttentionCell.additive_mask = True
        BortModel.fused_kernels = True
    return run


# -- one row -------------------------------------------------------------------------------------
def _rss_mb():
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_row(name, repeats, warmup, threads, plain=False):
    """Time one row in this process; returns a dict of its figures."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from bort.hardware import cpu_support  # before MXNet: pylint: disable=import-outside-toplevel
    from bort.threads import keep_freed_memory  # pylint: disable=import-outside-toplevel
    keep_freed_memory()  # as the scripts do (configure_threads); both sides share the process
    import mxnet as mx  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    row = dict(ROWS[name], optimizer=row_optimizer(ROWS[name]['kind']))
    data = synthetic(row)
    ours = ours_step(row, data)
    for _ in range(warmup):
        ours()
    rss_ours = _rss_mb()
    sides = {'ours': ours, 'torch': torch_step(row, data)}
    if row['kind'] != 'finetune':
        sides['torch-all'] = torch_step(row, data, gather=False)
    support = cpu_support()
    if support.bf16_hardware:
        sides['torch-bf16'] = torch_step(row, data, bf16=True)
    if support.bf16_usable:
        sides['ours-bf16'] = ours_step(row, data, dtype='bfloat16')
    if plain:
        sides['plain'] = plain_step(row, data)
    for side, fn in sides.items():
        for _ in range(warmup if side != 'ours' else 0):
            fn()
    times = {side: [] for side in sides}
    for r in range(repeats):
        order = list(sides.items())
        order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
        for side, fn in order:
            start = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - start)
    tokens = int(data['valid'].sum())
    out = dict(row=name, tokens=tokens, rss_ours_mb=rss_ours, rss_row_mb=_rss_mb(),
               cpu=support.reason)
    if not support.bf16_hardware:
        out['torch-bf16'] = 'not measured: CPU lacks bf16'
    if not support.bf16_usable:
        out['ours-bf16'] = f'not measured: {support.reason}'
    for side, values in times.items():
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        out[side] = dict(median_ms=1000 * q50, iqr_ms=1000 * (q75 - q25),
                         tokens_per_s=tokens / q50, all_ms=[round(1000 * v, 1) for v in values])
    out['ratio'] = out['torch']['median_ms'] / out['ours']['median_ms']
    for side in ('torch-all', 'torch-bf16', 'plain'):
        if side in times:
            out[f'{side}_ratio'] = out[side]['median_ms'] / out['ours']['median_ms']
    if 'ours-bf16' in times and 'torch-bf16' in times:  # bfloat16 against bfloat16
        out['bf16_ratio'] = out['torch-bf16']['median_ms'] / out['ours-bf16']['median_ms']
    return out


SIDES = ('ours', 'torch', 'torch-all', 'torch-bf16', 'ours-bf16', 'plain')
LABELS = {'ours': 'ours', 'ours-bf16': 'ours-bf16 (--dtype bfloat16)',
          'torch': 'torch (gathered)',
          'torch-all': 'torch-all (BertForMaskedLM default: decodes every position)',
          'torch-bf16': 'torch-bf16 (gathered, autocast)', 'plain': 'plain (before)'}


def table(results):
    """Markdown: median ± IQR ms per side, ours and torch tokens/s, each other side / ours."""
    # The bfloat16 sides always have their columns: measured, or why not.
    always = ('torch-bf16', 'ours-bf16')
    sides = [s for s in SIDES if s in always or any(isinstance(r.get(s), dict) for r in results)]
    others = [s for s in sides if s != 'ours']
    ratio_names = {s: f'{s} / ours' for s in others}
    ratio_names['ours-bf16'] = 'torch-bf16 / ours-bf16'
    head = (['row'] + [f'{LABELS[s]} ms' for s in sides] + ['ours tokens/s', 'torch tokens/s']
            + [ratio_names[s] for s in others] + ['peak RSS MB (ours warm, row)'])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        cells = [r['row']]
        for s in sides:
            v = r.get(s)
            cells.append(f"{v['median_ms']:.0f} ± {v['iqr_ms']:.0f}" if isinstance(v, dict)
                         else v if isinstance(v, str) else '')
        cells += [f"{r['ours']['tokens_per_s']:.0f}", f"{r['torch']['tokens_per_s']:.0f}"]
        for s in others:
            key = {'torch': 'ratio', 'ours-bf16': 'bf16_ratio'}.get(s, f'{s}_ratio')
            cells.append(f'{r[key]:.2f}x' if key in r else '')
        cells.append(f"{r['rss_ours_mb']:.0f}, {r['rss_row_mb']:.0f}")
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', default=','.join(ROWS), help=f'comma-separated, of {list(ROWS)}')
    parser.add_argument('--repeats', type=int, default=10, help='timed steps per side')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per side first')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 2,
                        help='OpenMP threads of MXNet and torch in each row\'s process')
    parser.add_argument('--plain', action='store_true',
                        help='also time our step with the pieces issue 14 replaced put back '
                             '(the length softmax, MXNet\'s own operators, the plain norm and '
                             'clip): before and after in one run')
    parser.add_argument('--json', default='', help='also write the figures here')
    parser.add_argument('--child', default='', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.rows.split(',') if name not in ROWS]
    if unknown or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.exit(2, f'bench_train_step.py: error: rows must be among {list(ROWS)} (got '
                       f'{unknown or "ok"}), --repeats and --threads at least 1, --warmup at '
                       f'least 0\n')
    if args.child:
        sys.path.insert(0, REPO)
        print('RESULT ' + json.dumps(run_row(args.child, args.repeats, args.warmup,
                                             args.threads, args.plain)), flush=True)
        return None
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY='PASSIVE',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    results = []
    for name in args.rows.split(','):
        done = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', name,
                               '--repeats', str(args.repeats), '--warmup', str(args.warmup),
                               '--threads', str(args.threads)] + ['--plain'] * args.plain,
                              env=env, capture_output=True,
                              text=True, check=False)
        line = [x for x in done.stdout.splitlines() if x.startswith('RESULT ')]
        if done.returncode or not line:
            raise RuntimeError(f'row {name} failed:\n{done.stderr[-3000:]}')
        results.append(json.loads(line[0][7:]))
        print(f"{name}: " + ', '.join(f"{side} {results[-1][side]['median_ms']:.0f} ms"
                                      for side in SIDES if isinstance(results[-1].get(side), dict)),
              file=sys.stderr, flush=True)
    from bort.inference.latency import device_string  # pylint: disable=import-outside-toplevel
    print(f'{device_string()}; {results[0]["cpu"]}; {args.threads} threads, {args.repeats} '
          f'timed steps per side after {args.warmup} warm-up steps, interleaved')
    print(table(results))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(results=results, args=vars(args)), f, indent=2)
    return results


if __name__ == '__main__':
    main()
