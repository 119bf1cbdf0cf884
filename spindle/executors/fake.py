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
:func:`~spindle.worker_state` available in jobs, and ``reporter`` called at most once
a second and at ``aclose``. A stage's ``timeout`` applies to async functions only (as
on the event loop); a sync function runs on the loop and cannot be interrupted.

A test puts it under a stage with ``spindle._core.stage.with_executor``::

    made = []
    def fake(spec):
        made.append(FakeExecutor(spec))
        return made[-1]

    stage = with_executor(spindle.thread(fn), fake)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .base import Outcome, WorkerSnapshot
from .loop import LoopExecutor
from .spec import WorkSpec

#: Called with each batch before it runs; awaited when it returns an awaitable.
Hold = Callable[[list[Any]], Awaitable[Any] | None]


class FakeExecutor(LoopExecutor):
    """Runs a stage's function inline on the caller's event loop, batch by batch.

    It is the event loop's executor (:class:`~spindle.executors.loop.LoopExecutor`:
    the same calls, timeouts, failures, ``init`` and reports) that also takes plain
    functions and whole batches, and keeps what it saw. ``capacity`` (default: the
    stage's) is how many batches the stage runner keeps in flight; ``batch_size``
    (default: the stage's ``batch_size``, else 1) is the size of every batch, within
    the stage's largest. What the fake saw is kept for assertions: ``batches`` (every
    batch, in the order it started), ``running`` (batches between start and end now),
    ``started`` and ``closed`` (with ``cancelled``, the ``cancel`` argument of
    ``aclose``).
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
        super().__init__(spec)
        self.capacity = capacity or spec.capacity
        self._size = min(batch_size or spec.batch_size or 1, spec.max_batch)
        self.hold = hold
        self.batches: list[list[Any]] = []
        self.running = 0
        self.started = False
        self.cancelled: bool | None = None

    def __repr__(self) -> str:
        return (
            f"<FakeExecutor {self.spec.name!r}: {len(self.batches)} batches, "
            f"{self.running} running>"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def batch_size(self) -> int:
        return self._size

    async def start(self) -> None:
        await super().start()
        self.started = True

    async def run(self, items: list[Any]) -> Outcome:
        self.batches.append(list(items))
        self.running += 1
        try:
            if self.hold is not None:
                waiting = self.hold(items)
                if inspect.isawaitable(waiting):
                    await waiting
            return await super().run(items)
        finally:
            self.running -= 1

    async def _call(self, item: Any) -> Any:
        if self.spec.is_async:
            return await super()._call(item)
        fn = self.spec.fn
        return list(fn(item)) if self.spec.flat else fn(item)

    def stats(self) -> dict[str, Any]:
        return {"workers": int(self.started and not self._closed)}

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
        self.cancelled = cancel
        await super().aclose(cancel=cancel)
