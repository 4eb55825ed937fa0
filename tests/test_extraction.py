"""bort.extraction: students sliced out of a teacher, checked against the teacher itself and
against slices written out by hand in numpy."""
import mxnet as mx
import numpy as np
import pytest

from bort.arch import Architecture, ArchitectureError
from bort.extraction import check_fits, extract_student, kept_layers
from bort.model import build_model, param_dict


@pytest.fixture
def teacher():
    """<3, 4, 32, 64> with BERT's token types and pooler; biases and LayerNorms randomised so
    that nothing sliced is trivially 0 or 1 (and importance orders are not the index order)."""
    arch = Architecture(num_layers=3, num_heads=4, units=32, hidden_size=64, vocab_size=99,
                        max_length=40, dropout=0.0, token_type_vocab_size=2, use_pooler=True)
    mx.random.seed(1)
    model = build_model(arch, use_decoder=True)
    rng = np.random.RandomState(0)
    for name, param in param_dict(model).items():
        if name.endswith(('bias', 'beta')):
            param.set_data(mx.nd.array(rng.normal(0, 0.1, param.shape)))
        elif name.endswith('gamma'):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    return model


def _outputs(model, batch=3, length=12):
    rng = np.random.RandomState(5)
    tokens = mx.nd.array(rng.randint(0, model.arch.vocab_size, (batch, length)))
    types = mx.nd.array(rng.randint(0, 2, (batch, length)))
    valid = mx.nd.array([length, 5, 9])
    positions = mx.nd.array(rng.randint(0, 5, (batch, 4)))
    return [o.asnumpy() for o in model(tokens, types, valid, positions)]


def _weights(model):
    return {name: p.data().asnumpy() for name, p in param_dict(model).items()}


@pytest.mark.parametrize('units', ['first', 'magnitude'])
def test_the_teachers_own_tuple_is_the_teacher(teacher, units):
    student = extract_student(teacher, teacher.arch, units=units)
    for mine, theirs in zip(_outputs(student), _outputs(teacher)):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize('how,expected', [('even', [1, 2]), ('first', [0, 1])])
def test_fewer_layers_is_the_teacher_with_those_layers(teacher, how, expected):
    """The reference: a two-layer model given the teacher's weights by renaming layer indices
    (every other weight copied as is), built without bort.extraction."""
    arch = teacher.arch.replace(num_layers=2)
    reference = build_model(arch, use_decoder=True)
    source = _weights(teacher)
    for name, param in param_dict(reference).items():
        if name.startswith('encoder.transformer_cells.'):
            parts = name.split('.')
            parts[2] = str(expected[int(parts[2])])
            name = '.'.join(parts)
        param.set_data(mx.nd.array(source[name]))
    student = extract_student(teacher, arch, layers=how, units='first')
    for mine, theirs in zip(_outputs(student), _outputs(reference)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)


def test_layer_choices_by_hand():
    assert kept_layers(6, 3) == [1, 3, 5]  # DistilBERT's every other layer
    assert kept_layers(6, 1) == [5] and kept_layers(6, 6) == list(range(6))
    assert kept_layers(6, 4, 'first') == [0, 1, 2, 3]
    assert kept_layers(12, 4) == [2, 5, 8, 11]


def test_first_slices_have_the_values_they_claim(teacher):
    """<1, 2, 16, 24> with ``first``: width 0..15, heads 0 and 1 (8 units each, as the
    teacher's), neurons 0..23, the teacher's last layer (even spacing)."""
    arch = teacher.arch.replace(num_layers=1, num_heads=2, units=16, hidden_size=24)
    got = _weights(extract_student(teacher, arch, units='first'))
    t = _weights(teacher)
    cell, tcell = 'encoder.transformer_cells.0.', 'encoder.transformer_cells.2.'
    np.testing.assert_array_equal(got['word_embed.0.weight'], t['word_embed.0.weight'][:, :16])
    np.testing.assert_array_equal(got['encoder.position_weight'],
                                  t['encoder.position_weight'][:, :16])
    np.testing.assert_array_equal(got[cell + 'attention_cell.proj_query.weight'],
                                  t[tcell + 'attention_cell.proj_query.weight'][:16, :16])
    np.testing.assert_array_equal(got[cell + 'proj.weight'], t[tcell + 'proj.weight'][:16, :16])
    np.testing.assert_array_equal(got[cell + 'ffn.ffn_1.weight'],
                                  t[tcell + 'ffn.ffn_1.weight'][:24, :16])
    np.testing.assert_array_equal(got[cell + 'ffn.ffn_2.weight'],
                                  t[tcell + 'ffn.ffn_2.weight'][:16, :24])
    np.testing.assert_array_equal(got[cell + 'ffn.layer_norm.gamma'],
                                  t[tcell + 'ffn.layer_norm.gamma'][:16])
    np.testing.assert_array_equal(got['decoder.0.weight'], t['decoder.0.weight'][:16, :16])
    np.testing.assert_array_equal(got['decoder.3.bias'], t['decoder.3.bias'])
    np.testing.assert_array_equal(got['pooler.weight'], t['pooler.weight'][:16, :16])


def test_magnitude_keeps_the_largest_by_brute_force(teacher):
    """Importance recomputed here with explicit loops: width by summed |gamma|, heads by
    ‖W_V,h‖·‖W_O,h‖, neurons by ‖W_1,n‖·‖W_2,n‖; the student's slices are those."""
    arch = teacher.arch.replace(num_layers=1, num_heads=3, units=24, hidden_size=16)
    got = _weights(extract_student(teacher, arch, units='magnitude'))
    t = _weights(teacher)
    tcell = 'encoder.transformer_cells.2.'
    width_score = [sum(abs(w[j]) for n, w in t.items() if n.endswith('gamma'))
                   for j in range(32)]
    width = sorted(sorted(range(32), key=lambda j: -width_score[j])[:24])
    head_score = []
    for h in range(4):
        rows = slice(8 * h, 8 * h + 8)
        head_score.append(np.sqrt((t[tcell + 'attention_cell.proj_value.weight'][rows] ** 2).sum())
                          * np.sqrt((t[tcell + 'proj.weight'][:, rows] ** 2).sum()))
    heads = sorted(sorted(range(4), key=lambda h: -head_score[h])[:3])
    rows = [8 * h + k for h in heads for k in range(8)]  # heads of 8 units, as the teacher's
    neuron_score = [np.linalg.norm(t[tcell + 'ffn.ffn_1.weight'][n]) *
                    np.linalg.norm(t[tcell + 'ffn.ffn_2.weight'][:, n]) for n in range(64)]
    neurons = sorted(sorted(range(64), key=lambda n: -neuron_score[n])[:16])
    cell = 'encoder.transformer_cells.0.'
    np.testing.assert_array_equal(got['word_embed.0.weight'], t['word_embed.0.weight'][:, width])
    np.testing.assert_array_equal(got[cell + 'attention_cell.proj_key.weight'],
                                  t[tcell + 'attention_cell.proj_key.weight'][np.ix_(rows, width)])
    np.testing.assert_array_equal(got[cell + 'proj.weight'],
                                  t[tcell + 'proj.weight'][np.ix_(width, rows)])
    np.testing.assert_array_equal(got[cell + 'ffn.ffn_1.bias'],
                                  t[tcell + 'ffn.ffn_1.bias'][neurons])
    np.testing.assert_array_equal(got[cell + 'ffn.ffn_2.weight'],
                                  t[tcell + 'ffn.ffn_2.weight'][np.ix_(width, neurons)])


def test_larger_heads_take_whole_teacher_heads(teacher):
    """<1, 1, 16, 64> ``first``: one head of 16 units = the teacher's heads 0 and 1 whole;
    <1, 4, 16, 64>: four heads of 4 units, the first 4 rows of each teacher head."""
    t = _weights(teacher)
    tq = t['encoder.transformer_cells.2.attention_cell.proj_query.weight']
    one = _weights(extract_student(teacher, teacher.arch.replace(
        num_layers=1, num_heads=1, units=16), units='first'))
    np.testing.assert_array_equal(
        one['encoder.transformer_cells.0.attention_cell.proj_query.weight'], tq[:16, :16])
    four = _weights(extract_student(teacher, teacher.arch.replace(
        num_layers=1, num_heads=4, units=16), units='first'))
    rows = [8 * h + k for h in range(4) for k in range(4)]
    np.testing.assert_array_equal(
        four['encoder.transformer_cells.0.attention_cell.proj_query.weight'], tq[rows, :16])


@pytest.mark.parametrize('change,dimension', [
    (dict(num_layers=4), 'num_layers'), (dict(units=64, num_heads=4), 'units'),
    (dict(hidden_size=128), 'hidden_size'), (dict(num_heads=8, units=32), 'num_heads'),
    (dict(vocab_size=100), 'vocab_size'), (dict(num_heads=2, units=24), 'whole number')])
def test_a_tuple_that_does_not_fit_is_refused_naming_the_dimension(teacher, change, dimension):
    arch = teacher.arch.replace(**change)
    with pytest.raises(ArchitectureError, match=dimension) as err:
        check_fits(arch, teacher.arch)
    assert '\n' not in str(err.value)
    with pytest.raises(ArchitectureError, match=dimension):
        extract_student(teacher, arch)
