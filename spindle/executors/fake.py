"""An executor for tests: the stage's function called inline, on the pipeline's loop.

The pipeline, its channels and stage runners do not care where a function runs (see
:class:`~spindle.executors.base.Executor`), so their behaviour (ordering, windows,
retries, failures, stopping) can be tested without a thread or a process: a run
driven by :class:`FakeExecutor` takes microseconds and does exactly what the test
says, in the order it says. A test holds a batch with ``hold``, an awaitable callback
(for instance one that waits on an :class:`asyncio.Event`), to decide when each batch
finishes::

    slot coroutine ── run(items) ──▶ await hold(items) ──▶ fn(item) for each item
          ▲                                                        │
          └─────────────────── Outcome(results, failures) ◀────────┘

The fake keeps the executors' contract: one result per item in order, a generator's
outputs gathered into a list, a failure as a :class:`~spindle.Failure` with its
traceback, ``init`` run once (its teardown at ``aclose``) with
:func:`~spindle.worker_state` available in jobs, and ``reporter`` called after each
batch and at ``aclose``. A stage's ``timeout`` applies to async functions only (as
on the event loop); a sync function runs on the loop and cannot be interrupted.

A test puts it under a stage with ``spindle._core.stage.with_executor``::

    made = []
    def fake(spec):
        made.append(FakeExecutor(spec))
        return made[-1]

    stage = with_executor(spindle.thread(fn), fake)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._failure import Failure
from .._worker_state import _UNSET, STATE, InitScope
from ._reports import Report, ReportBook, Reporter, state_or_none
from .base import Executor, Outcome, WorkerSnapshot, init_failed
from .loop import timeout_failure
from .spec import WorkSpec

#: Called with each batch before it runs; awaited when it returns an awaitable.
Hold = Callable[[list[Any]], Awaitable[Any] | None]


class FakeExecutor(Executor):
    """Runs a stage's function inline on the caller's event loop, batch by batch.

    ``capacity`` (default: the stage's) is how many batches the stage runner keeps
    in flight; ``batch_size`` (default: the stage's ``batch_size``, else 1) is the
    size of every batch, within the stage's largest. What the fake saw is kept for
    assertions: ``batches`` (every batch, in the order it started), ``running``
    (batches between start and end now), ``started`` and ``closed`` (with
    ``cancelled``, the ``cancel`` argument of ``aclose``).
    """

    def __init__(
        self,
        spec: WorkSpec,
        *,
        hold: Hold | None = None,
        capacity: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = spec
        self.capacity = capacity or spec.capacity
        self._size = min(batch_size or spec.batch_size or 1, spec.max_batch)
        self.hold = hold
        self.batches: list[list[Any]] = []
        self.running = 0
        self.started = False
        self.closed = False
        self.cancelled: bool | None = None
        self._state: Any = _UNSET
        self._scope = InitScope(spec.init) if spec.init is not None else None
        self._reporter = Reporter(spec.reporter, spec.name) if spec.reporter else None
        self.reports = ReportBook(spec.name, spec.merge_reports) if spec.reporter else None

    def __repr__(self) -> str:
        return (
            f"<FakeExecutor {self.spec.name!r}: {len(self.batches)} batches, "
            f"{self.running} running>"
        )

    def batch_size(self) -> int:
        return self._size

    async def start(self) -> None:
        if self._scope is not None:
            try:
                self._state = await self._scope.enter()
            except Exception as exc:
                raise init_failed(self.spec.name, "in the fake executor", exc) from exc
        self.started = True

    async def run(self, items: list[Any]) -> Outcome:
        self.batches.append(list(items))
        self.running += 1
        try:
            if self.hold is not None:
                waiting = self.hold(items)
                if inspect.isawaitable(waiting):
                    await waiting
            token = STATE.set(self._state) if self._state is not _UNSET else None
            t0 = time.perf_counter()
            try:
                results, failures = await self._call_each(items)
            finally:
                if token is not None:
                    STATE.reset(token)
            seconds = time.perf_counter() - t0
        finally:
            self.running -= 1
        self._report()
        return Outcome(results, failures, seconds)

    async def _call_each(self, items: list[Any]) -> tuple[list[Any], int]:
        spec = self.spec
        timeout = spec.timeout if spec.is_async else None
        results: list[Any] = []
        failures = 0
        for item in items:
            try:
                if timeout is None:
                    results.append(await self._call(item))
                    continue
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        results.append(await self._call(item))
                except TimeoutError:
                    if not limit.expired():
                        raise
                    results.append(timeout_failure(item, timeout, spec.name))
                    failures += 1
            except Exception as exc:
                results.append(Failure.from_exception(item, exc, stage=spec.name))
                failures += 1
        return results, failures

    async def _call(self, item: Any) -> Any:
        fn = self.spec.fn
        if not self.spec.is_async:
            return list(fn(item)) if self.spec.flat else fn(item)
        return [y async for y in fn(item)] if self.spec.flat else await fn(item)

    def _report(self) -> None:
        if self._reporter is not None and self.reports is not None:
            report = self._reporter.make(state_or_none(self._state, _UNSET))
            if report is not None:
                self.reports.update(0, report)

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    def stats(self) -> dict[str, Any]:
        return {"workers": int(self.started and not self.closed)}

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        return [
            {
                "stage": self.spec.name,
                "index": 0,
                "pid": os.getpid(),
                "state": "busy" if self.running else "idle",
                "jobs": sum(map(len, self.batches)),
                "restarts": 0,
            }
        ]

    async def aclose(self, *, cancel: bool) -> None:
        self.closed = True
        self.cancelled = cancel
        self._report()  # the last report, before init's teardown
        if self._scope is not None:
            await self._scope.exit()
