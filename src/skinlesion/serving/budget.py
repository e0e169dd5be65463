"""Run slow work (Score-CAM, SmoothGrad) under a wall-clock time budget.

TensorFlow offers no way to interrupt a running computation from another thread, and a
separate process per request would have to load the model again. So the work runs in one
background thread per :class:`BudgetRunner`, and the caller waits at most the budget:

* when the budget runs out the caller gets :class:`BudgetExceeded` at once; the computation
  is **abandoned, not killed**: it runs to its end in the background and its result is dropped;
* calls run one at a time, so at most one abandoned computation is ever running per runner, and a
  call still *queued* when its budget runs out is cancelled before it starts (no wasted work).

The budget covers the wait in that queue as well as the computation: it is the longest time
the caller waits, whatever else the runner is busy with.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")

__all__ = ["BudgetExceeded", "BudgetRunner", "Deadline"]


class BudgetExceeded(TimeoutError):
    """The work did not finish within ``budget_s`` seconds (it was abandoned, not killed)."""

    def __init__(self, budget_s: float, what: str = "the computation") -> None:
        super().__init__(f"{what} did not finish within the {budget_s:g} s time budget")
        self.budget_s = budget_s
        self.what = what


class Deadline:
    """A point in time ``budget_s`` seconds from now; :meth:`remaining` counts down to 0."""

    def __init__(self, budget_s: float) -> None:
        if not budget_s > 0:
            raise ValueError(f"a time budget must be > 0 seconds, got {budget_s!r}")
        self.budget_s = float(budget_s)
        self._end = time.monotonic() + self.budget_s

    def remaining(self) -> float:
        """Seconds left (0.0 once the deadline has passed)."""
        return max(0.0, self._end - time.monotonic())


class BudgetRunner:
    """One background thread that runs calls in order, each waited for at most its budget."""

    def __init__(self, name: str = "budget") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, fn: Callable[[], T], budget: float | Deadline, what: str = "the computation") -> T:
        """``fn()``'s result, or :class:`BudgetExceeded` when ``budget`` (seconds or a
        :class:`Deadline`) runs out first; ``fn``'s own exceptions propagate unchanged."""
        deadline = budget if isinstance(budget, Deadline) else Deadline(budget)
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=deadline.remaining())
        except FutureTimeout:
            if future.done() and not future.cancelled():
                # Finished in the instant after the wait ended (or fn itself raised a TimeoutError,
                # which Python 3.11+ cannot tell apart from the wait's): its own outcome stands.
                return future.result()
            # Still queued: never start it. Already running: abandoned (see the module docstring).
            future.cancel()
            raise BudgetExceeded(deadline.budget_s, what) from None

    def shutdown(self) -> None:
        """Stop accepting work; queued calls are cancelled, a running one finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
