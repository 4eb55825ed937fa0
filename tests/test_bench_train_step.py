"""bench_train_step's PyTorch reference: gathering the masked positions before the MLM head
computes the same loss as BertForMaskedLM's decode-everything default (so the fair reference
does the same work minus the wasted rows), and autocast to bfloat16 stays near float32."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
from torch_train_step import torch_step  # noqa: E402  pylint: disable=wrong-import-position
from bench_train_step import row_optimizer, synthetic, table  # noqa: E402  pylint: disable=wrong-import-position

SHAPE = (1, 2, 16, 32)
ROWS = {
    'kd': dict(kind='kd', student=SHAPE, teacher=(2, 2, 16, 32), batch=3, seq=10, masked=2),
    'mlm': dict(kind='mlm', student=SHAPE, batch=3, seq=10, masked=2),
    'search': dict(kind='search', student=SHAPE, batch=3, seq=10, masked=2, topk=8),
}
for _row in ROWS.values():
    _row['optimizer'] = row_optimizer(_row['kind'])


def test_rows_time_the_journeys_default_optimizers():
    """Each row trains with its journey's defaults, read from the config classes (a changed
    default changes what is timed, on both sides)."""
    from bort.finetune.config import FinetuneConfig
    from bort.pretrain.config import PretrainConfig
    from bort.search.config import SearchConfig
    for kind, config in (('kd', PretrainConfig), ('mlm', PretrainConfig),
                         ('finetune', FinetuneConfig), ('search', SearchConfig)):
        fields = config.__dataclass_fields__
        got = row_optimizer(kind)
        assert (got['name'], got['lr'], got['weight_decay']) == (
            fields['optimizer'].default, fields['lr'].default, fields['weight_decay'].default)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _losses(row, steps=2, **kwargs):
    step = torch_step(row, synthetic(row), **kwargs)
    return np.array([float(step()) for _ in range(steps)])


@pytest.mark.parametrize('name', sorted(ROWS))
def test_gathered_reference_equals_decode_everything(name):
    """Same seed, same dropout draws: the two variants' losses agree over two steps (the
    second after an update), so gathering changes the work, not the step."""
    gathered, everything = _losses(ROWS[name]), _losses(ROWS[name], gather=False)
    assert np.all(np.isfinite(gathered)) and gathered[0] > 1.0
    np.testing.assert_allclose(gathered, everything, rtol=2e-5)
    assert gathered[0] != gathered[1]  # the update happened


def test_bf16_autocast_near_float32():
    row = ROWS['kd']
    full, half = _losses(row, steps=1), _losses(row, steps=1, bf16=True)
    assert abs(half[0] - full[0]) < 0.02 * full[0]
    assert half[0] != full[0]  # it did compute in bfloat16


def test_table_says_why_bf16_is_missing():
    side = dict(median_ms=10.0, iqr_ms=1.0, tokens_per_s=100.0)
    text = table([dict(row='kd', ours=side, torch=dict(side, median_ms=20.0),
                       ratio=2.0, rss_ours_mb=1, rss_row_mb=2,
                       **{'torch-bf16': 'not measured: CPU lacks bf16'})])
    assert 'not measured: CPU lacks bf16' in text and '2.00x' in text
