"""Command lines from config dataclasses: both spellings, --config files, flags winning, help
texts and choices on every flag of every script and ``python -m`` command."""
import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional

import pytest

from bort import cli, fields
from bort.errors import ConfigError, DataFormatError
from bort.cli import (add_dataclass_flags, add_subcommands, make_parser, parse_configs,
                      parse_subcommand, parse_with_config, run_main)
from bort.fields import opt, option_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Settings:
    out_dir: str = opt('runs/x', 'output folder')
    steps: int = opt(10, 'steps')
    lr: float = opt(0.1, 'learning rate, 10 % of something')
    resume: bool = opt(False, 'resume')
    seeds: List[int] = opt([0, 1], 'seeds')
    mode: str = opt('a', 'mode', choices=('a', 'b'))
    heads: Optional[int] = opt(None, 'heads (none: from the weights)')


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Settings)
    return Settings(**parse_with_config(parser, argv))


def test_option_names():
    assert option_names('lr') == ['--lr']
    assert option_names('out_dir') == ['--out_dir', '--out-dir']


def test_opt_copies_list_defaults_and_rejects_unknown_settings():
    first, second = Settings(), Settings()
    first.seeds.append(9)
    assert second.seeds == [0, 1] and isinstance(second.seeds, list)
    with pytest.raises(TypeError, match='choises'):
        opt(1, 'x', choises=(1, 2))


def test_defaults_and_both_spellings():
    assert _parse([]) == Settings()
    assert _parse(['--out-dir', 'a', '--steps', '3', '--resume', '--seeds', '4', '5',
                   '--heads', '2']) == \
        Settings(out_dir='a', steps=3, resume=True, seeds=[4, 5], heads=2)
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


def test_choices_are_enforced_on_flags_and_in_config_files(tmp_path, capsys):
    assert _parse(['--mode', 'b']).mode == 'b'
    with pytest.raises(SystemExit) as exit_:
        _parse(['--mode', 'c'])
    assert exit_.value.code == 2 and "invalid choice: 'c'" in capsys.readouterr().err
    path = tmp_path / 'c.json'
    path.write_text(json.dumps({'mode': 'c'}))
    with pytest.raises(SystemExit) as exit_:
        _parse(['--config', str(path)])
    assert exit_.value.code == 2 and "invalid choice 'c'" in capsys.readouterr().err


def test_a_field_without_help_is_refused():
    @dataclass
    class Bare:
        steps: int = 3

    with pytest.raises(TypeError, match='Bare.steps has no help'):
        add_dataclass_flags(argparse.ArgumentParser(), Bare)


@dataclass
class Command:
    """Do a thing."""

    inputs: List[str] = opt([], 'input files', positional=True, nargs='+')
    out: str = opt('', 'output folder', required=True)
    rows: int = opt(4, 'rows')


def test_positional_and_required_flags_and_several_configs(tmp_path, capsys):
    parser = make_parser()
    add_dataclass_flags(parser, Command)
    add_dataclass_flags(parser, Settings, group='more')
    command, settings = parse_configs(parser, [Command, Settings],
                                      ['a', 'b', '--out', 'o', '--steps', '2'])
    assert command == Command(inputs=['a', 'b'], out='o') and settings.steps == 2
    with pytest.raises(SystemExit):
        parse_configs(make_parser(), [Command], ['a'])  # no flags: nothing known
    parser = make_parser()
    add_dataclass_flags(parser, Command)
    with pytest.raises(SystemExit):
        parse_configs(parser, [Command], ['a'])  # --out is required
    assert '--out' in capsys.readouterr().err
    path = tmp_path / 'c.json'
    path.write_text(json.dumps({'out': 'from_file'}))
    parser = make_parser()
    add_dataclass_flags(parser, Command)
    assert parse_configs(parser, [Command], ['a', '--config', str(path)])[0].out == 'from_file'


def test_subcommands():
    commands = {'do': Command, 'set': Settings}
    parser = make_parser()
    add_subcommands(parser, commands)
    assert parse_subcommand(parser, commands, ['do', 'x', '--out', 'o']) == \
        ('do', Command(inputs=['x'], out='o'))
    assert parse_subcommand(parser, commands, ['set', '--lr', '2'])[1].lr == 2.0


def test_run_main_turns_expected_errors_into_exit_status_2(caplog):
    def bad():
        raise LookupError('no such entry: x')

    with pytest.raises(SystemExit) as exit_:
        run_main(bad, (LookupError,), 'test')
    assert exit_.value.code == 2 and 'no such entry' in caplog.text
    with pytest.raises(LookupError):
        run_main(bad, (), 'test')  # not expected by this command: a bug keeps its traceback


# -- every script and command -----------------------------------------------------------------
def _script(name):
    sys.path.insert(0, REPO)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(REPO)


SCRIPTS = ('run_search', 'run_pretraining', 'run_finetune')
COMMANDS = ('bort.costs', 'bort.interop.convert', 'bort.pretrain.prepare', 'bort.pretrain.mlm_head',
            'bort.inference.predict', 'bort.inference.quantize')
PARSERS = {**{f'{name}.py': (lambda name=name: _script(name).build_parser()) for name in SCRIPTS},
           **{name: (lambda name=name: importlib.import_module(name).build_parser())
              for name in COMMANDS}}


def _actions(parser):
    for action in parser._actions:  # pylint: disable=protected-access
        if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
            for child in action.choices.values():
                yield from _actions(child)
        elif not isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
            yield action


@pytest.mark.parametrize('name', sorted(PARSERS))
def test_every_flag_has_help_and_both_spellings(name):
    parser = PARSERS[name]()
    actions = list(_actions(parser))
    assert actions
    for action in actions:
        assert action.help and action.help.strip(), f'{name}: {action.option_strings} has no help'
        long = [s for s in action.option_strings if s.startswith('--') and
                not s.startswith('--no-')]
        if any('_' in s or '-' in s[2:] for s in long):
            spelled = {s.replace('-', '_')[2:] for s in long}
            assert len(long) == 2 and len(spelled) == 1, f'{name}: {long}'
    parser.format_help()  # the texts format (a stray % would raise here)


def test_a_wrong_choice_exits_with_status_2_and_one_error_line():
    run = subprocess.run([sys.executable, os.path.join(REPO, 'run_finetune.py'), '--head', 'big'],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [  # one line, not the usage block before it
        "run_finetune.py: error: argument --head: invalid choice: 'big' "
        "(choose from 'auto', 'linear', 'two_layer', 'released') (see --help)"]


def test_configs_live_in_config_modules_and_their_packages_re_export_them():
    import bort.finetune
    import bort.pretrain
    from bort.finetune import config as finetune_config
    from bort.pretrain import config as pretrain_config
    assert bort.pretrain.PretrainConfig is pretrain_config.PretrainConfig
    for name in ('FinetuneConfig', 'AgoraConfig', 'RunOptions'):
        assert getattr(bort.finetune, name) is getattr(finetune_config, name)


def test_prune_help_names_every_rule():
    # --prune is checked when Agora starts (its rules live in bort.finetune.agora, which
    # imports the config): the help text must at least name them all.
    from dataclasses import fields
    from bort.finetune.pruning import PRUNE_RULES
    from bort.finetune.config import AgoraConfig
    text = next(f for f in fields(AgoraConfig) if f.name == 'prune').metadata['help']
    assert all(rule in text for rule in PRUNE_RULES)


# -- checks and the one error exit ---------------------------------------------------------------
@dataclasses.dataclass
class _Checked:
    lr: float = fields.opt(1e-4, 'rate', check=fields.positive)
    ratio: float = fields.opt(0.15, 'mask ratio', check=fields.probability)
    interval: int = fields.opt(10, 'every N steps', check=fields.at_least(1))
    wd: float = fields.opt(0.0, 'decay', check=fields.non_negative)
    sizes: tuple = fields.opt((8, 16), 'batch sizes', type=int, check=fields.at_least(1))


@pytest.mark.parametrize('flag,value,rule', [
    ('--lr', '0', '> 0'), ('--lr=-1e-3', None, '> 0'), ('--ratio', '0', 'in (0, 1]'),
    ('--ratio', '1.5', 'in (0, 1]'), ('--interval', '0', '>= 1'), ('--wd', '-0.01', '>= 0'),
    ('--lr', 'nan', '> 0')])
def test_a_value_out_of_range_is_one_line_naming_the_flag(capsys, flag, value, rule):
    parser = cli.make_parser(prog='prog')
    cli.add_dataclass_flags(parser, _Checked)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_configs(parser, [_Checked], [flag] if value is None else [flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = flag.split('=')[0]
    assert len(err) == 1 and err[0].startswith(f'prog: error: {name} must be {rule}, got')


def test_list_values_are_checked_one_by_one_and_good_values_pass():
    parser = cli.make_parser(prog='prog')
    cli.add_dataclass_flags(parser, _Checked)
    config, = cli.parse_configs(parser, [_Checked], ['--sizes', '8', '32', '--ratio', '1'])
    assert config.sizes == [8, 32] and config.ratio == 1.0
    with pytest.raises(ConfigError, match=r'--sizes must be >= 1, got \[8, 0\]'):
        fields.check_fields(_Checked(sizes=[8, 0]))


def _exit_of(main, caplog, monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, '0')
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main, (), 'test')
    return exit_info.value.code, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize('error,text', [
    (ConfigError('--lr must be > 0, got -1'), '--lr must be > 0, got -1'),
    (DataFormatError('bad row', 'train.tsv', 3), 'train.tsv:3: bad row'),
    (FileNotFoundError(2, 'No such file or directory', 'data/x.tsv'),
     'No such file or directory: data/x.tsv'),
    (OSError(28, 'No space left on device', 'runs/x/model.params'),
     'no space left on the device writing runs/x/model.params')])
def test_run_main_turns_expected_errors_into_one_line_and_status_2(caplog, monkeypatch, error,
                                                                   text):
    def main():
        raise error
    code, lines = _exit_of(main, caplog, monkeypatch)
    assert code == 2 and len(lines) == 1 and text in lines[0] and '\n' not in lines[0]


def test_bugs_keep_their_traceback_and_debug_shows_every_traceback(monkeypatch):
    def bug():
        raise TypeError('a bug')
    with pytest.raises(TypeError):
        cli.run_main(bug, (), 'test')

    def mistake():
        raise ConfigError('--lr must be > 0')
    monkeypatch.setenv(cli.DEBUG_ENV, '1')
    with pytest.raises(ConfigError):
        cli.run_main(mistake, (), 'test')


def test_ctrl_c_is_one_line_and_status_130(caplog, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt
    code, lines = _exit_of(interrupted, caplog, monkeypatch)
    assert code == 130 and lines == ['interrupted']
    caplog.clear()

    def interrupted_with_a_checkpoint():
        raise KeyboardInterrupt('interrupted at step 7: checkpoint written; run again with '
                                '--resume')
    code, lines = _exit_of(interrupted_with_a_checkpoint, caplog, monkeypatch)
    assert code == 130 and lines == ['interrupted at step 7: checkpoint written; run again with '
                                     '--resume']


def test_a_command_prints_one_line_and_no_traceback(tmp_path):
    """End to end: a command given a missing model folder, in a fresh process."""
    proc = subprocess.run([sys.executable, '-m', 'bort.interop.convert', 'export',
                           str(tmp_path / 'missing'), str(tmp_path / 'out')],
                          capture_output=True, text=True, cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr


def test_abbreviated_flags_are_refused(capsys):
    parser = cli.make_parser(prog='prog')
    cli.add_dataclass_flags(parser, _Checked)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_configs(parser, [_Checked], ['--interv', '5'])
    assert exit_info.value.code == 2 and 'unrecognized arguments: --interv' in capsys.readouterr().err


# -- a flag error is one line; a settings file is checked like the flags -----------------------
@pytest.mark.parametrize('argv,message', [
    (['--steps', 'abc'], "argument --steps: invalid int value: 'abc'"),
    (['--stpes', '3'], 'unrecognized arguments: --stpes 3'),
    (['--mode', 'c'], "argument --mode: invalid choice: 'c'"),
])
def test_a_flag_error_is_one_line_not_the_usage_block(argv, message, capsys):
    parser = cli.make_parser(prog='prog')
    cli.add_dataclass_flags(parser, Settings)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_configs(parser, [Settings], argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f'prog: error: {message}') and err[0].endswith('(see --help)')


def test_a_subcommand_flag_error_is_one_line(capsys):
    parser = cli.make_parser(prog='prog')
    cli.add_subcommands(parser, {'go': Settings})
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_subcommand(parser, {'go': Settings}, ['go', '--steps', 'x'])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize('text,message', [
    ('{"steps": "abc"}', r':2: steps must be an integer, got \'abc\''),
    ('{"steps": 3.7}', r':2: steps must be an integer, got 3\.7'),
    ('{"steps": true}', r':2: steps must be an integer, got True'),
    ('{"resume": "no"}', r':2: resume must be true or false, got \'no\''),
    ('{"lr": "fast"}', r':2: lr must be a number, got \'fast\''),
    ('{"out_dir": 5}', r':2: out_dir must be a string, got 5'),
    ('{"seeds": 3}', r':2: seeds must be a list, got 3'),
    ('{"seeds": [1, "x"]}', r':2: seeds must be a list of integers, got \[1, \'x\'\]'),
    ('{"heads": 2.5}', r':2: heads must be an integer, got 2\.5'),
    ('{"steps": null}', r':2: steps must be an integer, got None'),
    ('{\n  "lr": 1,\n\n  "steps": [4]}', r':4: steps must be an integer, got \[4\]'),
])
def test_a_settings_file_value_of_the_wrong_type_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / 's.json'
    path.write_text(text.replace('{"', '{\n"') if '\n' not in text else text)
    parser = cli.make_parser(prog='prog')
    cli.add_dataclass_flags(parser, Settings)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_configs(parser, [Settings], ['--config', str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    import re
    assert re.search(re.escape(str(path)) + message, err[0]), err[0]


def test_a_settings_file_with_good_values_of_every_type_passes(tmp_path):
    path = tmp_path / 's.json'
    path.write_text(json.dumps({'steps': 1e4, 'lr': 1, 'resume': True, 'seeds': [3],
                                'heads': None, 'out-dir': 'o', 'mode': 'b'}))
    settings = _parse(['--config', str(path)])
    assert settings == Settings(out_dir='o', steps=10000, lr=1.0, resume=True, seeds=[3],
                                mode='b', heads=None)
    assert isinstance(settings.steps, int) and isinstance(settings.lr, float)


def test_scripts_refuse_a_bad_settings_file_before_making_their_folder(tmp_path, capsys):
    import run_pretraining
    out = tmp_path / 'run'
    for bad in ({'total_steps': 3.7}, {'resume': 'no'}, {'batch_size': 'big'}):
        path = tmp_path / 'kd.json'
        path.write_text(json.dumps(dict(bad, data=str(tmp_path), output_dir=str(out))))
        with pytest.raises(SystemExit) as exit_info:
            run_pretraining.main(['--config', str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and list(bad)[0] in err[0]
        assert not out.exists()
