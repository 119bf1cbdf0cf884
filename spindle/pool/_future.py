"""The executor's futures: ``concurrent.futures.Future``, lighter to hold by the million.

A program that submits a million small tasks holds a million futures, and what a
future costs then is mostly the garbage collector's: a standard ``Future`` is eleven
objects it tracks (the future, a ``threading.Condition`` with five bound methods and a
deque, two lists), and each full collection walks all of them. Measured here with
300,000 futures alive: 15 full collections took 3.0 s of a 5.7 s run, and
``Future.__init__`` was the costliest line of ``submit``.

A :class:`Future` of spindle's is two objects: the future and a condition that creates what it
needs on first use (its waiters' deque, the future's lists of waiters and callbacks),
which most futures never do: nobody waits on them before they are done, and they have
no callback. Everything else is the standard ``Future``'s own code, so ``wait``,
``as_completed``, ``asyncio.wrap_future`` and ``isinstance(f, Future)`` work unchanged
(CPython's ``FutureTests`` run against it: ``tests_cpython``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import InvalidStateError
from concurrent.futures._base import (  # the states, as the standard Future spells them
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
)
from typing import Any, TypeVar

__all__ = ["Future"]

_T = TypeVar("_T")
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


class _Condition(threading.Condition):
    """``threading.Condition`` over its own ``RLock``, holding no bound methods and no
    deque until a thread waits on it (the standard one makes six objects up front)."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:  # not super().__init__(): its objects are what is avoided
        self._lock = threading.RLock()
        self._queue: deque[Any] | None = None

    @property
    def _waiters(self) -> deque[Any]:
        queue = self._queue
        if queue is None:  # first use, with the lock held (wait and notify hold it)
            queue = self._queue = deque()
        return queue

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)  # type: ignore[arg-type]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _release_save(self) -> Any:
        return self._lock._release_save()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: Any) -> None:
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return self._lock._is_owned()  # type: ignore[attr-defined,no-any-return]

    def notify_all(self) -> None:
        if self._queue:
            self.notify(len(self._queue))


class Future(futures.Future[_T]):
    """A ``concurrent.futures.Future`` that is two objects until it is waited on.

    Named ``Future`` as the standard one is, since its ``repr`` (the standard one's)
    shows the class's name."""

    __slots__ = ("_callbacks", "_waiting")

    def __init__(self) -> None:  # not super().__init__(), for the same reason
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiting: list[Any] | None = None
        self._callbacks: list[Callable[[futures.Future[_T]], object]] | None = None

    # The standard code reads and appends to these two lists: they come into being
    # on first use, always with the condition held.

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
        return waiting

    @property
    def _done_callbacks(self) -> list[Callable[[futures.Future[_T]], object]]:
        callbacks = self._callbacks
        if callbacks is None:
            callbacks = self._callbacks = []
        return callbacks

    def _invoke_callbacks(self) -> None:
        if self._callbacks:
            super()._invoke_callbacks()  # type: ignore[misc]

    # set_result and set_exception as the standard ones, but touching the lists only
    # when they exist.

    def set_result(self, result: _T) -> None:
        with self._condition:
            if self._state in _DONE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
            if self._waiting:
                for waiter in self._waiting:
                    waiter.add_result(self)
            self._condition.notify_all()
        if self._callbacks:
            super()._invoke_callbacks()  # type: ignore[misc]

    def set_exception(self, exception: BaseException | None) -> None:
        with self._condition:
            if self._state in _DONE:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
            if self._waiting:
                for waiter in self._waiting:
                    waiter.add_exception(self)
            self._condition.notify_all()
        if self._callbacks:
            super()._invoke_callbacks()  # type: ignore[misc]
