"""Command lines from config dataclasses, the same way for every script and ``python -m`` command.

A config field declared with :func:`opt` carries its help text, and optionally ``choices``, in its
metadata; :func:`add_dataclass_flags` turns each field into a flag spelled both ``--x_y`` and
``--x-y``; booleans get ``--x``/``--no-x``; list or tuple fields take several values; a field
with ``positional=True`` is a positional argument. ``choices`` are checked by argparse, so a
wrong value ends the command with argparse's one-line error and exit status 2.
``--config FILE.json`` (:func:`parse_with_config`) sets defaults from a JSON object whose keys are
flag names (either spelling), and flags given on the command line win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import (Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type,
                    Union)

__all__ = ['opt', 'option_names', 'make_parser', 'add_dataclass_flags', 'parse_with_config',
           'parse_configs', 'add_subcommands', 'parse_subcommand', 'emit', 'run_main']

#: Metadata keys :func:`add_dataclass_flags` reads (anything else in ``opt(**kwargs)`` is a typo).
META_KEYS = frozenset({'help', 'choices', 'nargs', 'type', 'required', 'positional', 'metavar'})


def opt(default: Any, text: str, **kwargs) -> Any:
    """A config field with its command-line help text.

    Parameters
    ----------
    default
        The field's default; a list or tuple is copied for every instance (the same type).
    text : str
        The flag's help text.
    **kwargs
        More flag metadata: ``choices`` (the fixed set of values, or a function returning it,
        e.g. a registry's keys), ``nargs``, ``type`` (of one value), ``required``,
        ``positional``, ``metavar``.
    """
    unknown = set(kwargs) - META_KEYS
    if unknown:
        raise TypeError(f'opt() got unknown flag settings {sorted(unknown)}')
    metadata = {'help': text, **kwargs}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_names(name: str) -> List[str]:
    """``['--x_y', '--x-y']`` for a field ``x_y`` (one name when it has no underscore)."""
    names = [f'--{name}']
    if '_' in name:
        names.append('--' + name.replace('_', '-'))
    return names


def make_parser(prog: Optional[str] = None, description: Optional[str] = None,
                epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An argument parser whose help shows every flag's default."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def _value_type(kind) -> Optional[type]:
    """``int`` for ``int``, ``Optional[int]``, ``List[int]`` or ``Tuple[int, ...]``."""
    if typing.get_origin(kind) in (list, tuple, Union):
        args = [a for a in typing.get_args(kind) if a is not type(None) and a is not Ellipsis]
        return _value_type(args[0]) if args else None
    return kind if isinstance(kind, type) else None


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type,
                        group: Optional[str] = None) -> None:
    """One flag per field of the dataclass ``cls`` (see the module docstring).

    Raises
    ------
    TypeError
        If a field has no help text: every flag of every command is documented.
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta, default = field.metadata, _default(field)
        if not meta.get('help'):
            raise TypeError(f'{cls.__name__}.{field.name} has no help text: declare it with '
                            'bort.cli.opt(default, help)')
        # argparse %-formats help texts (for %(default)s): a literal percent sign is doubled.
        kwargs: Dict[str, Any] = {'default': default, 'help': meta['help'].replace('%', '%%')}
        kind = hints.get(field.name)
        is_list = typing.get_origin(kind) in (list, tuple) or isinstance(default, (list, tuple))
        if isinstance(default, bool) or kind is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        elif 'nargs' in meta or is_list:
            kwargs.update(nargs=meta.get('nargs', '*'),
                          type=meta.get('type') or _value_type(kind) or str)
        else:
            kwargs['type'] = (meta.get('type') or _value_type(kind)
                              or (type(default) if default is not None else str))
        if 'choices' in meta:
            # A callable reads a registry when the parser is built, so that entries registered
            # after the config class was defined count too.
            choices = meta['choices']
            kwargs['choices'] = tuple(choices()) if callable(choices) else choices
        if 'metavar' in meta:
            kwargs['metavar'] = meta['metavar']
        if meta.get('positional'):
            target.add_argument(field.name, **kwargs)
        else:
            kwargs['dest'] = field.name
            if meta.get('required'):
                # No default to show: the flag (or the --config file) must give the value.
                kwargs.update(required=True, default=argparse.SUPPRESS)
            target.add_argument(*option_names(field.name), **kwargs)


def _config_file_defaults(path: str, parser: argparse.ArgumentParser) -> Dict:
    try:
        with open(path) as f:
            values = json.load(f)
    except OSError as err:
        parser.error(f'--config {path}: {err.strerror}')
    except json.JSONDecodeError as err:
        parser.error(f'{path}: not valid JSON ({err})')
    if not isinstance(values, dict):
        parser.error(f'{path}: expected a JSON object of flag values')
    actions = {a.dest: a for a in parser._actions}  # pylint: disable=protected-access
    out = {}
    for key, value in values.items():
        dest = key.lstrip('-').replace('-', '_')
        if dest not in actions or dest in ('config', 'help'):
            parser.error(f'{path}: unknown setting {key!r} (keys are flag names)')
        action = actions[dest]
        if isinstance(value, dict) and isinstance(action.default, str):
            value = json.dumps(value)  # e.g. an inline architecture
        # argparse checks choices of command-line values only; a file's are checked here.
        items = value if isinstance(value, list) else [value]
        if action.choices is not None and any(v not in action.choices for v in items):
            parser.error(f'{path}: {key}: invalid choice {value!r} (choose from '
                         f'{", ".join(map(repr, action.choices))})')
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser,
                      argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Parse ``argv`` over the defaults of ``--config FILE.json``; the values by field name."""
    actions = parser._actions  # pylint: disable=protected-access
    if not any(a.dest == 'config' for a in actions):
        parser.add_argument('--config', metavar='FILE.json',
                            help='JSON object of flag values (keys are flag names); flags given '
                                 'on the command line win')
    # The file is read before the real parse, so that it can also supply required flags.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument('--config')
    known, _ = first.parse_known_args(argv)
    if known.config:
        defaults = _config_file_defaults(known.config, parser)
        for action in actions:
            if action.dest in defaults and action.option_strings:
                action.required = False
        parser.set_defaults(**defaults)
    values = vars(parser.parse_args(argv))
    values.pop('config')
    return values


def parse_configs(parser: argparse.ArgumentParser, classes: Sequence[type],
                  argv: Optional[Sequence[str]] = None) -> Tuple[Any, ...]:
    """Parse ``argv`` (over ``--config``) into one instance of each dataclass in ``classes``.

    ``parser`` holds the flags of every class (:func:`add_dataclass_flags`); field names must
    not repeat across the classes.
    """
    values = parse_with_config(parser, argv)
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
                 for cls in classes)


def add_subcommands(parser: argparse.ArgumentParser, commands: Mapping[str, type]) -> None:
    """Sub-commands of ``parser``: ``commands`` maps each name to its config dataclass.

    Each sub-command's help is the first line of its class docstring; its flags are the
    class's fields (:func:`add_dataclass_flags`). Parse with :func:`parse_subcommand`.
    """
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, cls in commands.items():
        summary = (cls.__doc__ or name).strip().split('\n')[0]
        child = sub.add_parser(name, help=summary, description=summary,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_dataclass_flags(child, cls)


def parse_subcommand(parser: argparse.ArgumentParser, commands: Mapping[str, type],
                     argv: Optional[Sequence[str]] = None) -> Tuple[str, Any]:
    """Parse ``argv`` with a parser built by :func:`add_subcommands`.

    Returns
    -------
    (name, config)
        The chosen sub-command and its config (an instance of ``commands[name]``).
    """
    values = vars(parser.parse_args(argv))
    name = values.pop('command')
    return name, commands[name](**values)


def emit(text: str) -> None:
    """Write a command's result to standard output.

    The library reports progress through ``logging`` (stderr, rank 0); what a command *returns
    to the user* (a table, a JSON summary) goes to stdout through this one function, so it can
    be piped or redirected apart from the log.
    """
    sys.stdout.write(text.rstrip('\n') + '\n')
    sys.stdout.flush()


def run_main(main: Callable[[], object], expected: Tuple[Type[BaseException], ...] = (),
             logger: str = 'bort') -> None:
    """Run a command's ``main``; an expected user error becomes one log line and exit status 2.

    Anything else propagates with its traceback: it is a bug, not bad input.
    """
    try:
        main()
    except expected as err:
        logging.getLogger(logger).error('%s', err)
        sys.exit(2)
