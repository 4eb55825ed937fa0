"""The real offline teacher: all-MiniLM-L6-v2 imported equals transformers on real text."""
import json
import os

import mxnet as mx
import numpy as np
import pytest

from bort.interop.convert import import_hf
from bort.pretrain.mlm_head import HeadFitConfig
from bort.model import load_model
from bort.pretrain.default_teacher import adapted_minilm_teacher, minilm_dir, minilm_teacher
from bort.tokenizers import load_tokenizer

SENTENCES = [
    'A man is eating food.',
    'The quick brown fox jumps over the lazy dog, while the cat sleeps on the warm windowsill.',
    'Résumé writing is an art; naïve approaches rarely work!',
    'Hello.',
]


@pytest.fixture(scope='module')
def minilm():
    try:
        return minilm_dir()
    except FileNotFoundError as err:
        pytest.skip(f'{err}')


def test_minilm_import_equals_transformers(tmp_path, minilm, monkeypatch):
    transformers = pytest.importorskip('transformers', reason='the optional extra (pip install '
                                                              '.[hf]) is not installed')
    import torch
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model = import_hf(minilm, str(tmp_path / 'minilm'))
    assert model.arch.tuple == (6, 12, 384, 1536) and not model.has_decoder
    tokenizer = load_tokenizer(str(tmp_path / 'minilm'))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors='np')
    ids = [tokenizer.build_inputs(tokenizer.encode(s))[0] for s in SENTENCES]
    valid = [len(i) for i in ids]
    for row, row_ids in enumerate(ids):
        assert row_ids == batch['input_ids'][row, :valid[row]].tolist()
    seq, pooled = model(mx.nd.array(batch['input_ids']), mx.nd.array(batch['token_type_ids']),
                        mx.nd.array(valid))
    seq = seq.asnumpy()
    hf_model = transformers.AutoModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        ref = hf_model(**{k: torch.tensor(v) for k, v in batch.items()})
    ref_seq = ref.last_hidden_state.numpy()
    hidden_diff = max(np.abs(seq[r, :n] - ref_seq[r, :n]).max() for r, n in enumerate(valid))
    mask = batch['attention_mask'][..., None]

    def sentence_embedding(x):  # all-MiniLM-L6-v2's pooling: masked mean, then L2 norm
        mean = (x * mask).sum(1) / mask.sum(1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    sentence_diff = np.abs(sentence_embedding(seq) - sentence_embedding(ref_seq)).max()
    pooled_diff = np.abs(pooled.asnumpy() - ref.pooler_output.numpy()).max()
    print(f'MiniLM max abs diff: hidden {hidden_diff:.2e}, sentence {sentence_diff:.2e}, '
          f'pooler {pooled_diff:.2e}')
    assert hidden_diff <= 1e-4 and sentence_diff <= 1e-5 and pooled_diff <= 1e-4


def test_minilm_teacher_is_built_once(tmp_path, minilm):
    config = HeadFitConfig(steps=3, max_sequences=12, batch_size=32, encode_batch=6, seq_len=32)
    folder = minilm_teacher(str(tmp_path), config, corpus_bytes=30_000)
    report = json.loads(open(os.path.join(folder, 'mlm_head.json')).read())
    assert report['config']['steps'] == 3 and report['heldout_masked'] > 0
    model = load_model(folder)
    assert model.has_decoder and model.arch.vocab_size == 30522
    assert load_tokenizer(folder).kind == 'wordpiece'
    stamp = os.path.getmtime(os.path.join(folder, 'model.params'))
    assert minilm_teacher(str(tmp_path), config, corpus_bytes=30_000) == folder
    assert os.path.getmtime(os.path.join(folder, 'model.params')) == stamp


@pytest.mark.slow
def test_adapted_teacher_trains_every_weight_and_is_cached(tmp_path, minilm):
    head = HeadFitConfig(steps=3, max_sequences=12, batch_size=32, encode_batch=6, seq_len=32)
    folder = adapted_minilm_teacher(str(tmp_path), steps=2, batch_size=2, seq_len=32,
                                    corpus_bytes=30_000, head=head)
    report = json.loads(open(os.path.join(folder, 'mlm_adapt.json')).read())
    assert report['steps'] == 2 and 0 <= report['heldout_mlm_accuracy'] <= 1
    start, adapted = load_model(folder.rsplit('_adapted_', 1)[0]), load_model(folder)
    assert adapted.has_decoder and load_tokenizer(folder).kind == 'wordpiece'
    changed = [not np.array_equal(a.data().asnumpy(), b.data().asnumpy())
               for a, b in zip(start.collect_params().values(),
                               adapted.collect_params().values())]
    assert all(changed[:3]) and sum(changed) > len(changed) // 2  # the encoder trained too
    assert adapted_minilm_teacher(str(tmp_path), steps=2, batch_size=2, seq_len=32,
                                  corpus_bytes=30_000, head=head) == folder
    # A second, longer build in the same process times only its own adaptation.
    longer = adapted_minilm_teacher(str(tmp_path), steps=3, batch_size=2, seq_len=32,
                                    corpus_bytes=30_000, head=head)
    seconds = json.loads(open(os.path.join(longer, 'mlm_adapt.json')).read())['build_seconds']
    assert 'MLM adaptation (3 steps)' in seconds and 'MLM adaptation (2 steps)' not in seconds


_BUILD_UNDER_HOROVOD = '''
import json, sys
from bort.distributed import init_comm
from bort.model import load_model
from bort.pretrain.default_teacher import adapted_minilm_teacher
cache, start, corpus, out = sys.argv[1:5]
comm = init_comm()
folder = adapted_minilm_teacher(cache, steps=2, batch_size=2, seq_len=24, start=start,
                                corpus=corpus, comm=comm)
vocab = load_model(folder).arch.vocab_size
total = float(comm.allreduce_sum(1.0))  # the workers' communicator still works afterwards
with open(f'{out}.rank{comm.rank}.json', 'w') as f:
    json.dump({'folder': folder, 'size': comm.size, 'total': total, 'vocab': vocab}, f)
'''


@pytest.mark.horovod
def test_the_default_teacher_builds_from_an_empty_cache_under_horovod(tmp_path):
    """horovodrun -np 2 with an empty cache: rank 0 builds the (MLM-adapted) teacher through
    pretrain() with a single-process communicator while rank 1 waits; both then load it.
    A tiny stand-in replaces MiniLM so that the test takes seconds."""
    import subprocess
    import sys

    from pretrain_helpers import save_teacher, tiny_tokenizer, write_corpus
    from toy_glue import horovodrun
    runner = horovodrun()
    if runner is None:
        pytest.skip('horovodrun is not installed')
    tok = tiny_tokenizer()
    start = save_teacher(str(tmp_path / 'tiny_teacher'), tok.vocab_size, tok)
    corpus = write_corpus(str(tmp_path / 'text'), files=1, docs=40)[0]
    cache, out = tmp_path / 'cache', tmp_path / 'result'
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE')
    done = subprocess.run([runner, '-np', '2', '-H', 'localhost:2', '--gloo', sys.executable,
                           '-c', _BUILD_UNDER_HOROVOD, str(cache), start, corpus, str(out)],
                          env=env, capture_output=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-4000:]
    ranks = [json.loads((tmp_path / f'result.rank{r}.json').read_text()) for r in range(2)]
    assert ranks[0]['folder'] == ranks[1]['folder']
    assert all(r['size'] == 2 and r['total'] == 2.0 for r in ranks)
    assert all(r['vocab'] == tok.vocab_size for r in ranks)
    report = json.loads(open(os.path.join(ranks[0]['folder'], 'mlm_adapt.json')).read())
    assert report['steps'] == 2 and report['head_only_report'] is None
    assert sorted(os.listdir(str(cache))) == [os.path.basename(ranks[0]['folder'])]
