"""Distillation vs self-supervised pretraining of the same student (the paper's Table 3 in small).

Real text, real teacher: the corpus is the docstring prose of the installed Python
(:func:`bort.pretrain.corpus.python_docs_corpus`), taken *after* the first 4 MB that the teacher's MLM head
was fitted on; the teacher is all-MiniLM-L6-v2 (6 layers, width 384, uncased WordPiece), by
default MLM-adapted (``--teacher minilm``, :func:`bort.pretrain.default_teacher.adapted_minilm_teacher`: every
weight trained 400 steps on the first 2 MB, ~30 % held-out top-1), or with only an MLM head fitted
on the frozen encoder (``--teacher minilm-head``, :func:`bort.pretrain.default_teacher.minilm_teacher`, ~12 %).
The data is tokenized with the teacher's tokenizer (a shared vocabulary is required).

Runs of the same student from the same initialisation, same data order and masks, same steps,
same optimizer and schedule:

- ``kd T=2``: the released objective, ``0.1 · MLM + 0.5 · T² · soft-CE(teacher, student)``;
- ``kd T=1``: the same at temperature 1 (this small teacher's distribution at T=2 is close to
  uniform, so the released temperature tells the student little; see the printed entropies);
- ``mlm only``: self-supervised, ``1.0 · MLM`` (``kd_weight 0``; Adam is insensitive to the
  loss scale).

Held-out masked-LM top-1/top-5 accuracy and cross-entropy (fixed masking, ``--eval-batches``
batches) are printed every ``--eval-interval`` steps, next to the teacher's on the same batches.
About 10-12 minutes on 2 CPU cores with the defaults.

    PYTHONPATH=. OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/kd_vs_mlm.py
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STUDENT = {'num_layers': 4, 'num_heads': 4, 'units': 128, 'hidden_size': 512,
           'max_length': 512, 'dropout': 0.1, 'name': 'student_4_4_512_128'}


TEACHERS = {'minilm': 'all-MiniLM-L6-v2, MLM-adapted',
            'minilm-head': 'all-MiniLM-L6-v2 + MLM head fitted on the frozen encoder'}


def real_data(work_dir: str, teacher_cache: str, corpus_mb: float = 2.0, seq_len: int = 64,
              teacher_name: str = 'minilm'):
    """The teacher folder and a prepared data folder of real text (both cached in place)."""
    # pylint: disable=import-outside-toplevel
    from bort.pretrain.corpus import python_docs_corpus
    from bort.pretrain.prepare import PrepConfig, prepare_pretraining_data
    from bort.pretrain.default_teacher import adapted_minilm_teacher, minilm_teacher
    teacher = (adapted_minilm_teacher(teacher_cache) if teacher_name == 'minilm'
               else minilm_teacher(teacher_cache))
    skip = 4_000_000  # the teacher's MLM head was fitted on the first 4 MB of this corpus
    full = os.path.join(work_dir, f'python_docs_{skip + int(corpus_mb * 1e6)}.txt')
    if not os.path.isfile(full):
        python_docs_corpus(full, skip + int(corpus_mb * 1e6))
    text = os.path.join(work_dir, f'corpus_{corpus_mb}MB.txt')
    if not os.path.isfile(text):
        with open(full, encoding='utf-8') as f:
            f.seek(skip)
            body = f.read()
        body = body[body.index('\n\n') + 2:]  # start at a document boundary
        with open(text, 'w', encoding='utf-8') as f:
            f.write(body)
    data = os.path.join(work_dir, f'data_{corpus_mb}MB_{seq_len}')
    if not os.path.isfile(os.path.join(data, 'meta.json')):
        prepare_pretraining_data([text], teacher, data, PrepConfig(
            max_seq_length=seq_len, num_workers=2, eval_fraction=0.05,
            max_predictions=max(2, round(seq_len * 0.15) + 1)))
    return teacher, data


def teacher_metrics(teacher_dir: str, config) -> dict:
    """The teacher's held-out MLM figures on the runs' evaluation batches, and the mean entropy
    of its distribution at T=1 and T=2 (how much a softened target says)."""
    # pylint: disable=import-outside-toplevel
    import math
    import mxnet as mx
    from bort.pretrain.teacher import Teacher
    from bort.pretrain.loop import evaluate
    from bort.pretrain.prepare import read_meta
    from bort.pretrain.masking import masking_for
    from bort.pretrain.stream import fixed_batches, list_shards
    meta = read_meta(config.data)
    masking = masking_for(meta, config.mask_ratio, config.max_predictions)
    batches = fixed_batches(list_shards(config.data, 'eval'), config.batch_size, masking,
                            config.eval_batches, pad_id=meta['pad_id'])
    teacher = Teacher.load(teacher_dir, meta['vocab_size'])
    out = evaluate(teacher.model, batches, mx.cpu())
    for t in (1, 2):
        total = count = 0.0
        for batch in batches:
            logp = mx.nd.log_softmax(teacher.logits(batch.as_nd()) / t, axis=-1)
            entropy = -(mx.nd.exp(logp) * logp).sum(axis=-1).asnumpy()
            total += float((entropy * batch.weights).sum())
            count += float(batch.weights.sum())
        out[f'entropy_t{t}'] = total / count
    out['uniform'] = math.log(meta['vocab_size'])
    return out


def curves(output_dir: str):
    """Held-out evaluations and training log records of a run, by step."""
    from bort.log import MetricsLog  # pylint: disable=import-outside-toplevel
    records = [r for r in MetricsLog(os.path.join(output_dir, 'metrics.jsonl')).read()
               if not r.get('final')]
    evals = {r['step']: r for r in records if 'eval_mlm_acc' in r}
    train = {r['step']: r for r in records if 'mlm_loss' in r}
    return evals, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default=os.path.join(REPO, 'runs', 'kd_vs_mlm'))
    parser.add_argument('--teacher-cache', default=os.path.expanduser('~/.cache/bort/teachers'))
    parser.add_argument('--corpus-mb', type=float, default=2.0)
    parser.add_argument('--seq-len', type=int, default=64)
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--temperatures', default='2,1',
                        help='one distillation run per temperature (2 is the released value)')
    parser.add_argument('--eval-interval', type=int, default=50)
    parser.add_argument('--eval-batches', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--teacher', default='minilm', choices=sorted(TEACHERS))
    args = parser.parse_args(argv)
    # pylint: disable=import-outside-toplevel
    from bort.log import setup_logging
    from bort.pretrain import PretrainConfig, pretrain
    setup_logging()
    logging.getLogger('bort.checkpoint').setLevel(logging.WARNING)
    os.makedirs(args.work_dir, exist_ok=True)
    started = time.time()
    teacher, data = real_data(args.work_dir, args.teacher_cache, args.corpus_mb, args.seq_len,
                              args.teacher)
    prep_s = time.time() - started
    base = PretrainConfig(
        data=data, arch=json.dumps(STUDENT), teacher=teacher, total_steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, schedule='linear',
        max_predictions=max(2, round(args.seq_len * 0.15) + 1), seed=args.seed,
        log_interval=args.eval_interval, eval_interval=args.eval_interval,
        eval_batches=args.eval_batches, checkpoint_interval=args.steps)
    runs = {f'kd T={t}': dataclasses.replace(base, kd_weight=0.5, mlm_weight=0.1,
                                             temperature=float(t))
            for t in args.temperatures.split(',') if t}
    runs['mlm only'] = dataclasses.replace(base, kd_weight=0.0, mlm_weight=1.0)
    seconds, evals, train = {}, {}, {}
    for name, config in runs.items():
        config.output_dir = os.path.join(args.work_dir, 'run_' + name.replace(' ', '_')
                                         .replace('=', ''))
        shutil.rmtree(config.output_dir, ignore_errors=True)
        tick = time.time()
        pretrain(config)
        seconds[name] = time.time() - tick
        evals[name], train[name] = curves(config.output_dir)
    teacher_eval = teacher_metrics(teacher, base)
    with open(os.path.join(data, 'meta.json')) as f:
        meta = json.load(f)
    print(f'\nstudent <D=4, A=4, H=128, I=512>, vocabulary {meta["vocab_size"]}, from scratch; '
          f'teacher {TEACHERS[args.teacher]}')
    print(f'data: {meta["tokens"]} tokens of held-back docstring prose, '
          f'{meta["sequences"]["train"]} train / {meta["sequences"]["eval"]} held-out sequences '
          f'of <= {args.seq_len} tokens; unknown {100 * meta["unk_ratio"]:.2f}%')
    print(f'{args.steps} steps x {args.batch_size} sequences, BERT-Adam lr {args.lr}, warmup 10 % '
          f'+ linear decay; held-out: {args.eval_batches} fixed batches')
    print('teacher on the same batches: top-1 {eval_mlm_acc:.4f}  top-5 {eval_mlm_top5:.4f}  '
          'CE {eval_mlm_loss:.3f}; its entropy {entropy_t1:.2f} nats at T=1, {entropy_t2:.2f} at '
          'T=2 (uniform: {uniform:.2f})\n'.format(**teacher_eval))
    names = list(runs)
    print(f'{"step":>5} ' + ''.join(f'| {n:^23s} ' for n in names))
    print(f'{"":>5} ' + ''.join(f'| {"top1":>6s} {"top5":>6s} {"CE":>7s} ' for _ in names))
    nan = float('nan')
    for step in sorted(evals[names[0]]):
        row = [evals[n].get(step, {}) for n in names]
        print(f'{step:>5} ' + ''.join(
            f'| {r.get("eval_mlm_acc", nan):6.4f} {r.get("eval_mlm_top5", nan):6.4f} '
            f'{r.get("eval_mlm_loss", nan):7.4f} ' for r in row))
    print('\nwall time: data+teacher {:.0f} s; '.format(prep_s) + ', '.join(
        f'{n} {seconds[n]:.0f} s ({train[n][max(train[n])]["tokens_per_s"]:.0f} tokens/s)'
        for n in names))
    summary = {'teacher': teacher_eval, 'evals': evals, 'seconds': seconds, 'args': vars(args)}
    with open(os.path.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    _plot(args.work_dir, evals, teacher_eval)
    return summary


def _plot(folder, evals, teacher_eval):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ('eval_mlm_acc', 'eval_mlm_top5', 'eval_mlm_loss'),
                              ('top-1 accuracy', 'top-5 accuracy', 'cross-entropy')):
        for name, curve in evals.items():
            steps = sorted(curve)
            ax.plot(steps, [curve[s][key] for s in steps], 'o-', label=name)
        ax.axhline(teacher_eval[key], color='grey', ls='--', label='teacher')
        ax.set_xlabel('optimizer step')
        ax.set_title(f'held-out masked-LM {title}')
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, 'kd_vs_mlm.png'), dpi=100)
    plt.close(fig)


if __name__ == '__main__':
    main()
