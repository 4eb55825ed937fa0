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

import contextlib
import logging
import signal
import threading
import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from .log import progress

__all__ = ['RunBudget', 'schedule_position', 'StepBar', 'INTERRUPTED', 'OUT_OF_TIME']

log = logging.getLogger(__name__)

#: :meth:`RunBudget.stop_reason` values.
INTERRUPTED, OUT_OF_TIME = 'interrupted', 'time budget'
#: Steps of the virtual schedule a time fraction is mapped onto (fine enough to be continuous).
_GRID = 1_000_000


class RunBudget:
    """A training loop's stopping rules: minutes allowed, minutes spent, Ctrl-C.

    Time inside :meth:`paused` (a loop's held-out evaluations and checkpoints) is not counted:
    the budget buys training steps, whatever the evaluation schedule.

    Parameters
    ----------
    minutes : float
        The wall-clock budget of the loop's training; 0 means none.
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
        self._paused = 0.0  # seconds inside paused() since _start
        self._pause_start = None
        self._previous = None
        self._depth = 0  # nested ``with`` blocks (Agora's budget around its students')

    def elapsed(self) -> float:
        """Seconds of the run's training so far, earlier processes included (time inside
        :meth:`paused` left out)."""
        now = self.clock()
        paused = self._paused + (now - self._pause_start if self._pause_start is not None
                                 else 0.0)
        return self.spent + (now - self._start) - paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """A block whose time the budget does not count (nested blocks count once)."""
        if self._pause_start is not None:
            yield
            return
        self._pause_start = self.clock()
        try:
            yield
        finally:
            self._paused += self.clock() - self._pause_start
            self._pause_start = None

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
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._previous is not None:
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


class StepBar:
    """The progress bar of a training loop (rank 0): over optimizer steps, or, under a time
    budget, over the budget's seconds with the step count beside it, so that its ETA is the
    budget's end rather than that of a step count the run will not reach.

    Parameters
    ----------
    total_steps, step : int
        The step limit and the steps already taken.
    budget : RunBudget, optional
        The run's own budget (a bar over time when it has minutes).
    comm : Comm, optional
    desc : str
    disable : bool
    """

    def __init__(self, total_steps: int, step: int, budget: Optional[RunBudget] = None,
                 comm=None, desc: str = '', disable: bool = False):
        self.step = step
        self.budget = budget if budget is not None and budget.minutes > 0 else None
        if self.budget is not None:
            total = int(round(60 * self.budget.minutes))
            self.bar = progress(total=total, initial=min(int(self.budget.elapsed()), total),
                                comm=comm, disable=disable, unit='s',
                                desc=f'{desc} ({self.budget.minutes:g} min)')
        else:
            self.bar = progress(total=total_steps, initial=step, comm=comm, disable=disable,
                                desc=desc, unit='step')

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more optimizer steps."""
        self.step += steps
        if self.budget is None:
            self.bar.update(steps)
            return
        now = min(int(self.budget.elapsed()), self.bar.total)
        self.bar.set_postfix(step=self.step, refresh=False)
        self.bar.update(max(0, now - self.bar.n))

    def set_postfix(self, **values) -> None:
        """Figures shown after the bar (the step count is added under a budget)."""
        if self.budget is not None:
            values = dict(step=self.step, **values)
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()
