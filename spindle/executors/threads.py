"""The thread executor: blocking functions on a pool of threads the stage owns.

::

    slot coroutine ──(items, future)──▶ SimpleQueue ──▶ thread: call_batch(fn, items)
          ▲                                                         │
          └──────────── loop.call_soon_threadsafe(set_result) ◀─────┘

A thread cannot be killed, so closing with ``cancel=True`` does not wait for a job
that is running: the thread finishes it in the background and exits (threads are
daemon threads for this reason alone, so that a stuck job cannot keep the
interpreter alive); every thread is otherwise joined.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .._failure import Failure
from ..policies.batching import AdaptiveBatch
from ._batch import call_batch
from .base import Executor, Outcome

_Job = tuple[list[Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class ThreadExecutor(Executor):
    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int,
        flat: bool,
        stage: str,
        batch_size: int | None = None,
    ) -> None:
        self.fn = fn
        self.workers = workers
        self.capacity = workers
        self.flat = flat
        self.stage = stage
        self._batching = AdaptiveBatch(target=0.001, max_size=256, fixed=batch_size)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def batch_size(self) -> int:
        return self._batching.size

    async def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"spindle-{self.stage}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        fn, flat, jobs = self.fn, self.flat, self._jobs
        clock = time.perf_counter
        while True:
            job = jobs.get()
            if job is None:
                return
            items, fut, loop = job
            t0 = clock()
            try:
                results, errors = call_batch(fn, items, flat)
                outcome: Any = (results, errors, clock() - t0)
            except BaseException as exc:  # reported to the awaiting slot, not swallowed
                outcome = exc
            try:
                loop.call_soon_threadsafe(_resolve, fut, outcome)
            except RuntimeError:  # the loop closed while a cancelled job ran on
                pass

    async def run(self, items: list[Any]) -> Outcome:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((items, fut, loop))
        results, errors, seconds = await fut
        self._batching.observe(len(items), seconds)
        for i, exc in errors.items():
            results[i] = Failure.from_exception(items[i], exc, stage=self.stage)
        return Outcome(results, len(errors))

    async def aclose(self, *, cancel: bool) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        # Without cancel, every slot has finished, so the threads are idle and exit at
        # once on the sentinel; with cancel, a thread stuck in a job is abandoned.
        for t in self._threads:
            t.join(timeout=0.2 if cancel else None)
        self._threads.clear()


def _resolve(fut: asyncio.Future[Any], outcome: Any) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
