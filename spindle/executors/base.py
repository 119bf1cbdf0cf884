"""The interface every executor implements."""

from __future__ import annotations

import contextlib
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict

from .._errors import SpindleError
from .._failure import Failure
from .spec import WorkSpec


class WorkerSnapshot(TypedDict):
    """One worker of a stage (a process, a thread or a loop slot), as plain data."""

    stage: str
    index: int
    pid: int | None
    state: str
    jobs: int
    restarts: int


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

    An executor is made for one run from a :class:`~spindle.executors.spec.WorkSpec`,
    the part of a stage it needs; it never sees the stage itself.

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

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        """One plain-data record per worker: index, pid, state, jobs, restarts."""
        return []

    def report(self) -> dict[str, Any] | None:
        """The stage's reporter's figures from every worker, merged; None without a
        reporter (or before the first report). See ``spindle.executors._reports``."""
        return None


#: Makes the executor of one run of a stage from the stage's :class:`WorkSpec`.
ExecutorFactory = Callable[[WorkSpec], Executor]


def init_failed(stage: str, where: str, exc: BaseException) -> SpindleError:
    """The error of a stage whose ``init`` raised ``exc`` ``where`` (in a worker
    thread, on the event loop...): the same words whatever the kind, the cause kept."""
    err = SpindleError(
        f"the init function of stage {stage!r} failed {where}: {type(exc).__name__}: {exc}"
    )
    err.__cause__ = exc
    return err


async def around_fault(executor: Executor, items: list[Any], index: int, failed: Any) -> Outcome:
    """The outcome of a batch whose item ``index`` killed its worker or timed out:
    ``failed`` in its place, and the items before and after it run again (those
    before it had run, but their results died with the worker)."""
    before = await executor.run(items[:index]) if index else Outcome([], 0)
    rest = items[index + 1 :]
    after = await executor.run(rest) if rest else Outcome([], 0)
    return Outcome([*before.results, failed, *after.results], before.failures + 1 + after.failures)


def decode_results(
    data: bytes, items: list[Any], stage: str, where: str
) -> tuple[Outcome, int | None] | Outcome:
    """A batch's outcome from a worker's ``encode_result`` bytes, with the memory the
    worker reported (``max_memory_per_worker``); or, when the bytes cannot be
    unpickled ``where`` they arrived (the parent, the driver), an outcome alone in
    which every item fails ``Unpicklable``."""
    try:
        results, errors, seconds, rss = pickle.loads(data)
    except BaseException as exc:  # a __setstate__ may raise anything, SystemExit too
        msg = f"the results could not be unpickled in the {where} ({type(exc).__name__}: {exc})"
        return Outcome([Failure(x, "Unpicklable", msg, "", 1, stage) for x in items], len(items))
    for i, (name, message, text, blob) in errors.items():
        exc_obj: BaseException | None = None
        if blob is not None:
            with contextlib.suppress(BaseException):
                exc_obj = pickle.loads(blob)
        results[i] = Failure(items[i], name, message, text, 1, stage, exc_obj)
    return Outcome(results, len(errors), seconds), rss
