"""Pretraining throughput: tokens/s with 1 vs 2 Horovod workers, and the teacher's share of a step.

Same data, teacher and student as ``benchmarks/kd_vs_mlm.py`` (real text, MiniLM teacher), same
global batch in every run (1 worker × B, or 2 workers × B/2, ``data_parts 2``), launched as
``run_pretraining.py`` subprocesses (the 2-worker run through ``horovodrun --gloo``). The CPU
cores are split evenly: one worker gets ``--threads`` OpenMP threads, each of two workers half.

Figures are read from the runs' ``metrics.jsonl``: tokens/s (real tokens of the global batch per
second of rank 0's wall clock) and the teacher's share (seconds in the teacher's forward pass /
wall seconds), averaged over the logging windows after the first (graph set-up and warm-up).
Then, in this process, one step is timed piece by piece (synchronising after each): teacher
forward, student forward, loss and backward (with and without the distillation term).

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_pretrain.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

from kd_vs_mlm import STUDENT, real_data  # noqa: E402  pylint: disable=wrong-import-position


def _run(name, config, work_dir, workers, threads):
    out = os.path.join(work_dir, name)
    shutil.rmtree(out, ignore_errors=True)
    cfg = os.path.join(work_dir, f'{name}.json')
    with open(cfg, 'w') as f:
        json.dump(dict(config, output_dir=out), f)
    script = [sys.executable, os.path.join(REPO, 'run_pretraining.py'), '--config', cfg]
    if workers > 1:
        horovodrun = shutil.which('horovodrun') or os.path.join(os.path.dirname(sys.executable),
                                                                'horovodrun')
        script = [horovodrun, '-np', str(workers), '-H', f'localhost:{workers}', '--gloo'] + script
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY='PASSIVE',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    done = subprocess.run(script, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f'{name} failed:\n{done.stderr[-3000:]}')
    with open(os.path.join(out, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f]
    windows = [r for r in records if 'tokens_per_s' in r and not r.get('final')][1:]
    return {key: sum(r[key] for r in windows) / len(windows)
            for key in ('tokens_per_s', 'teacher_share')}


def step_breakdown(data: str, teacher_dir: str, batch_size: int, max_predictions: int,
                   steps: int = 20, warmup: int = 10):
    """Seconds per step of each piece (synchronised), KD and MLM-only, one process."""
    # pylint: disable=import-outside-toplevel
    import time
    import mxnet as mx
    from bort.arch import Architecture
    from bort.pretrain.losses import kd_loss
    from bort.pretrain.teacher import Teacher, mlm_logits
    from bort.model import build_model
    from bort.pretrain.shards import read_meta
    from bort.pretrain.masking import masking_for
    from bort.pretrain.stream import BatchStream, list_shards
    meta = read_meta(data)
    masking = masking_for(meta, max_predictions=max_predictions)
    stream = BatchStream(list_shards(data), 0, 1, batch_size, 1, masking)
    batches = [next(stream) for _ in range(warmup + steps)]
    teacher = Teacher.load(teacher_dir, meta['vocab_size'])
    student = build_model(Architecture.from_dict(dict(STUDENT, vocab_size=meta['vocab_size'])))
    student.hybridize(static_alloc=True)
    out = {}
    for kd_weight in (0.5, 0.0):
        times = [0.0, 0.0, 0.0]
        for i, batch in enumerate(batches):
            nd = batch.as_nd()
            mx.nd.waitall()
            marks = [time.time()]
            t_logits = teacher.logits(nd) if kd_weight else None
            if t_logits is not None:
                t_logits.wait_to_read()
            marks.append(time.time())
            with mx.autograd.record():
                logits = mlm_logits(student, nd)
                logits.wait_to_read()
                marks.append(time.time())
                total, _, _ = kd_loss(mx.nd, logits, t_logits, nd['labels'], nd['weights'],
                                      0.1 if kd_weight else 1.0, kd_weight, 2.0)
            total.backward()
            mx.nd.waitall()
            marks.append(time.time())
            if i >= warmup:
                times = [t + (b - a) / steps for t, a, b in zip(times, marks, marks[1:])]
        out['kd' if kd_weight else 'mlm only'] = dict(zip(
            ('teacher_forward', 'student_forward', 'loss_and_backward'), times))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default=os.path.join(REPO, 'runs', 'bench_pretrain'))
    parser.add_argument('--data-dir', default=os.path.join(REPO, 'runs', 'kd_vs_mlm'),
                        help='where kd_vs_mlm.py caches the corpus and the prepared data')
    parser.add_argument('--teacher-cache', default=os.path.expanduser('~/.cache/bort/teachers'))
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--log-interval', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=16, help='global batch (sequences)')
    parser.add_argument('--seq-len', type=int, default=64)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.data_dir, exist_ok=True)
    teacher, data = real_data(args.data_dir, args.teacher_cache, seq_len=args.seq_len)
    base = {'data': data, 'arch': STUDENT, 'teacher': teacher, 'total-steps': args.steps,
            'log-interval': args.log_interval, 'eval-interval': 10 ** 9,
            'checkpoint-interval': 10 ** 9, 'data-parts': 2, 'lr': 1e-3, 'plot': False,
            'max-predictions': max(2, round(args.seq_len * 0.15) + 1)}
    rows = [('kd, 1 worker', dict(base, **{'batch-size': args.batch_size}), 1, args.threads),
            ('kd, 2 workers', dict(base, **{'batch-size': args.batch_size // 2}), 2,
             max(1, args.threads // 2)),
            ('mlm only, 1 worker', dict(base, **{'batch-size': args.batch_size, 'kd-weight': 0.0,
                                                 'mlm-weight': 1.0}), 1, args.threads),
            ('mlm only, 2 workers', dict(base, **{'batch-size': args.batch_size // 2,
                                                  'kd-weight': 0.0, 'mlm-weight': 1.0}), 2,
             max(1, args.threads // 2))]
    results = {}
    for name, config, workers, threads in rows:
        results[name] = _run(name.replace(' ', '_').replace(',', ''), config, args.work_dir,
                             workers, threads)
        print(f'{name:22s} {results[name]["tokens_per_s"]:9.0f} tokens/s   teacher '
              f'{100 * results[name]["teacher_share"]:5.1f} % of the step   '
              f'({workers} x {threads} threads)', flush=True)
    for kind in ('kd', 'mlm only'):
        one, two = results[f'{kind}, 1 worker'], results[f'{kind}, 2 workers']
        print(f'{kind}: 2 workers / 1 worker = {two["tokens_per_s"] / one["tokens_per_s"]:.2f}x')
    kd, mlm = results['kd, 1 worker'], results['mlm only, 1 worker']
    print(f'distillation costs {mlm["tokens_per_s"] / kd["tokens_per_s"]:.2f}x the time of an '
          f'MLM-only step (teacher forward {100 * kd["teacher_share"]:.0f} % of a KD step)')
    pieces = step_breakdown(data, teacher, args.batch_size, base['max-predictions'])
    for kind, parts in pieces.items():
        total = sum(parts.values())
        print(f'one step, {kind}, 1 process: ' + ', '.join(
            f'{k.replace("_", " ")} {1000 * v:.0f} ms ({100 * v / total:.0f} %)'
            for k, v in parts.items()) + ' (optimizer update not included)')
    results['breakdown'] = pieces
    with open(os.path.join(args.work_dir, 'bench.json'), 'w') as f:
        json.dump(dict(results, args=vars(args)), f, indent=2)
    return results


if __name__ == '__main__':
    main()
