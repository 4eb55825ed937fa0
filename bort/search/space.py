"""The search space Ξ and the FPTAS's choice of candidates (the ε-selection).

The project's reading of the procedure (SPEC.md section 3): sort Ξ by parameter count p, ties by
inference cost i, remaining ties by the tuple <D, A, H, I>; take one candidate every ε positions,
starting with the smallest (positions 0, ε, 2ε, ...); ε = 1 evaluates every tuple.
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..arch import ARCHITECTURES, Architecture, ArchitectureError
from ..errors import ConfigError
from .config import KNOBS

__all__ = ['SearchSpace', 'build_space', 'order_space', 'epsilon_select', 'arch_key']

log = logging.getLogger(__name__)

Tuple4 = Tuple[int, int, int, int]


def arch_key(item: Union[Architecture, Mapping[str, Any]]) -> Tuple4:
    """The <D, A, H, I> that identifies a candidate, of an :class:`Architecture` or of anything
    holding the four knobs by name (a result record, an Optuna trial's parameters)."""
    if isinstance(item, Architecture):
        return item.tuple
    return tuple(int(item[k]) for k in KNOBS)


@dataclass
class SearchSpace:
    """The valid tuples of a grid, and the ones skipped as invalid.

    Attributes
    ----------
    valid : list of Architecture
        Built on the teacher's non-searched fields (vocabulary, max length, token types).
    skipped : list of (D, A, H, I)
        Tuples the architecture family rejects (H not divisible by A, ...).
    grid : dict
        The four knob lists it was built from.
    """

    valid: List[Architecture]
    skipped: List[Tuple4]
    grid: Dict[str, Tuple[int, ...]]

    def __len__(self) -> int:
        return len(self.valid)

    def summary(self) -> Dict:
        return {'grid': {k: list(v) for k, v in self.grid.items()}, 'valid': len(self.valid),
                'skipped': len(self.skipped), 'skipped_tuples': [list(t) for t in self.skipped]}


def build_space(grid: Dict[str, Sequence[int]], base: Optional[Architecture] = None
                ) -> SearchSpace:
    """Ξ of a grid, on the non-searched fields of ``base`` (the teacher's, pooler dropped).

    Students share the teacher's vocabulary, max length and token types; they carry no pooler
    (the distillation objective never reaches it, and p should count what is trained). Without
    ``base`` (Bort's fields) the result says only which tuples are valid: validity depends on
    the four knobs alone, so a grid can be checked before any teacher is loaded.

    Raises
    ------
    ConfigError
        No tuple of the grid is valid; the message gives each distinct reason and an example.
    """
    base = (base or ARCHITECTURES['bort_4_8_768_1024']).replace(use_pooler=False)
    valid, skipped, reasons = [], [], {}
    for d, a, h, i in itertools.product(grid['num_layers'], grid['num_heads'], grid['units'],
                                        grid['hidden_size']):
        try:
            valid.append(base.replace(num_layers=d, num_heads=a, units=h, hidden_size=i,
                                      name=''))
        except ArchitectureError as err:
            skipped.append((d, a, h, i))
            reasons.setdefault(str(err), (d, a, h, i))
    if skipped:
        log.info('search space: %d valid tuples, %d skipped as invalid (e.g. <%s>)', len(valid),
                 len(skipped), ', '.join(map(str, skipped[0])))
    if not valid:
        items = list(reasons.items())
        why = '; '.join(f'{reason} (e.g. <{", ".join(map(str, example))}>)'
                        for reason, example in items[:3])
        if len(items) > 3:
            why += f'; and {len(items) - 3} more'
        raise ConfigError(f'no tuple of the grid {dict((k, list(v)) for k, v in grid.items())} '
                          f'is a valid architecture: {why or "a knob has no values"}')
    return SearchSpace(valid, skipped, {k: tuple(v) for k, v in grid.items()})


def order_space(archs: Sequence[Architecture], params: Callable[[Architecture], float],
                costs: Callable[[List[Architecture]], List[float]]) -> List[Architecture]:
    """Ξ sorted by p, ties by i, then by the tuple.

    Parameters
    ----------
    archs : sequence of Architecture
    params : callable
        p of one architecture.
    costs : callable
        i of a list of architectures; called once, with only the tuples that share their p with
        another one: elsewhere i does not change the order, and a measured i is not free.
    """
    p = {a.tuple: params(a) for a in archs}
    shared = Counter(p.values())
    tied = [a for a in archs if shared[p[a.tuple]] > 1]
    tie_costs = dict(zip((a.tuple for a in tied), costs(tied))) if tied else {}
    return sorted(archs, key=lambda a: (p[a.tuple], tie_costs.get(a.tuple, 0.0), a.tuple))


def epsilon_select(ordered: Sequence[Architecture], epsilon: int,
                   limit: Optional[int] = None) -> List[Architecture]:
    """One candidate every ``epsilon`` positions of the ordered space: indices 0, ε, 2ε, ...

    Parameters
    ----------
    ordered : sequence of Architecture
        Ξ sorted by :func:`order_space`.
    epsilon : int
        Interval size, 1 <= ε; 1 is exhaustive, ε >= |Ξ| keeps the smallest tuple only.
    limit : int, optional
        Keep at most this many.
    """
    if epsilon < 1:
        raise ValueError(f'epsilon must be >= 1, got {epsilon}')
    chosen = list(ordered[::epsilon])
    return chosen[:limit] if limit else chosen
