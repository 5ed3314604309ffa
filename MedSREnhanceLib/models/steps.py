"""Progress from inside one forward pass: a network reports the steps it has finished within a window.

A window can take tens of seconds on a CPU (a whole small volume is one window, and the bundled nets average
8 flipped passes), so per-window progress leaves the user without news for that long. Networks call
``report_step(done, total)`` after each internal pass (an ensemble member, a batch of slices); the tiled
inference installs a reporter around each window with ``step_reporter``. A context variable, not a global, so
two runs in different threads never see each other's reporter.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

StepFn = Callable[[int, int], None]  # (steps done in this window, steps in this window)

_reporter: contextvars.ContextVar[Optional[StepFn]] = contextvars.ContextVar("medsr_step_reporter", default=None)


def report_step(done: int, total: int) -> None:
    """Called by a network after each of its ``total`` internal passes; a no-op unless a reporter is installed."""
    fn = _reporter.get()
    if fn is not None:
        fn(done, total)


@contextlib.contextmanager
def step_reporter(fn: Optional[StepFn]) -> Iterator[None]:
    """Route ``report_step`` calls made inside the block to ``fn``."""
    token = _reporter.set(fn)
    try:
        yield
    finally:
        _reporter.reset(token)
