"""Fine-tuning against transformers, piece by piece (issue 23): the optimizer step of the loop,
the schedule, the head's initialisation, the batches, truncation of pairs.

Every reference is independent of the project's loop: PyTorch's ``AdamW`` and
``clip_grad_norm_``, transformers' ``BertForSequenceClassification`` and its linear schedule,
NumPy statistics.
"""
import numpy as np
import pytest

import mxnet as mx

from bort.distributed import Comm
from bort.finetune.classifier import (HeadConfig, build_classifier, encode_pair, make_batch,
                                      task_loss)
from bort.finetune.config import FinetuneConfig
from bort.finetune.loop import build_trainer, epoch_batches, train_step
from bort.model import param_dict
from bort.optim import learning_rate

torch = pytest.importorskip('torch', reason='the optional extra (pip install .[hf]) is not '
                            'installed')
transformers = pytest.importorskip('transformers', reason='the optional extra (pip install '
                                   '.[hf]) is not installed')

WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [f'w{i}' for i in range(94)]


def _hf_classifier(tmp_path):
    """A tiny BertForSequenceClassification (no dropout), its encoder saved as a HF folder and
    imported as a project folder."""
    from bort.interop.convert import import_hf
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     max_position_embeddings=40, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     num_labels=2)
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # non-trivial biases and gains, so that decay exemptions matter
        for name, p in theirs.named_parameters():
            if name.endswith('bias') or 'LayerNorm' in name:
                p.add_(torch.randn(p.shape) * 0.1)
    theirs.bert.save_pretrained(tmp_path / 'hf')
    (tmp_path / 'hf' / 'vocab.txt').write_text(''.join(w + '\n' for w in WORDS))
    import_hf(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
    return theirs


def _batches(steps, batch=4, seq=9):
    rng = np.random.RandomState(3)
    out = []
    for _ in range(steps):
        valid = rng.randint(3, seq + 1, batch)
        ids = np.zeros((batch, seq), np.int64)
        types = np.zeros((batch, seq), np.int64)
        for row, n in enumerate(valid):
            ids[row, :n] = rng.randint(5, 99, n)
            types[row, n // 2:n] = 1
        out.append((ids, types, valid, rng.randint(0, 2, batch)))
    return out


@pytest.mark.parametrize('clip', [0.05, 100.0])
def test_loop_steps_match_pytorch_adamw(tmp_path, clip):
    """Three steps of the loop's trainer (default recipe) take the weights where three steps of
    transformers + torch.optim.AdamW (decay off biases and LayerNorm, global-norm clip) do."""
    from bort.interop.hf import hf_names
    theirs = _hf_classifier(tmp_path)
    config = FinetuneConfig(model=str(tmp_path / 'ours'), task='SST-2', head='linear',
                            head_dropout=0.0, lr=1e-3, weight_decay=0.3, clip_norm=clip)
    assert config.optimizer == 'adamw' and config.epsilon == 1e-8
    model = build_classifier(config.model, config.head_config(), seed=0)
    head = [p for n, p in param_dict(model).items() if n.startswith('head.')]
    head[0].set_data(mx.nd.array(theirs.classifier.weight.detach().numpy()))
    head[1].set_data(mx.nd.array(theirs.classifier.bias.detach().numpy()))
    trainer = build_trainer(model, config, Comm())
    params = [p for p in model.collect_params().values() if p.grad_req != 'null']
    decay = [p for n, p in theirs.named_parameters() if not n.endswith('bias')
             and 'LayerNorm' not in n]
    rest = [p for n, p in theirs.named_parameters() if n.endswith('bias') or 'LayerNorm' in n]
    optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': config.weight_decay},
                                   {'params': rest, 'weight_decay': 0.0}], lr=config.lr,
                                  eps=1e-8)
    steps = 3
    for step, (ids, types, valid, labels) in enumerate(_batches(steps)):
        rate = learning_rate(step, 10, config.lr, 0.5)
        trainer.set_learning_rate(rate)
        inputs = (mx.nd.array(ids, dtype='int32'), mx.nd.array(types, dtype='int32'),
                  mx.nd.array(valid, dtype='float32'))
        _, norm = train_step(model, trainer, params, task_loss('SST-2'), inputs,
                             mx.nd.array(labels), 1.0 / len(labels), config.clip_norm)
        mask = torch.tensor(np.arange(ids.shape[1])[None, :] < valid[:, None]).long()
        loss = theirs(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                      attention_mask=mask, labels=torch.tensor(labels)).loss
        loss.backward()
        their_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), config.clip_norm)
        assert norm == pytest.approx(float(their_norm), rel=1e-4)
        for group in optimizer.param_groups:
            group['lr'] = rate
        optimizer.step()
        optimizer.zero_grad()
    if clip < 1:
        assert norm > clip  # the clip acted
    ours = {n: p.data().asnumpy() for n, p in param_dict(model.backbone).items()}
    state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
    names = hf_names(model.backbone.arch)
    for name, value in ours.items():
        np.testing.assert_allclose(value, state[names[name]], atol=2e-5, rtol=1e-4,
                                   err_msg=name)
    np.testing.assert_allclose(head[0].data().asnumpy(), state['classifier.weight'], atol=2e-5)
    np.testing.assert_allclose(head[1].data().asnumpy(), state['classifier.bias'], atol=2e-5)


def test_schedule_is_transformers_linear_schedule_one_step_ahead():
    """Step s of ours uses the rate transformers' LambdaLR gives step s + 1 (its first step
    runs at rate 0); the rest is the same warm-up and decay."""
    total, warm, peak = 126, 13, 1e-4
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=peak)
    sched = transformers.get_linear_schedule_with_warmup(opt, warm, total)
    theirs = []
    for _ in range(total + 1):
        theirs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    ours = [learning_rate(s, total, peak, warm / total) for s in range(total)]
    np.testing.assert_allclose(ours, theirs[1:], rtol=1e-12, atol=1e-15)
    assert theirs[0] == 0.0


@pytest.mark.parametrize('init,r', [('normal', 0.02), ('uniform', 0.5)])
def test_head_initialisation(tmp_path, tiny_bert_arch, init, r):
    from bort.model import build_model, save_model
    save_model(build_model(tiny_bert_arch.replace(units=64, hidden_size=64), use_decoder=False),
               str(tmp_path / 'enc'))
    config = HeadConfig('SST-2', 2, 'two_layer', init=init, init_range=r)
    model = build_classifier(str(tmp_path / 'enc'), config, seed=1)
    head = {n: p.data().asnumpy() for n, p in param_dict(model).items() if n.startswith('head.')}
    weights = np.concatenate([v.ravel() for n, v in head.items() if n.endswith('weight')])
    assert weights.size == 64 * 64 + 64 * 2
    expected_sd = r if init == 'normal' else r / np.sqrt(3)
    assert abs(weights.std() - expected_sd) < 0.05 * expected_sd
    assert abs(weights.mean()) < 4 * expected_sd / np.sqrt(weights.size)
    if init == 'uniform':
        assert np.abs(weights).max() <= r and np.abs(weights).max() > 0.98 * r
    else:
        assert np.abs(weights).max() > 3 * r  # tails a uniform draw cannot have
    assert all(not v.any() for n, v in head.items() if n.endswith('bias'))


def test_shuffled_batches_are_a_random_partition():
    rng = np.random.RandomState(0)
    lengths = rng.randint(3, 60, 203).tolist()
    batches = epoch_batches(lengths, 16, seed=5, epoch=0)
    rows = np.concatenate([b for b, _ in batches])
    assert sorted(rows.tolist()) == list(range(203))
    assert [len(b) for b, _ in batches] == [16] * 12 + [11]
    assert all(max(lengths[i] for i in b) <= padded < max(lengths[i] for i in b) + 8
               and padded % 8 == 0 for b, padded in batches)
    # Not length-sorted: a batch's spread of lengths is that of random rows (bucketed: tiny).
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b, _ in batches])
    bucketed = epoch_batches(lengths, 16, seed=5, epoch=0, batching='bucketed')
    assert spread > 30 > 5 > np.mean([np.ptp([lengths[i] for i in b]) for b, _ in bucketed])
    again = epoch_batches(lengths, 16, seed=5, epoch=0)
    assert all((a == b).all() for (a, _), (b, _) in zip(batches, again))
    other = np.concatenate([b for b, _ in epoch_batches(lengths, 16, seed=5, epoch=1)])
    assert (other != rows).any()
    with pytest.raises(ValueError):
        epoch_batches(lengths, 16, 5, 0, batching='sorted')


def test_pair_truncation_matches_transformers(tmp_path):
    """Pairs cut as transformers cuts them, except one documented case: when both texts must
    be cut and the room left is odd, BERT's rule (ours: one token at a time off the longer,
    off the second on ties) can give the extra token to the other text than transformers' fast
    tokenizers do. No SST-2/RTE/WNLI pair of the issue's benchmark hits it at length 128."""
    from bort.tokenizers import load_tokenizer
    (tmp_path / 'vocab.txt').write_text(''.join(w + '\n' for w in WORDS))
    ours = load_tokenizer(str(tmp_path))
    theirs = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    rng = np.random.RandomState(0)
    same = 0
    for _ in range(40):
        a = [f'w{i}' for i in rng.randint(0, 94, rng.randint(1, 20))]
        b = [f'w{i}' for i in rng.randint(0, 94, rng.randint(1, 20))]
        for length in (8, 13, 64):
            expected = theirs(' '.join(a), ' '.join(b), truncation=True, max_length=length)
            ids, types = encode_pair(ours, ' '.join(a), ' '.join(b), length)
            if ids == expected['input_ids'] and types == expected['token_type_ids']:
                same += 1
                continue
            room = length - 3
            cut_a, cut_b = types.count(0) - 2, types.count(1) - 1
            assert room % 2 == 1 and cut_a < len(a) and cut_b < len(b)
            assert {cut_a, cut_b} == {room // 2, room // 2 + 1} and len(ids) == length
            assert ids[1:1 + cut_a] == [WORDS.index(w) for w in a[:cut_a]]
    assert same >= 100  # the documented case is the exception
