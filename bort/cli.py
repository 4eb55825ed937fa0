"""Command lines from config dataclasses, the same way for every script and ``python -m`` command.

A config field declared with :func:`bort.fields.opt` carries its help text, and optionally
``choices``, in its metadata; :func:`add_dataclass_flags` turns each field into a flag spelled
both ``--x_y`` and ``--x-y``; booleans get ``--x``/``--no-x``; list or tuple fields take several
values; a field with ``positional=True`` is a positional argument. ``choices`` are checked by
argparse, so a wrong value ends the command with argparse's one-line error and exit status 2. A
field may also carry a ``check`` (:class:`bort.fields.Range`: ``positive``, ``non_negative``,
``at_least``, ``probability``, ...): :func:`bort.fields.check_fields` enforces it when flags are
parsed and when a config is built in code, naming the flag.
``--config FILE.json`` (:func:`parse_with_config`) sets defaults from a JSON object whose keys are
flag names (either spelling), and flags given on the command line win.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import sys
import typing
from typing import (Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Type,
                    Union)

from .errors import ConfigError, UserError
from .fields import check_fields, option_names

__all__ = ['OneLineParser', 'make_parser', 'add_dataclass_flags', 'parse_with_config',
           'parse_configs', 'add_subcommands', 'parse_subcommand', 'emit', 'run_main',
           'DEBUG_ENV', 'setup_command_logging']


#: The one log-line format of every command (also :func:`bort.log.setup_logging`'s).
LOG_FORMAT, LOG_DATEFMT = '%(asctime)s %(levelname)s %(name)s: %(message)s', '%H:%M:%S'

#: Set to 1 to see the traceback of an expected error (a user mistake) instead of one line.
DEBUG_ENV = 'BORT_DEBUG'


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: ... (see --help)``) and exit
    status 2, instead of argparse's whole usage block (29-44 lines for the training scripts)
    before the line that matters."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def make_parser(prog: Optional[str] = None, description: Optional[str] = None,
                epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """An argument parser whose help shows every flag's default and whose errors are one line.

    Abbreviated flags are refused (``--total_step`` is not taken for ``--total_steps``): a typo
    must not silently set another setting. Sub-command parsers (:func:`add_subcommands`) are of
    the same class.
    """
    return OneLineParser(prog=prog, description=description, epilog=epilog,
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         allow_abbrev=False)


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
                            'bort.fields.opt(default, help)')
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


def _key_line(text: str, key: str) -> int:
    """The 1-based line of ``"key":`` in a JSON text (1 when not found)."""
    match = re.search(r'"%s"\s*:' % re.escape(key), text)
    return text.count('\n', 0, match.start()) + 1 if match else 1


_KIND_NAMES = {int: 'an integer', float: 'a number', str: 'a string'}
_KIND_PLURALS = {int: 'integers', float: 'numbers', str: 'strings'}


def _file_value(action: argparse.Action, value: Any) -> Tuple[Any, Optional[str]]:
    """A settings file's ``value`` for ``action`` checked as the flag's parser would check it:
    ``(value, None)`` (ints given as 1e4 become 10000) or ``(None, what it must be)``."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return (value, None) if isinstance(value, bool) else (None, 'true or false')
    if value is None and action.default is None:
        return None, None  # an optional setting left unset
    kind = action.type if action.type in _KIND_NAMES else None
    listed = action.nargs not in (None, '?')

    def one(item):
        if kind is int and isinstance(item, float) and item.is_integer():
            return int(item), True
        if kind is int:
            return item, isinstance(item, int) and not isinstance(item, bool)
        if kind is float:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
            return (float(item) if ok else item), ok
        if kind is str:
            return item, isinstance(item, str)
        return item, not isinstance(item, (dict, list))  # another type: its own check later

    if listed:
        if not isinstance(value, list):
            return None, 'a list'
        checked = [one(item) for item in value]
        if not all(ok for _, ok in checked):
            return None, f'a list of {_KIND_PLURALS.get(kind, "single values")}'
        return [item for item, _ in checked], None
    item, ok = one(value)
    return (item, None) if ok else (None, _KIND_NAMES.get(kind, 'a single value'))


def _config_file_defaults(path: str, parser: argparse.ArgumentParser) -> Dict:
    """The flag values of a ``--config`` file, each checked as on the command line: a wrong
    type, an unknown key or a value outside its choices ends the command with one line naming
    the file, the line and the key (exit status 2)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        values = json.loads(text)
    except OSError as err:
        parser.error(f'--config {path}: {err.strerror}')
    except UnicodeDecodeError:
        parser.error(f'{path}: not UTF-8 text')
    except json.JSONDecodeError as err:
        parser.error(f'{path}:{err.lineno}: not valid JSON ({err.msg})')
    if not isinstance(values, dict):
        parser.error(f'{path}: expected a JSON object of flag values')
    actions = {a.dest: a for a in parser._actions}  # pylint: disable=protected-access
    out = {}
    for key, value in values.items():
        line = _key_line(text, key)
        where = f'{path}:{line}: {key}'
        dest = key.lstrip('-').replace('-', '_')
        if dest not in actions or dest in ('config', 'help'):
            parser.error(f'{path}:{line}: unknown setting {key!r} (keys are flag names)')
        action = actions[dest]
        if isinstance(value, dict) and isinstance(action.default, str):
            value = json.dumps(value)  # e.g. an inline architecture
        checked, expected = _file_value(action, value)
        if expected is not None:
            parser.error(f'{where} must be {expected}, got {value!r}')
        # argparse checks choices of command-line values only; a file's are checked here.
        items = checked if isinstance(checked, list) else [checked]
        if action.choices is not None and any(v not in action.choices for v in items):
            parser.error(f'{where}: invalid choice {value!r} (choose from '
                         f'{", ".join(map(repr, action.choices))})')
        out[dest] = checked
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
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
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
    configs = []
    for cls in classes:
        try:
            config = cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
            check_fields(config)
        except ConfigError as err:
            parser.exit(2, f'{parser.prog}: error: {err}\n')
        configs.append(config)
    return tuple(configs)


def add_subcommands(parser: argparse.ArgumentParser, commands: Mapping[str, type]) -> None:
    """Sub-commands of ``parser``: ``commands`` maps each name to its config dataclass.

    Each sub-command's help is the first line of its class docstring; its flags are the
    class's fields (:func:`add_dataclass_flags`). Parse with :func:`parse_subcommand`.
    """
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name, cls in commands.items():
        summary = (cls.__doc__ or name).strip().split('\n')[0]
        child = sub.add_parser(name, help=summary, description=summary, allow_abbrev=False,
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
    try:
        config = commands[name](**values)
        check_fields(config)
    except ConfigError as err:
        parser.exit(2, f'{parser.prog} {name}: error: {err}\n')
    return name, config


def emit(text: str) -> None:
    """Write a command's result to standard output.

    The library reports progress through ``logging`` (stderr, rank 0); what a command *returns
    to the user* (a table, a JSON summary) goes to stdout through this one function, so it can
    be piped or redirected apart from the log.
    """
    sys.stdout.write(text.rstrip('\n') + '\n')
    sys.stdout.flush()


#: Errors that are the user's to fix in every command, besides the project's UserError classes.
_EXPECTED_OS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)


def _one_line(err: BaseException) -> Optional[str]:
    """The message of an expected error, or None for a bug (which keeps its traceback)."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, _EXPECTED_OS):
        where = f': {err.filename}' if getattr(err, 'filename', None) else ''
        return f'{err.strerror or err}{where}' if err.strerror else str(err)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f'no space left on the device{f" writing {err.filename}" if err.filename else ""}'
                f'; free some space (completed checkpoints are kept) and run again to resume')
    return None


@contextlib.contextmanager
def ctrl_c_exits_at_once() -> Iterator[None]:
    """Inside the block a Ctrl-C ends the process at once with status 130 and no traceback.

    For a command's start-up imports (MXNet and its dependencies take a second or two), where a
    KeyboardInterrupt can land inside an extension module's import code, which prints it and
    goes on as if nothing happened (seen about once in a hundred starts on a loaded machine).
    Nothing has been written yet, so there is nothing to lose; the previous handler is restored
    after the block.
    """
    # pylint: disable-next=protected-access
    previous = signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_main(main: Callable[[], object], expected: Tuple[Type[BaseException], ...] = (),
             logger: str = 'bort') -> None:
    """Run a command's ``main``; an expected error becomes one log line and exit status 2.

    Expected are the project's :class:`~bort.errors.UserError` classes (bad input, settings,
    files), missing or unwritable files, a full disk, and the command's own ``expected``
    classes. Ctrl-C ends with one line and status 130 (checkpoints already written are kept).
    Anything else propagates with its traceback: it is a bug, not bad input. With
    ``BORT_DEBUG=1`` every error keeps its traceback.
    """
    log = logging.getLogger(logger)
    try:
        main()
    except KeyboardInterrupt as err:
        if os.environ.get(DEBUG_ENV) == '1':
            raise
        _ensure_logging()
        # A loop that wrote a resumable checkpoint re-raises with what to do next.
        log.error('%s', str(err) or 'interrupted')
        sys.exit(130)
    except Exception as err:  # pylint: disable=broad-except
        message = str(err) if isinstance(err, expected) else _one_line(err)
        if message is None or os.environ.get(DEBUG_ENV) == '1':
            raise
        _ensure_logging()
        log.error('%s', message)
        sys.exit(2)


def _ensure_logging() -> None:
    """Log records reach stderr even when the command failed before it set up logging."""
    if not logging.getLogger().handlers:
        setup_command_logging()


def setup_command_logging(level: int = logging.INFO) -> None:
    """The one log format on stderr, for single-process commands (``python -m bort.…``);
    training scripts use :func:`bort.log.setup_logging`, which adds rank-0 filtering."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATEFMT)
