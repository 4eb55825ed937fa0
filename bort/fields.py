"""Config fields that carry their command-line flag: help text, choices and the range a value
must lie in (:func:`opt`, :class:`Range`), checked the same way when flags are parsed and when a
config is built in code (:func:`check_fields`). :mod:`bort.cli` turns such fields into flags.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional

from .errors import ConfigError

__all__ = ['opt', 'Range', 'positive', 'non_negative', 'probability', 'unit_interval',
           'at_least', 'check_fields', 'option_names', 'META_KEYS']

#: Metadata keys :func:`add_dataclass_flags` reads (anything else in ``opt(**kwargs)`` is a typo).
META_KEYS = frozenset({'help', 'choices', 'nargs', 'type', 'required', 'positional', 'metavar',
                       'check'})


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``low``/``high`` bounds, each open or closed.

    A list or tuple setting is checked element by element; ``None`` (an unset optional) passes.
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, (list, tuple)):
            return all(self.accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open
                                      else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f'in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}'
                    f'{")" if self.high_open else "]"}')
        if self.low is not None:
            return f'{">" if self.low_open else ">="} {self.low:g}'
        if self.high is not None:
            return f'{"<" if self.high_open else "<="} {self.high:g}'
        return 'a number'


positive = Range(low=0, low_open=True)
non_negative = Range(low=0)
#: A fraction that may be 0 or 1 (dropout, warmup share, ...).
unit_interval = Range(low=0, high=1)
#: A probability that must select something: (0, 1].
probability = Range(low=0, high=1, low_open=True)


def at_least(low: float) -> Range:
    """Integers such as counts and intervals: ``>= low``."""
    return Range(low=low)


def check_fields(config: Any) -> None:
    """Raise :class:`~bort.errors.ConfigError` for the first field whose value its ``check``
    or its ``choices`` refuse, naming the flag, the rule and the value (for configs built in
    code; argparse checks the choices of flags itself)."""
    for field in dataclasses.fields(config):
        check, choices = field.metadata.get('check'), field.metadata.get('choices')
        value, flag = getattr(config, field.name), option_names(field.name)[0]
        if check is not None and not check.accepts(value):
            raise ConfigError(f'{flag} must be {check.describe()}, got {value!r}')
        if choices is not None and value is not None:  # None: an optional left unset
            allowed = tuple(choices()) if callable(choices) else tuple(choices)
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(v not in allowed for v in items):
                raise ConfigError(f'{flag} must be one of {", ".join(map(str, allowed))}, '
                                  f'got {value!r}')


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
        e.g. a registry's keys), ``check`` (a :class:`Range`), ``nargs``, ``type`` (of one
        value), ``required``, ``positional``, ``metavar``.
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
