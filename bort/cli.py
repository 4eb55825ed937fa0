"""Command lines from config dataclasses, the same way for every script.

Each field of a config dataclass becomes a flag spelled both ``--x_y`` and ``--x-y``; booleans
get ``--x``/``--no-x``; list or tuple fields take several values. ``--config FILE.json`` sets
defaults from a JSON object whose keys are flag names (either spelling), and flags given on the
command line win. Help texts come from the field's ``metadata['help']`` or from a mapping the
script passes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

__all__ = ['option_names', 'add_dataclass_flags', 'parse_with_config', 'emit', 'run_main']


def option_names(name: str) -> List[str]:
    """``['--x_y', '--x-y']`` for a field ``x_y`` (one name when it has no underscore)."""
    names = [f'--{name}']
    if '_' in name:
        names.append('--' + name.replace('_', '-'))
    return names


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, help_texts: Optional[Dict] = None,
                        group: Optional[str] = None) -> None:
    """One flag per field of ``cls`` (see the module docstring)."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta, default = field.metadata, _default(field)
        text = meta.get('help') or (help_texts or {}).get(field.name, ' ')
        kwargs = {'dest': field.name, 'default': default, 'help': text}
        kind = hints.get(field.name)
        origin = typing.get_origin(kind)
        if isinstance(default, bool):
            kwargs['action'] = argparse.BooleanOptionalAction
        elif 'nargs' in meta or origin in (list, tuple) or isinstance(default, (list, tuple)):
            item = meta.get('type') or next(iter(typing.get_args(kind) or ()), str)
            kwargs.update(nargs=meta.get('nargs', '*'), type=item)
        else:
            kwargs['type'] = meta.get('type') or (type(default) if default is not None else str)
        if 'choices' in meta:
            kwargs['choices'] = meta['choices']
        target.add_argument(*option_names(field.name), **kwargs)


def _config_file_defaults(path: str, parser: argparse.ArgumentParser) -> Dict:
    with open(path) as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as err:
            parser.error(f'{path}: not valid JSON ({err})')
    if not isinstance(values, dict):
        parser.error(f'{path}: expected a JSON object of flag values')
    actions = {a.dest: a for a in parser._actions}  # pylint: disable=protected-access
    out = {}
    for key, value in values.items():
        dest = key.lstrip('-').replace('-', '_')
        if dest not in actions or dest == 'config':
            parser.error(f'{path}: unknown setting {key!r} (keys are flag names)')
        if isinstance(value, dict) and isinstance(actions[dest].default, str):
            value = json.dumps(value)  # e.g. an inline architecture
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser,
                      argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse ``argv`` over the defaults of ``--config FILE.json``; the values by field name."""
    if not any(a.dest == 'config' for a in parser._actions):  # pylint: disable=protected-access
        parser.add_argument('--config', help='JSON file of flag values (flags win)')
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**_config_file_defaults(first.config, parser))
    values = vars(parser.parse_args(argv))
    values.pop('config')
    return values


def emit(text: str) -> None:
    """Write a command's result to standard output.

    The library reports progress through ``logging`` (stderr, rank 0); what a command *returns
    to the user* (a table, a JSON summary) goes to stdout through this one function, so it can
    be piped or redirected apart from the log.
    """
    sys.stdout.write(text.rstrip('\n') + '\n')
    sys.stdout.flush()


def run_main(main: Callable[[], object], expected: Tuple[Type[BaseException], ...],
             logger: str) -> None:
    """Run a script's ``main``; an expected user error becomes one log line and exit status 2.

    Anything else propagates with its traceback: it is a bug, not bad input.
    """
    try:
        main()
    except expected as err:
        logging.getLogger(logger).error('%s', err)
        sys.exit(2)
