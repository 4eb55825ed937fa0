import json

import pytest

from bort.arch import (ARCHITECTURES, Architecture, ArchitectureError, PAPER_SEARCH_SPACE, get_arch,
                       load_arch, save_arch, search_space)


def test_registry_shapes():
    released = ARCHITECTURES['bort_4_8_768_1024']
    assert released.tuple == (4, 8, 1024, 768)      # width 1024, FFN 768
    assert ARCHITECTURES['bort_paper'].tuple == (4, 8, 768, 1024)
    assert ARCHITECTURES['bort_2_16_512_1024'].tuple == (2, 16, 1024, 512)
    assert released.token_type_vocab_size == 0 and not released.use_pooler
    assert released.vocab_size == 50265 and released.max_length == 512
    for name in ('bert_base', 'bert_large', 'roberta_base', 'roberta_large'):
        assert name in ARCHITECTURES
    assert released.label == 'bort_4_8_768_1024'
    assert Architecture(4, 8, 1024, 768).label == 'bort_4_8_768_1024'


@pytest.mark.parametrize('changes, message', [
    (dict(units=1000, num_heads=16), 'divisible'),
    (dict(num_layers=0), 'num_layers'),
    (dict(hidden_size=-4), 'hidden_size'),
    (dict(num_heads=2.5), 'num_heads'),
    (dict(embed_size=128), 'embed_size'),
    (dict(dropout=1.5), 'dropout'),
])
def test_invalid_architectures_rejected(changes, message):
    values = dict(num_layers=2, num_heads=4, units=32, hidden_size=64)
    values.update(changes)
    with pytest.raises(ArchitectureError, match=message):
        Architecture(**values)


def test_json_round_trip(tmp_path, tiny_arch):
    path = save_arch(tiny_arch, str(tmp_path))
    assert json.load(open(path))['units'] == 32
    assert load_arch(str(tmp_path)) == tiny_arch
    assert get_arch(path) == tiny_arch


def test_unknown_field_and_name(tmp_path):
    (tmp_path / 'a.json').write_text(json.dumps(dict(num_layers=1, num_heads=1, units=8,
                                                     hidden_size=8, colour='red')))
    with pytest.raises(ArchitectureError, match='colour'):
        load_arch(str(tmp_path / 'a.json'))
    with pytest.raises(ArchitectureError, match='unknown architecture'):
        get_arch('no_such_model')


def test_paper_search_space_has_300_valid_tuples():
    valid, skipped = search_space(**PAPER_SEARCH_SPACE)
    assert len(valid) == 300
    assert len(skipped) == 6 * 4 * 3 * 5 - 300
    assert all(h % a for _, a, h, _ in skipped)
    assert ARCHITECTURES['bert_base'].tuple in {a.tuple for a in valid}


def test_get_arch_reads_every_form(tmp_path, tiny_arch):
    """Name, inline JSON, a results row, a model folder and a search's output folder."""
    text = json.dumps(tiny_arch.to_dict())
    assert get_arch(text) == tiny_arch
    (tmp_path / 'result.json').write_text(json.dumps({'rank': 1, 'arch': tiny_arch.to_dict()}))
    assert get_arch(str(tmp_path / 'result.json')) == tiny_arch
    assert get_arch('bort_4_8_768_1024').units == 1024
    (tmp_path / 'search').mkdir()
    (tmp_path / 'search' / 'best_arch.json').write_text(text)
    assert get_arch(str(tmp_path / 'search')) == tiny_arch
    save_arch(tiny_arch.replace(units=64), str(tmp_path / 'search'))  # a model folder wins
    assert get_arch(str(tmp_path / 'search')).units == 64
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ArchitectureError, match='neither arch.json'):
        get_arch(str(tmp_path / 'empty'))
    with pytest.raises(ArchitectureError, match='not valid JSON'):
        get_arch('{"units": ')


def test_user_mistakes_are_user_errors():
    from bort.errors import UserError
    with pytest.raises(UserError):
        get_arch('no_such_model')
    with pytest.raises(ValueError):
        get_arch('no_such_model')
