"""Command lines from config dataclasses: both spellings, --config files, flags winning."""
import argparse
import json
from dataclasses import dataclass, field
from typing import List

import pytest

from bort.cli import add_dataclass_flags, option_names, parse_with_config


@dataclass
class Settings:
    out_dir: str = 'runs/x'
    steps: int = 10
    lr: float = 0.1
    resume: bool = False
    seeds: List[int] = field(default_factory=lambda: [0, 1])


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Settings)
    return Settings(**parse_with_config(parser, argv))


def test_option_names():
    assert option_names('lr') == ['--lr']
    assert option_names('out_dir') == ['--out_dir', '--out-dir']


def test_defaults_and_both_spellings():
    assert _parse([]) == Settings()
    assert _parse(['--out-dir', 'a', '--steps', '3', '--resume', '--seeds', '4', '5']) == \
        Settings(out_dir='a', steps=3, resume=True, seeds=[4, 5])
    assert _parse(['--out_dir', 'b', '--no-resume']).out_dir == 'b'


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps({'out-dir': 'from_file', 'steps': 7, 'lr': 0.5}))
    settings = _parse(['--config', str(path), '--steps', '9'])
    assert (settings.out_dir, settings.steps, settings.lr) == ('from_file', 9, 0.5)


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps({'stepz': 7}))
    with pytest.raises(SystemExit):
        _parse(['--config', str(path)])
    assert "unknown setting 'stepz'" in capsys.readouterr().err
