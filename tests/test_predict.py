"""The prediction command end to end on a tiny fine-tuned model, and its batching."""
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import toy_glue
from bort.finetune.classifier import (HeadConfig, build_classifier, encode_examples,
                                      load_classifier, predict_scores, save_classifier)
from bort.inference.predict import load_predictor, main, predict_encoded, predict_texts, read_inputs
from bort.finetune.readers import read_examples


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp('predict')
    data = toy_glue.write_rte(str(root / 'data'), n_test=23)
    pretrained = toy_glue.pretrained_folder(str(root / 'pretrained'))
    model = build_classifier(pretrained, HeadConfig.resolve('RTE', max_length=32), seed=0)
    folder = save_classifier(model, str(root / 'ft'), toy_glue.tokenizer())
    return folder, data


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_command_matches_the_classifier(finetuned, tmp_path):
    folder, data = finetuned
    test_file = os.path.join(data, 'RTE', 'test.tsv')
    outputs = {}
    for engine in ('fast', 'plain', 'int8'):
        out = str(tmp_path / f'{engine}.tsv')
        result = main(['--model', folder, '--input', test_file, '--output', out,
                       '--engine', engine, '--batch-size', '4', '--no-progress'])
        assert result['sentences'] == 23 and result['sentences_per_second'] > 0
        assert result['engine'] == engine and result['task'] == 'RTE'
        outputs[engine] = _lines(out)
    # Reference: the fine-tuning code's own scoring of the same file.
    model = load_classifier(folder)
    examples = read_examples('RTE', data, 'test')
    encoded = encode_examples(toy_glue.tokenizer(), examples, 32)
    labels = np.argmax(predict_scores(model, encoded, 0, batch_size=5), axis=1)
    expected = ['index\tprediction'] + [f'{ex.idx}\t{toy_glue.LABELS[k]}'
                                        for ex, k in zip(examples, labels)]
    assert outputs['fast'] == expected
    assert outputs['plain'] == expected
    assert len(outputs['int8']) == len(expected) and outputs['int8'][0] == expected[0]


def test_module_command_sets_inference_threads(finetuned, tmp_path):
    """``python -m bort.inference.predict`` sets the thread variables before MXNet starts (unless set)
    and writes the same file as the in-process call."""
    folder, data = finetuned
    test_file = os.path.join(data, 'RTE', 'test.tsv')
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS')}
    env['PYTHONPATH'] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                         env.get('PYTHONPATH', '')])
    out = str(tmp_path / 'module.tsv')
    run = subprocess.run([sys.executable, '-m', 'bort.inference.predict', '--model', folder, '--input',
                          test_file, '--output', out, '--batch-size', '4', '--no-progress'],
                         env=dict(env, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '23 sentences' in run.stdout
    assert 'OMP_NUM_THREADS=1 OMP_WAIT_POLICY=ACTIVE' in run.stderr  # set one kept, unset one set
    reference = str(tmp_path / 'inprocess.tsv')
    main(['--model', folder, '--input', test_file, '--output', reference, '--batch-size', '4',
          '--no-progress'])
    assert _lines(out) == _lines(reference)
    # A predictions file already there is kept unless --overwrite.
    with pytest.raises(FileExistsError, match='--overwrite'):
        main(['--model', folder, '--input', test_file, '--output', reference, '--no-progress'])
    main(['--model', folder, '--input', test_file, '--output', reference, '--no-progress',
          '--overwrite'])
    assert _lines(out) == _lines(reference)


def test_int8_engine_scores_close_to_float32(finetuned):
    folder, data = finetuned
    examples = read_examples('RTE', data, 'test')
    fast = load_predictor(folder, 'fast')
    encoded = fast.encode([(ex.text_a, ex.text_b) for ex in examples])
    int8 = load_predictor(folder, 'int8', calib_encoded=encoded[:16])
    ref, _ = fast.scores(encoded, batch_size=8, progress=False)
    got, _ = int8.scores(encoded, batch_size=8, progress=False)
    assert np.abs(ref - got).max() <= 0.03 * np.abs(ref).max() + 1e-3


def test_predict_texts_and_any_file_name(finetuned, tmp_path):
    folder, data = finetuned
    other = str(tmp_path / 'my_inputs.tsv')
    shutil.copy(os.path.join(data, 'RTE', 'test.tsv'), other)
    spec, examples = read_inputs('RTE', other, 'test')
    assert len(examples) == 23 and spec.name == 'RTE'
    predictor = load_predictor(folder)
    pairs = [(ex.text_a, ex.text_b) for ex in examples]
    scores, stats = predict_texts(predictor, pairs, batch_size=6, progress=False)
    assert scores.shape == (23, 2)
    assert stats.batches == 4 and stats.padded_tokens >= stats.real_tokens
    with pytest.raises(FileNotFoundError):
        read_inputs('RTE', str(tmp_path / 'missing.tsv'))
    with pytest.raises(ValueError):
        load_predictor(folder, engine='onnx')


def test_predict_encoded_restores_order():
    """A fake encoder whose first-token feature is the first token id: scores follow input."""
    rng = np.random.RandomState(0)
    encoded = [([int(first)] + [7] * int(n), [0] * (int(n) + 1))
               for first, n in zip(rng.permutation(40), rng.randint(0, 30, 40))]
    calls = []

    def encoder(tokens, types, valid):
        calls.append(tokens.shape)
        assert types is None
        return mx.nd.array(np.repeat(tokens[:, :, None], 3, axis=2))

    def head(features):
        return features[:, :2]

    scores, stats = predict_encoded(encoder, head, encoded, pad_id=0, use_pooler=False,
                                    batch_size=8, progress=False)
    np.testing.assert_array_equal(scores[:, 0], [ids[0] for ids, _ in encoded])
    assert stats.sentences == 40 and stats.batches == len(calls) == 5
    assert stats.real_tokens == sum(len(ids) for ids, _ in encoded)
    assert stats.padded_tokens == sum(b * length for b, length in calls)


def test_saved_int8_artefact_serves_predictions(finetuned, tmp_path):
    """bort.inference.quantize on the fine-tuned folder, then the command with --int8-model."""
    from bort.inference import quantize
    folder, data = finetuned
    examples = read_examples('RTE', data, 'test')
    text = tmp_path / 'calib.txt'
    text.write_text(''.join(f'{ex.text_a}\t{ex.text_b}\n' for ex in examples))
    quantize.main(['--model', folder, '--calib-text', str(text), '--out', str(tmp_path / 'q'),
                   '--calib-rows', '16', '--eval-rows', '0', '--max-length', '32'])
    out = str(tmp_path / 'int8.tsv')
    result = main(['--model', folder, '--input', os.path.join(data, 'RTE', 'test.tsv'),
                   '--output', out, '--engine', 'int8', '--int8-model', str(tmp_path / 'q'),
                   '--no-progress'])
    assert result['sentences'] == 23 and len(_lines(out)) == 24


def test_bf16_refused_in_one_line_where_the_cpu_cannot(finetuned, tmp_path):
    """Where oneDNN has no bfloat16 kernels: one line naming the reason, exit status 2, no
    output file, no traceback (MXNet would raise at the first dense layer, or die on AMX
    without the tile state)."""
    from bort.hardware import cpu_support
    if cpu_support().bf16_usable:
        pytest.skip('this CPU runs bfloat16: nothing to refuse')
    folder, data = finetuned
    out = str(tmp_path / 'bf16.tsv')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(__file__)), os.environ.get('PYTHONPATH', '')]))
    run = subprocess.run([sys.executable, '-m', 'bort.inference.predict', '--model', folder,
                          '--input', os.path.join(data, 'RTE', 'test.tsv'), '--output', out,
                          '--dtype', 'bfloat16', '--no-progress'],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [ln for ln in run.stderr.splitlines() if 'ERROR' in ln]
    assert len(errors) == 1 and 'AVX512-BF16 or AMX' in errors[0]
    assert 'Traceback' not in run.stderr and not os.path.exists(out)


def test_bf16_only_for_the_fast_engine(finetuned, tmp_path):
    from bort.errors import ConfigError
    folder, data = finetuned
    with pytest.raises(ConfigError, match='fast engine'):
        main(['--model', folder, '--input', os.path.join(data, 'RTE', 'test.tsv'), '--output',
              str(tmp_path / 'x.tsv'), '--engine', 'int8', '--dtype', 'bfloat16'])


def test_bf16_predictions_close_to_float32(finetuned, tmp_path):
    from bort.hardware import cpu_support
    if not cpu_support().bf16_usable:
        pytest.skip('no bfloat16 kernels on this CPU: ' + cpu_support().reason)
    folder, data = finetuned
    predictor32 = load_predictor(folder, 'fast')
    predictor16 = load_predictor(folder, 'fast', dtype='bfloat16')
    texts = [('a cat sat', 'a cat'), ('the dog ran far', 'no dog')] * 4
    s32, _ = predict_texts(predictor32, texts, progress=False)
    s16, _ = predict_texts(predictor16, texts, progress=False)
    assert np.abs(s32 - s16).max() < 0.05 * max(1.0, np.abs(s32).max())
