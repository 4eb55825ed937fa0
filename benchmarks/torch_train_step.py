"""The PyTorch side of ``bench_train_step.py``: each row's step written plainly with transformers'
BERT (eager), in the variants the benchmark compares against.

- ``gather=True`` (the reference): the masked positions' hidden states are gathered before the
  MLM head, so the head decodes B x M rows, as the project's step and any fast implementation
  do (``BertForMaskedLM.bert`` then ``BertForMaskedLM.cls`` on the gathered rows).
- ``gather=False``: what ``BertForMaskedLM(...).logits`` does by default: the head decodes all
  B x L positions and the masked ones are picked afterwards (6x more decoder rows at 16 x 64
  with 11 masked a row), for student and teacher.
- ``bf16=True``: the forward pass and loss under ``torch.autocast('cpu', dtype=torch.bfloat16)``
  (float32 weights and optimizer, bfloat16 matrix products), gathered.

Same shapes, loss, optimizer (the row's ``optimizer``: the project's default for the journey,
as ``torch.optim.AdamW`` / ``Adam`` / ``SGD``) and clipping (global norm 1) as ours.
"""
from __future__ import annotations

import numpy as np

VOCAB = 30522


def _config(shape, dropout=0.1):
    from transformers import BertConfig  # pylint: disable=import-outside-toplevel
    layers, heads, units, hidden = shape
    return BertConfig(vocab_size=VOCAB, hidden_size=units, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=hidden,
                      max_position_embeddings=512, type_vocab_size=2,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                      attn_implementation='eager')


def torch_step(row, data, gather: bool = True, bf16: bool = False):
    """A zero-argument function running one PyTorch training step of ``row``.

    Parameters
    ----------
    row : dict
        A row of ``bench_train_step.ROWS``.
    data : dict of numpy arrays
        ``bench_train_step.synthetic(row)``: ids, types (B, L), valid (B,), positions, labels,
        weights (B, M), classes (B,).
    gather : bool
        Decode only the masked positions (False: every position, then pick).
    bf16 : bool
        Forward pass and loss under CPU autocast to bfloat16.

    Returns
    -------
    callable
        ``step()`` runs forward, backward, clipping and the update; returns the loss (a
        detached scalar tensor, computed before the update).
    """
    # pylint: disable=import-outside-toplevel
    import torch
    import torch.nn.functional as F
    from transformers import BertForMaskedLM, BertModel
    torch.manual_seed(0)
    ids = torch.tensor(data['ids'], dtype=torch.long)
    types = torch.tensor(data['types'], dtype=torch.long)
    mask = (torch.arange(row['seq'])[None, :] < torch.tensor(data['valid'])[:, None]).long()
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    autocast = lambda: torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def optimizer(params):
        o = row['optimizer']
        if o['name'] == 'sgd':
            return torch.optim.SGD(params, lr=o['lr'], momentum=o['momentum'],
                                   weight_decay=o['weight_decay'])
        # bertadam does AdamW's work without the bias correction: timed as AdamW
        kind = torch.optim.Adam if o['name'] == 'adam' else torch.optim.AdamW
        return kind(params, lr=o['lr'], betas=(0.9, o['beta2']), eps=o['epsilon'],
                    weight_decay=o['weight_decay'])

    def update(loss, params, opt):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.detach()

    kind = row['kind']
    if kind == 'finetune':
        encoder = BertModel(_config(row['student']), add_pooling_layer=False)
        head = torch.nn.Sequential(torch.nn.Dropout(0.1),
                                   torch.nn.Linear(row['student'][2], row['classes']))
        params = list(encoder.parameters()) + list(head.parameters())
        opt = optimizer(params)
        target = torch.tensor(data['classes'], dtype=torch.long)
        encoder.train()
        head.train()

        def step():
            with autocast():
                out = encoder(**inputs).last_hidden_state[:, 0]
                loss = F.cross_entropy(head(out).float(), target)
            return update(loss, params, opt)
        return step
    rows = torch.arange(row['batch'])[:, None]
    positions = torch.tensor(data['positions'], dtype=torch.long)

    def masked_logits(model):
        """(B, M, V) logits at the masked positions."""
        if gather:
            hidden = model.bert(**inputs).last_hidden_state            # (B, L, H)
            return model.cls(hidden[rows, positions])                 # (B, M, V)
        return model(**inputs).logits[rows, positions]                # (B, L, V) -> (B, M, V)

    student = BertForMaskedLM(_config(row['student']))
    student.train()
    params = list(student.parameters())
    labels = torch.tensor(data['labels'], dtype=torch.long)
    weights = torch.tensor(data['weights'])
    if kind == 'search':
        opt = optimizer(params)
        k = row['topk']
        flat = torch.tensor(data['weights'].reshape(-1) > 0)
        rng = np.random.RandomState(1)
        n = int(flat.sum())
        top_ids = torch.tensor(np.stack([rng.choice(VOCAB, k, replace=False) for _ in range(n)]),
                               dtype=torch.long)
        top_vals = torch.sort(torch.randn(n, k) * 2, dim=1, descending=True).values
        lse = torch.logsumexp(top_vals, dim=1) + 0.5

        def step():
            with autocast():
                s = masked_logits(student).reshape(-1, VOCAB)[flat].float()
                logp = F.log_softmax(s, dim=-1)
                picked = logp.gather(1, top_ids)
                q = torch.exp(top_vals - lse[:, None])
                rest = torch.relu(1 - q.sum(-1))
                per = -(q * picked).sum(-1) - rest / (VOCAB - k) * (logp.sum(-1)
                                                                    - picked.sum(-1))
                loss = per.mean()
            return update(loss, params, opt)
        return step
    teacher = BertForMaskedLM(_config(row['teacher'])) if kind == 'kd' else None
    if teacher is not None:
        teacher.eval()
    opt = optimizer(params)
    temperature = 2.0

    def step():
        with autocast():
            s = masked_logits(student).float()                        # (B, M, V)
            nll = F.cross_entropy(s.reshape(-1, VOCAB), labels.reshape(-1), reduction='none')
            loss = mlm = (nll * weights.reshape(-1)).sum() / weights.sum()
            if teacher is not None:
                with torch.no_grad():
                    q = F.softmax(masked_logits(teacher).float() / temperature, dim=-1)
                ce = -(q * F.log_softmax(s / temperature, dim=-1)).sum(-1)
                kd = (ce * weights).sum() / weights.sum()
                loss = 0.1 * mlm + 0.5 * temperature ** 2 * kd
        return update(loss, params, opt)
    return step
