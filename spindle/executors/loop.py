"""The event-loop executor: ``async def`` functions on the pipeline's own loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._failure import Failure
from .base import Executor, Outcome


class LoopExecutor(Executor):
    """Runs up to ``concurrency`` calls of an async function at once.

    Each in-flight call is one of ``capacity`` long-lived slot coroutines of the
    stage runner (the "worker coroutines" pattern), so no task is created per item.
    """

    def __init__(
        self, fn: Callable[[Any], Any], *, concurrency: int, flat: bool, stage: str
    ) -> None:
        self.fn = fn
        self.capacity = concurrency
        self.flat = flat
        self.stage = stage

    async def start(self) -> None:
        return None

    async def run(self, items: list[Any]) -> Outcome:
        fn = self.fn
        results: list[Any] = []
        failures = 0
        for item in items:
            try:
                if self.flat:
                    results.append([y async for y in fn(item)])
                else:
                    results.append(await fn(item))
            except Exception as exc:
                results.append(Failure.from_exception(item, exc, stage=self.stage))
                failures += 1
        return Outcome(results, failures)

    async def aclose(self, *, cancel: bool) -> None:
        return None
