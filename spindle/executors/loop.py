"""The event-loop executor: ``async def`` functions on the pipeline's own loop."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from .._errors import Timeout
from .._failure import Failure
from .._worker_state import _UNSET, STATE, InitScope
from ._reports import Report, ReportBook, Reporter, state_or_none
from .base import Executor, Outcome, WorkerSnapshot, init_failed
from .spec import WorkSpec


def timeout_failure(item: Any, seconds: float, stage: str, detail: str = "") -> Failure:
    """The failure of a job that ran past its stage's timeout."""
    msg = f"the job took longer than the timeout of {seconds:g} s{detail}"
    return Failure(item, "Timeout", msg, "", 1, stage, Timeout(msg))


class LoopExecutor(Executor):
    """Runs up to ``concurrency`` calls of an async function at once.

    Each in-flight call is one of ``capacity`` long-lived slot coroutines of the
    stage runner (the "worker coroutines" pattern), so no task is created per item.
    A call past the stage's timeout is cancelled and fails with ``Timeout``. With a
    stage ``reporter``, the loop is the one worker: it reports after a call at most
    once a second, and once more when the stage closes.
    """

    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec
        self.fn = spec.fn
        self.capacity = spec.concurrency
        self.flat = spec.flat
        self.timeout = spec.timeout
        self._state: Any = _UNSET
        self._scope = InitScope(spec.init) if spec.init is not None else None
        self._reporter: Reporter | None = None
        self.reports: ReportBook | None = None
        self._closed = False
        if spec.reporter is not None:
            self._reporter = Reporter(spec.reporter, spec.name)
            self.reports = ReportBook(spec.name, spec.merge_reports)

    async def start(self) -> None:
        if self.spec.setup is not None:
            self.spec.setup()
        if self._scope is None:
            return
        try:
            self._state = await self._scope.enter()
        except Exception as exc:  # the same error as a thread's or a process's init
            raise init_failed(self.spec.name, "on the event loop", exc) from exc

    async def _call(self, item: Any) -> Any:
        if self.flat:
            return [y async for y in self.fn(item)]
        return await self.fn(item)

    async def run(self, items: list[Any]) -> Outcome:
        results: list[Any] = []
        failures = 0
        token = STATE.set(self._state) if self._state is not _UNSET else None
        t0 = time.perf_counter()
        try:
            for item in items:
                try:
                    if self.timeout is None:
                        results.append(await self._call(item))
                        continue
                    limit = asyncio.timeout(self.timeout)
                    try:
                        async with limit:
                            results.append(await self._call(item))
                    except TimeoutError:
                        if not limit.expired():
                            raise
                        results.append(timeout_failure(item, self.timeout, self.spec.name))
                        failures += 1
                except Exception as exc:
                    results.append(Failure.from_exception(item, exc, stage=self.spec.name))
                    failures += 1
        finally:
            if token is not None:
                STATE.reset(token)
        seconds = time.perf_counter() - t0
        if self._reporter is not None and self._reporter.due():
            self._report()
        return Outcome(results, failures, seconds)

    def _report(self) -> None:
        assert self._reporter is not None and self.reports is not None
        report = self._reporter.make(state_or_none(self._state, _UNSET))
        if report is not None:
            self.reports.update(0, report)

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    def stats(self) -> dict[str, Any]:
        return {"workers": 0 if self._closed else 1}

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        return [
            {
                "stage": self.spec.name,
                "index": 0,
                "pid": os.getpid(),
                "state": "busy",
                "jobs": 0,
                "restarts": 0,
            }
        ]

    async def aclose(self, *, cancel: bool) -> None:
        self._closed = True
        if self._reporter is not None:
            self._report()  # the last report, before init's teardown
        if self._scope is not None:
            await self._scope.exit()
