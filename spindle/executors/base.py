"""The interface every executor implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


class Outcome(NamedTuple):
    """The results of one batch: one entry per item, in order.

    An entry is the function's result, or (for a generator function) the list of its
    outputs, or a :class:`~spindle.Failure` for an item that failed. ``failures``
    counts the Failure entries so that callers can skip looking for them.
    """

    results: list[Any]
    failures: int
    #: Seconds the function ran for this batch (compute time, not queueing).
    seconds: float = 0.0


class Executor(ABC):
    """Runs a stage's function on batches of items.

    Life cycle: ``prepare()`` (synchronous, in the caller's thread, before spindle
    starts any thread of its own: process pools fork here), ``await start()`` (on the
    pipeline's loop), any number of concurrent ``await run(items)`` (at most
    ``capacity`` at once), then ``await aclose(cancel=...)``, which returns only when
    every thread or process the executor started has ended.
    """

    #: How many batches may be in flight at once.
    capacity: int = 1

    def batch_size(self) -> int:
        """How many items the next batch should hold."""
        return 1

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Synchronous set-up that must happen before spindle's threads start."""

    @abstractmethod
    async def start(self) -> None:
        """Start workers; raise a :class:`~spindle.SpindleError` if they cannot run."""

    @abstractmethod
    async def run(self, items: list[Any]) -> Outcome:
        """Run the function on ``items``; never raises for a failure of the function."""

    @abstractmethod
    async def aclose(self, *, cancel: bool) -> None:
        """Stop; with ``cancel`` do not wait for running jobs."""

    def stats(self) -> dict[str, Any]:
        """Plain data about the workers (counts, restarts...)."""
        return {}

    def workers_snapshot(self) -> list[dict[str, Any]]:
        """One plain-data record per worker: index, pid, state, jobs, restarts."""
        return []

    def report(self) -> dict[str, Any] | None:
        """The stage's reporter's figures from every worker, merged; None without a
        reporter (or before the first report). See ``spindle.executors._reports``."""
        return None
