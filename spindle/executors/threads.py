"""The thread executor: blocking functions on a pool of threads the stage owns.

::

    slot coroutine ──(items, future)──▶ SimpleQueue ──▶ thread: call_batch(fn, items)
          ▲                                                         │
          └──────────── loop.call_soon_threadsafe(set_result) ◀─────┘

With a stage ``reporter``, each thread makes its report itself, after a batch at
most once a second and once more when it stops, into the executor's ReportBook.

A thread cannot be killed. A job past the stage's timeout is therefore *abandoned*:
it fails with ``Timeout`` at once, a new thread takes the old one's place, and the
old thread exits when the job finally returns. Closing with ``cancel=True`` does not
wait for jobs that are running either. Threads are daemon threads for this reason
alone, so that a job stuck forever cannot keep the interpreter alive; every thread
is otherwise joined.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from typing import Any

from .._failure import Failure
from .._worker_state import _UNSET, STATE, InitScope
from ..policies.batching import AdaptiveBatch
from ._batch import call_batch
from ._reports import Report, ReportBook, Reporter, state_or_none
from .base import Executor, Outcome, WorkerSnapshot, init_failed
from .loop import timeout_failure
from .spec import WorkSpec

_Job = tuple[list[Any], asyncio.Future[Any], asyncio.AbstractEventLoop, list[threading.Thread]]


class ThreadExecutor(Executor):
    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec
        self.workers = spec.workers
        self.capacity = spec.workers
        self._batching = AdaptiveBatch(target=0.001, max_size=spec.max_batch, fixed=spec.batch_size)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._abandoned: set[threading.Thread] = set()
        self._numbers = itertools.count()
        self._started: asyncio.Future[None] | None = None
        self.abandoned = 0
        self.reports = (
            ReportBook(spec.name, spec.merge_reports) if spec.reporter is not None else None
        )

    def batch_size(self) -> int:
        return self._batching.size

    def stats(self) -> dict[str, Any]:
        alive = sum(t.is_alive() for t in self._threads)
        return {"workers": alive, "abandoned": self.abandoned}

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    async def start(self) -> None:
        if self.spec.setup is not None:  # once: the threads share this process
            self.spec.setup()
        loop = asyncio.get_running_loop()
        starts = [self._add_thread(loop) for _ in range(self.workers)]
        await asyncio.gather(*starts)

    def _add_thread(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        ready: asyncio.Future[None] = loop.create_future()
        t = threading.Thread(
            target=self._work,
            args=(loop, ready),
            name=f"spindle-{self.spec.name}-{next(self._numbers)}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()
        return ready

    def _work(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        spec = self.spec
        me = threading.current_thread()
        scope = InitScope(spec.init) if spec.init is not None else None
        if scope is not None:
            try:
                STATE.set(scope.enter_sync())
            except Exception as exc:
                err = init_failed(spec.name, "in a worker thread", exc)
                _call_soon(loop, _resolve, ready, err)
                return
        _call_soon(loop, _resolve, ready, None)
        reporter = None
        if spec.reporter is not None:
            reporter = Reporter(spec.reporter, spec.name)
        try:
            self._serve(loop, me, reporter)
        finally:
            if reporter is not None:
                self._report(me, reporter)  # the last report, before init's teardown
                assert self.reports is not None
                self.reports.end(me)
            if scope is not None:
                scope.exit_sync()

    def _report(self, me: threading.Thread, reporter: Reporter) -> None:
        report = reporter.make(state_or_none(STATE.get(), _UNSET))
        if report is not None:
            assert self.reports is not None
            self.reports.update(me, report)

    def _serve(
        self, loop: asyncio.AbstractEventLoop, me: threading.Thread, reporter: Reporter | None
    ) -> None:
        fn, flat, jobs = self.spec.fn, self.spec.flat, self._jobs
        clock = time.perf_counter
        while True:
            job = jobs.get()
            if job is None:
                return
            items, fut, job_loop, runner = job
            runner.append(me)
            t0 = clock()
            try:
                results, errors = call_batch(fn, items, flat)
                outcome: Any = (results, errors, clock() - t0)
                del results, errors
            except BaseException as exc:  # reported to the awaiting slot, not swallowed
                outcome = exc
            _call_soon(job_loop, _resolve, fut, outcome)
            # Not held while waiting for the next job (``del work_item`` in the
            # standard pool's workers): the caller may be waiting for them to go.
            del job, items, fut, outcome
            if reporter is not None and reporter.due():
                self._report(me, reporter)
            if me in self._abandoned:
                return  # a replacement took this thread's place while the job ran

    async def run(self, items: list[Any]) -> Outcome:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        runner: list[threading.Thread] = []
        self._jobs.put((items, fut, loop, runner))
        timeout = self.spec.timeout
        if timeout is None:
            results, errors, seconds = await fut
        else:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        results, errors, seconds = await asyncio.shield(fut)
                    break
                except TimeoutError:
                    if runner:  # started: it ran too long (if not, it waited: wait more)
                        return self._abandon(items, runner, timeout, loop)
        self._batching.observe(len(items), seconds)
        for i, exc in errors.items():
            results[i] = Failure.from_exception(items[i], exc, stage=self.spec.name)
        return Outcome(results, len(errors), seconds)

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        return [
            {
                "stage": self.spec.name,
                "index": i,
                "pid": None,
                "state": "dead"
                if not t.is_alive()
                else "abandoned"
                if t in self._abandoned
                else "busy",
                "jobs": 0,
                "restarts": 0,
            }
            for i, t in enumerate(self._threads)
        ]

    def _abandon(
        self,
        items: list[Any],
        runner: list[threading.Thread],
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> Outcome:
        self.abandoned += 1
        self._abandoned.add(runner[0])
        self._add_thread(loop)
        detail = "; a thread cannot be stopped, so the job was abandoned and runs on"
        failures = [timeout_failure(x, timeout, self.spec.name, detail) for x in items]
        return Outcome(list(failures), len(failures))

    async def aclose(self, *, cancel: bool) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        # Without cancel every slot has finished, so the threads are idle and exit at
        # once on the sentinel; with cancel, a thread stuck in a job is abandoned.
        for t in self._threads:
            if t in self._abandoned:
                continue
            t.join(timeout=0.2 if cancel else None)
        self._threads.clear()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop closed while an abandoned job ran on
        pass


def _resolve(fut: asyncio.Future[Any], outcome: Any) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
