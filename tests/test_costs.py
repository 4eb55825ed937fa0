import pytest

from bort.arch import ARCHITECTURES, Architecture, iter_paper_space
from bort.costs import flops, num_parameters, parameter_breakdown, size_table, tuples_with_size
from bort.model import build_model, count_parameters


@pytest.mark.parametrize('with_decoder', [False, True])
def test_every_search_space_tuple_matches_built_model(with_decoder):
    """The closed form equals the built model's count for all 300 tuples (shapes only, no
    allocation: the model's parameters get their shapes by symbolic inference)."""
    for arch in iter_paper_space():
        model = build_model(arch, use_decoder=with_decoder, initialize=False)
        assert count_parameters(model) == num_parameters(arch, with_decoder), arch.tuple


@pytest.mark.parametrize('name', ['bert_base', 'roberta_large', 'bort_4_8_768_1024'])
def test_named_architectures_match_built_model(name):
    arch = ARCHITECTURES[name]
    model = build_model(arch, use_decoder=True, initialize=False)
    assert count_parameters(model) == num_parameters(arch, with_decoder=True)


def test_count_by_hand():
    arch = Architecture(1, 1, 2, 3, vocab_size=5, max_length=4)
    # embeddings 5*2 + 4*2 + LN 4; attention 4*4+4*2; FFN 2*2*3+3+2; LNs 4*2
    assert parameter_breakdown(arch)['embeddings'] == 10 + 8 + 4
    assert parameter_breakdown(arch)['encoder'] == (16 + 8) + (12 + 3 + 2) + 8
    assert num_parameters(arch) == 22 + 49


def test_size_table_reproduces_published_figures():
    rows = {r['name']: r for r in size_table()}
    for name, published in [('bort_paper', 56.14), ('bert_base', 110), ('bert_large', 340),
                            ('roberta_large', 355)]:
        assert rows[name]['params_m'] == pytest.approx(published, rel=0.025)
    assert rows['bert_large']['embeddings_m'] == pytest.approx(31.8, rel=0.025)
    assert rows['bert_large']['encoder_share'] == pytest.approx(0.906, rel=0.025)
    assert rows['bort_paper']['embeddings_m'] == pytest.approx(39.0, rel=0.01)


def test_tuples_of_35m_differ_only_in_heads():
    found = tuples_with_size(35.20)
    assert found
    sizes = {}
    for arch in found:
        sizes.setdefault(num_parameters(arch), set()).add((arch.num_layers, arch.units,
                                                           arch.hidden_size))
    assert all(len(shapes) == 1 for shapes in sizes.values())  # equal size <=> same D, H, I


def brute_force_flops(arch, length):
    """Count the paper's operations loop by loop over the layers."""
    d, _, h, i = arch.tuple
    total = 0
    for _ in range(d):
        for n_in, n_out in [(h, h)] * 4 + [(h, i), (i, h)]:
            total += length * (n_in * n_out + n_in * n_out)  # multiplies, then adds incl. bias
        total += 2 * (length * length * h * 2)  # QK^T and AV: multiply-adds
        total += 9 * i * length                  # GELU
    return total


def test_flops_against_brute_force():
    for arch in list(iter_paper_space())[::37]:
        assert flops(arch, 128) == brute_force_flops(arch, 128)
    bort, base = ARCHITECTURES['bort_4_8_768_1024'], ARCHITECTURES['bert_base']
    assert 3 < flops(base, 512) / flops(bort, 512) < 4  # 12 layers of 768 vs 4 of 1024
    assert flops(bort, 128, batch_size=4) == 4 * flops(bort, 128)
    assert flops(bort, 128) == flops(bort.replace(num_heads=16), 128)  # A does not enter
