"""The value a stage's ``init`` function returned, as seen from inside a job."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import ContextVar
from typing import Any

from ._errors import SpindleError

_UNSET: Any = object()
STATE: ContextVar[Any] = ContextVar("spindle_worker_state", default=_UNSET)


def worker_state() -> Any:
    """What this worker's ``init`` function returned (a model, a connection...).

    Each worker runs ``init`` once: each process of a cpu stage, each thread of a
    thread stage, the event loop of an io stage. Call this inside the job.
    """
    value = STATE.get()
    if value is _UNSET:
        raise SpindleError(
            "worker_state() is only available inside a job of a stage created with init="
        )
    return value


class InitScope:
    """Runs a stage's ``init`` in one worker, and its teardown when the worker stops.

    ``init`` may be a plain function (its return value is the state), a coroutine
    function (awaited), or a generator or async generator function that yields the
    state once: the code after ``yield`` is the teardown, run when the worker stops
    normally (not when it is killed), as with ``contextlib.contextmanager``::

        async def open_client():
            async with Client() as client:
                yield client
    """

    def __init__(self, init: Callable[[], Any]) -> None:
        self.init = init
        self._gen: Generator[Any, None, None] | None = None
        self._agen: AsyncGenerator[Any, None] | None = None

    @property
    def needs_loop(self) -> bool:
        return inspect.iscoroutinefunction(self.init) or inspect.isasyncgenfunction(self.init)

    def enter_sync(self) -> Any:
        if self.needs_loop:
            raise SpindleError(
                "an async init function needs an event loop: use it with an async job "
                "(kind='io', or an async function on kind='cpu')"
            )
        if inspect.isgeneratorfunction(self.init):
            self._gen = self.init()
            return next(self._gen)
        return self.init()

    def exit_sync(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            with contextlib.suppress(StopIteration):
                next(gen)
            gen.close()

    async def enter(self) -> Any:
        if inspect.isasyncgenfunction(self.init):
            self._agen = self.init()
            return await self._agen.__anext__()
        if inspect.iscoroutinefunction(self.init):
            return await self.init()
        return self.enter_sync()

    async def exit(self) -> None:
        agen, self._agen = self._agen, None
        if agen is not None:
            with contextlib.suppress(StopAsyncIteration):
                await agen.__anext__()
            await agen.aclose()
        self.exit_sync()
