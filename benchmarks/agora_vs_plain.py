"""Experiment (not a test): plain fine-tuning vs Agora on GLUE RTE at the same training budget.

Setting, chosen to fit ~15 minutes of a 2-core CPU and to keep one score uncontaminated:

* Encoder: all-MiniLM-L6-v2 from the installed package (``--model``, default its Hugging Face
  folder, imported once), the best pretrained encoder this project has offline; no pretrained
  Bort student exists yet. The ``mlm`` transformation uses the same encoder with the masked-LM
  head fitted by :func:`bort.pretrain.default_teacher.minilm_teacher` (``--mlm_model
  minilm-head``).
* Data, from the official RTE files: ``heldout`` training rows are set aside as a held-out
  test set that no model ever trains on or is selected on; the teacher fine-tunes on the other
  training rows; the students get only ``student_examples`` of those (Agora's scarce-data
  setting). Both students select their best epoch / θ on the official dev set, and Agora
  grows its training set from its mistakes on that dev set, so the dev score favours Agora
  by construction; the held-out score does not.
* Budget: Agora runs first; plain fine-tuning then gets the CHS Agora returned and as many
  epochs as it takes to process the same number of training examples as all of Agora's
  students together (forward + backward passes; evaluations are about equal).

A teacher run already in ``output_dir/teacher`` is reused (its wall time is then the time
to re-score it). Writes ``results.json`` and prints a Markdown table::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/agora_vs_plain.py \\
        --data_dir GLUE_DIR [--output_dir runs/agora_vs_plain]
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/agora_vs_plain.py --task SST-2 \\
        --data_dir GLUE_DIR \\
        --output_dir runs/agora_vs_plain_sst2 --max_length 64 --heldout 1000 \\
        --student_examples 200 --teacher_examples 2000

Measured on 2026-11-21 (2 shared cores, load average 5-8 from other jobs, 1 OpenMP thread):

* RTE (defaults): the teacher (1,990 rows, 1 epoch, 473 s) stayed at chance, dev 0.473 (it
  predicts one class): Agora refused it (2/3 check) and was run with
  ``--min_teacher_accuracy 0``. Plain 7 epochs: dev 0.534, held-out 0.576, 362 s. Agora (2 θ,
  2 iterations, 240 teacher-labelled points): dev 0.596 (its iteration-0 student, before any
  point was added), held-out 0.574, 429 s.
* SST-2 (second command): teacher dev 0.783 (passes the check), held-out 0.806, 169 s. Plain
  8 epochs: dev 0.740, held-out 0.768, 209 s. Agora (2 iterations, 454 points): dev 0.744,
  held-out 0.778, 244 s. The held-out differences are within one standard error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time

import numpy as np

from bort.finetune import AgoraConfig, FinetuneConfig, finetune, run_agora
from bort.finetune.evaluate import evaluate_folder
from bort.finetune.tasks import get_task
from bort.log import setup_logging
from bort.pretrain.names import minilm_dir


def split_task(task: str, src: str, out: str, heldout: int, student_examples: int,
               seed: int) -> dict:
    """Write three GLUE-layout folders (teacher, student, held-out) from the official files.

    The held-out rows (training rows set aside) are the ``dev`` split of their own folder.
    """
    folder_name = os.path.dirname(get_task(task).files['train'])
    with open(os.path.join(src, folder_name, 'train.tsv'), encoding='utf-8') as f:
        header, *rows = f.read().splitlines()
    order = np.random.RandomState(seed).permutation(len(rows))
    held = [rows[i] for i in order[:heldout]]
    teacher = [rows[i] for i in sorted(order[heldout:])]
    student = [teacher[i] for i in sorted(np.random.RandomState(seed + 1).choice(
        len(teacher), student_examples, replace=False))]
    folders = {}
    for name, train in (('teacher', teacher), ('student', student), ('heldout', held)):
        folder = os.path.join(out, f'data_{name}')
        os.makedirs(os.path.join(folder, folder_name), exist_ok=True)
        for split in ('dev', 'test'):
            shutil.copy(os.path.join(src, folder_name, f'{split}.tsv'),
                        os.path.join(folder, folder_name, f'{split}.tsv'))
        target = 'dev' if name == 'heldout' else 'train'
        with open(os.path.join(folder, folder_name, f'{target}.tsv'), 'w',
                  encoding='utf-8') as f:
            f.write('\n'.join([header] + train) + '\n')
        folders[name] = folder
    return folders


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument('--data_dir', required=True,
                        help='GLUE 1.0 folder (README: where the files come from)')
    parser.add_argument('--task', default='RTE', help='a GLUE task with a labelled train.tsv')
    parser.add_argument('--output_dir', default='runs/agora_vs_plain')
    parser.add_argument('--model', default=None,
                        help='pretrained model (default: the installed all-MiniLM-L6-v2)')
    parser.add_argument('--mlm_model', default='minilm-head',
                        help='masked-LM model of the mlm transformation')
    parser.add_argument('--max_length', type=int, default=128)
    parser.add_argument('--heldout', type=int, default=500)
    parser.add_argument('--student_examples', type=int, default=300)
    parser.add_argument('--teacher_epochs', type=int, default=1)
    parser.add_argument('--teacher_examples', type=int, default=0,
                        help="cap on the teacher's training rows (0: all; for smoke runs)")
    parser.add_argument('--epochs', type=int, default=2, help="Agora's budget per student")
    parser.add_argument('--lrs', type=float, nargs='+', default=[5e-5, 1e-4])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--transform', default='mlm')
    parser.add_argument('--min_teacher_accuracy', type=float, default=2 / 3)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    args.model = args.model or minilm_dir()
    setup_logging()
    logging.getLogger('bort.checkpoint').setLevel(logging.WARNING)
    os.makedirs(args.output_dir, exist_ok=True)
    folders = split_task(args.task, args.data_dir, args.output_dir, args.heldout,
                         args.student_examples, args.seed)
    common = dict(task=args.task, model=args.model, max_length=args.max_length, batch_size=16,
                  weight_decay=0.01, warmup_ratio=0.1, init_range=0.05, eval_batch_size=64)
    times, results = {}, {}

    tic = time.time()
    teacher = finetune(FinetuneConfig(**common, data_dir=folders['teacher'], lr=1e-4,
                                      epochs=args.teacher_epochs, seed=args.seed,
                                      max_train_examples=args.teacher_examples,
                                      output_dir=os.path.join(args.output_dir, 'teacher')))
    times['teacher'] = time.time() - tic

    tic = time.time()
    base = FinetuneConfig(**common, data_dir=folders['student'], epochs=args.epochs,
                          output_dir=os.path.join(args.output_dir, 'agora'))
    agora = run_agora(base, AgoraConfig(
        teacher=teacher.folder, min_teacher_accuracy=args.min_teacher_accuracy,
        seeds=args.seeds, lrs=args.lrs, weight_decays=[0.01], warmup_ratios=[0.1],
        batch_sizes=[16], transform=args.transform, mlm_model=args.mlm_model))
    times['agora'] = time.time() - tic

    tic = time.time()
    plain_epochs = max(1, int(round(agora.examples_seen / args.student_examples)))
    plain = finetune(dataclasses.replace(base, output_dir=os.path.join(args.output_dir, 'plain'),
                                         epochs=plain_epochs, **agora.chs))
    times['plain'] = time.time() - tic

    tic = time.time()
    for name, folder in (('teacher', teacher.folder), ('agora', agora.folder),
                         ('plain', plain.folder)):
        heldout, _ = evaluate_folder(args.task, folder, folders['heldout'], 'dev',
                                     batch_size=64)
        results[name] = {'heldout_accuracy': heldout['accuracy']}
    times['heldout_evaluation'] = time.time() - tic
    results['teacher'].update(dev_accuracy=teacher.score, epochs=args.teacher_epochs,
                              examples_seen=teacher.steps * 16)
    results['agora'].update(dev_accuracy=agora.metrics['accuracy'], chs=agora.chs,
                            iterations=agora.iterations, points_added=agora.points_added,
                            examples_seen=agora.examples_seen,
                            teacher_dev_accuracy=agora.teacher_accuracy,
                            history=[{k: r[k] for k in ('iteration', 'theta_size', 'dev_score',
                                                        'mistakes', 'points_added')}
                                     for r in agora.history])
    results['plain'].update(dev_accuracy=plain.score, epochs=plain_epochs,
                            examples_seen=plain.steps * agora.chs['batch_size'],
                            best_epoch=plain.epoch)
    summary = {'args': vars(args), 'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
               'cpus': os.cpu_count(), 'seconds': times,
               'results': results}
    with open(os.path.join(args.output_dir, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(f'| {args.task} | dev acc | held-out acc | training examples processed | wall s |')
    print('|---|---|---|---|---|')
    for name in ('teacher', 'plain', 'agora'):
        r = results[name]
        print(f"| {name} | {r['dev_accuracy']:.4f} | {r['heldout_accuracy']:.4f} | "
              f"{r['examples_seen']} | "
              f"{times[name]:.0f} |")
    return summary


if __name__ == '__main__':
    main()
