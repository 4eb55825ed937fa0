"""When a training loop stops early: a wall-clock budget (``--max_minutes``) and Ctrl-C.

:class:`RunBudget` is checked between optimizer steps, never inside one, so that a stop always
leaves whole weights and optimizer state to checkpoint:

- the budget counts the training loop's wall time, carried over a resume (``spent``); the clock
  is injectable so tests run it without sleeping;
- inside ``with budget:`` the first Ctrl-C (SIGINT) only sets a flag: the loop finishes its
  step, writes a resumable checkpoint and raises :class:`KeyboardInterrupt`; a second Ctrl-C
  stops at once (the last checkpoint stays the last complete one);
- under Horovod the decision is collective: every worker stops at the same step when any worker
  is over budget or interrupted.

:func:`schedule_position` is how a budget shapes the learning-rate schedule: the schedule's
progress is the larger of the step fraction and the time fraction, so a run given minutes warms
up and decays within them instead of stopping at a high rate part-way through a schedule sized
for a step count it will not reach.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable, Optional, Tuple

import numpy as np

__all__ = ['RunBudget', 'schedule_position', 'INTERRUPTED', 'OUT_OF_TIME']

log = logging.getLogger(__name__)

#: :meth:`RunBudget.stop_reason` values.
INTERRUPTED, OUT_OF_TIME = 'interrupted', 'time budget'
#: Steps of the virtual schedule a time fraction is mapped onto (fine enough to be continuous).
_GRID = 1_000_000


class RunBudget:
    """A training loop's stopping rules: minutes allowed, minutes spent, Ctrl-C.

    Parameters
    ----------
    minutes : float
        The wall-clock budget of the loop; 0 means none.
    spent : float
        Seconds already spent by the run before this process (from its checkpoint).
    clock : callable, optional
        ``clock() -> seconds``; :func:`time.monotonic` by default (tests pass a fake one).
    comm : Comm, optional
        The workers; the stop decision is theirs together.
    """

    def __init__(self, minutes: float = 0.0, spent: float = 0.0,
                 clock: Optional[Callable[[], float]] = None, comm=None):
        self.minutes = float(minutes)
        self.spent = float(spent)
        self.clock = clock or time.monotonic
        self.comm = comm
        self.interrupted = False
        self._start = self.clock()
        self._previous = None

    def elapsed(self) -> float:
        """Seconds of the run so far, earlier processes included."""
        return self.spent + (self.clock() - self._start)

    def fraction(self) -> float:
        """The share of the budget used (0 without a budget)."""
        return self.elapsed() / (60.0 * self.minutes) if self.minutes > 0 else 0.0

    def stop_reason(self) -> Optional[str]:
        """:data:`INTERRUPTED`, :data:`OUT_OF_TIME` or None; the same on every worker.

        Call it between steps, on every worker (it is collective under Horovod).
        """
        flags = np.array([self.interrupted, self.minutes > 0 and self.fraction() >= 1.0],
                         dtype=np.float64)
        if self.comm is not None and self.comm.distributed:
            flags = self.comm.allreduce_sum(flags)
        if flags[0]:
            return INTERRUPTED
        if flags[1]:
            return OUT_OF_TIME
        return None

    def _on_sigint(self, signum, frame):  # pylint: disable=unused-argument
        if self.interrupted:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning('Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop '
                    'at once)')

    def __enter__(self) -> 'RunBudget':
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps
        # Python's default behaviour (an immediate KeyboardInterrupt).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def schedule_position(step: int, total_steps: int, budget: Optional[RunBudget]
                      ) -> Tuple[int, int]:
    """``(step, total)`` to give :func:`bort.optim.learning_rate` under a budget.

    Without a budget, ``(step, total_steps)``; with one, the schedule's progress is
    ``max(step / total_steps, time used / budget)`` expressed on a fine virtual grid, so warm-up
    and decay happen within whichever limit comes first.
    """
    if budget is None or budget.minutes <= 0:
        return step, total_steps
    progress = min(1.0, max(step / max(total_steps, 1), budget.fraction()))
    return int(progress * _GRID), _GRID
