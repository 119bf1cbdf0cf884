"""``spindle.Pool``: ``multiprocessing.pool.Pool``'s API on a :class:`spindle.Executor`.

Each call becomes tasks of one executor, so a pool gets what an executor has: a
worker that dies fails only its own task (``WorkerCrashed``) and is replaced, small
tasks are batched to the workers, and ``stats()`` shows progress. What differs from
``multiprocessing``:

- ``imap`` and ``imap_unordered`` read their iterable as their results are taken,
  a bounded number of tasks ahead (``multiprocessing`` reads it all at once, into
  memory): read their results before ``join()``, which takes no more tasks. An
  exception that the iterable raises is still met in its place, as in
  ``multiprocessing``: after the results of the items read before it.
- ``map`` with no ``chunksize`` cuts its input in chunks as ``multiprocessing`` does
  (about four per worker), but of at most 4,096 items, so that its progress shows;
  ``imap``'s default ``chunksize`` is 1, which costs little here: tasks are batched.
- ``terminate()`` settles what was outstanding (cancelled, or failed with
  ``BrokenExecutor``) instead of leaving it waiting forever.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from concurrent.futures import CancelledError, Future
from typing import Any, Generic, TypeVar

from .._core.snapshot import RunSnapshot
from .._core.stage import StageStats
from . import _calls
from ._executor import Executor

__all__ = ["AsyncResult", "IMapIterator", "MapResult", "Pool"]

_T = TypeVar("_T")

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
#: Most tasks an ``imap`` has submitted and not yet handed to its consumer.
READ_AHEAD = 1024
#: Largest chunk ``map`` makes when no ``chunksize`` is given.
_MAX_AUTO_CHUNK = 4096

Callback = Callable[[Any], object] | None


def _failed(exc: Exception) -> Future[Any]:
    """A settled future that raises ``exc``: an error of the input, in the place of
    the task it could not make (as ``multiprocessing`` reports it)."""
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


class AsyncResult(Generic[_T]):
    """The result of :meth:`Pool.apply_async` (as ``multiprocessing``'s): ``get``,
    ``wait``, ``ready``, ``successful``. The callback (or error callback) runs in the
    executor's collector thread before the result is ready, as in ``multiprocessing``."""

    def __init__(self, callback: Callback = None, error_callback: Callback = None) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

    @classmethod
    def of(
        cls, future: Future[Any], callback: Callback, error_callback: Callback
    ) -> AsyncResult[Any]:
        result: AsyncResult[Any] = cls(callback, error_callback)
        future.add_done_callback(result._settle_from)
        return result

    def _settle_from(self, future: Future[Any]) -> None:
        if future.cancelled():
            self._set(False, CancelledError())
        elif (exc := future.exception()) is not None:
            self._set(False, exc)
        else:
            self._set(True, future.result())

    def _set(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        try:
            if success and self._callback is not None:
                self._callback(value)
            elif (
                not success
                and self._error_callback is not None
                and not isinstance(value, CancelledError)  # terminate(): no error to report
            ):
                self._error_callback(value)
        finally:
            self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> _T:
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value  # type: ignore[no-any-return]
        raise self._value


class MapResult(AsyncResult[list[_T]]):
    """The result of :meth:`Pool.map_async`: a list, ready when every chunk is done,
    or failed at the first chunk that fails (as in ``multiprocessing``)."""

    def __init__(
        self,
        chunks: list[Future[list[Any]]],
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> None:
        super().__init__(callback, error_callback)
        self._lock = threading.Lock()
        self._parts: list[list[Any] | None] = [None] * len(chunks)
        self._left = len(chunks)
        if not chunks:
            self._set(True, [])
        for i, future in enumerate(chunks):
            future.add_done_callback(lambda f, i=i: self._chunk_done(i, f))  # type: ignore[misc]

    def _chunk_done(self, i: int, future: Future[list[Any]]) -> None:
        failed = future.cancelled() or future.exception() is not None
        with self._lock:
            if self._left <= 0:  # already failed
                return
            if failed:
                self._left = -1
            else:
                self._parts[i] = future.result()
                self._left -= 1
                if self._left:
                    return
        if failed:
            exc = future.exception() if not future.cancelled() else CancelledError()
            self._set(False, exc)
        else:
            self._set(True, list(itertools.chain.from_iterable(self._parts)))  # type: ignore[arg-type]


class IMapIterator(Iterator[_T]):
    """The iterator of :meth:`Pool.imap` and :meth:`Pool.imap_unordered`: it reads the
    input as results are taken, at most :data:`READ_AHEAD` tasks ahead; ``next(timeout)``
    raises ``multiprocessing.TimeoutError`` when no result comes in time."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int,
        *,
        star: bool = False,
        ordered: bool = True,
        ahead: int = READ_AHEAD,
    ) -> None:
        self._submit = executor.submit
        self._fn = fn
        self._star = star
        self._chunked = chunksize > 1
        items = iter(iterable)
        self._calls: Iterator[Any] = (
            iter(lambda: list(itertools.islice(items, chunksize)), []) if self._chunked else items
        )
        self._ordered = ordered
        self._ahead = max(1, ahead // chunksize)
        self._futures: deque[Future[Any]] = deque()  # ordered: in input order
        self._done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()  # unordered
        self._in_flight = 0
        self._ready: deque[Any] = deque()
        self._exhausted = False
        self._fill()

    def _fill(self) -> None:
        while not self._exhausted and self._in_flight < self._ahead:
            try:
                call = next(self._calls)
            except StopIteration:
                self._exhausted = True
                return
            except Exception as exc:  # the input failed: its error is the last result
                self._exhausted = True
                future = _failed(exc)
            else:
                future = self._submit_call(call)
            self._in_flight += 1
            if self._ordered:
                self._futures.append(future)
            else:
                future.add_done_callback(self._done.put)

    def _submit_call(self, call: Any) -> Future[Any]:
        if self._chunked:
            return self._submit(_calls.run_chunk, self._fn, call, self._star)
        if self._star:
            return self._submit(self._fn, *call)
        return self._submit(self._fn, call)

    def __iter__(self) -> IMapIterator[_T]:
        return self

    def next(self, timeout: float | None = None) -> _T:
        if self._ready:
            return self._ready.popleft()  # type: ignore[no-any-return]
        self._fill()
        if not self._in_flight:
            raise StopIteration
        if self._ordered:
            future = self._futures[0]
            if not futures.wait([future], timeout).done:
                raise multiprocessing.TimeoutError
            self._futures.popleft()
        else:
            try:
                future = self._done.get(timeout=timeout)
            except queue.Empty:
                raise multiprocessing.TimeoutError from None
        self._in_flight -= 1
        self._fill()
        value = future.result()  # raises the task's exception in its place
        if not self._chunked:
            return value  # type: ignore[no-any-return]
        self._ready.extend(value)
        return self._ready.popleft()  # type: ignore[no-any-return]

    __next__ = next


class Pool:
    """``multiprocessing.pool.Pool``'s API on a :class:`spindle.Executor` (see the
    module's docstring for what differs). ``with Pool() as p:`` terminates the pool on
    leaving the block, as ``multiprocessing`` does: ``close()`` and ``join()`` first
    to let outstanding tasks finish."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ) -> None:
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._executor = Executor(
            processes,
            mp_context=context,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=maxtasksperchild,
        )
        self._processes = self._executor.max_workers
        self._state = _RUN
        # The workers start now, as multiprocessing's do: the initializer runs even in
        # a pool that is given no task. (A failed start leaves the executor broken:
        # the first call raises BrokenExecutor, with the cause.)
        self._executor.start()

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} state={self._state} pool_size={self._processes}>"

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    # -- one call ----------------------------------------------------------------------

    def apply(
        self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}
    ) -> _T:
        """``func(*args, **kwds)`` run by a worker; its result."""
        self._check_running()
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> AsyncResult[_T]:
        self._check_running()
        future = self._executor.submit(func, *args, **kwds)
        return AsyncResult.of(future, callback, error_callback)

    # -- many calls --------------------------------------------------------------------

    def map(
        self, func: Callable[[Any], _T], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[_T]:
        """``[func(x) for x in iterable]``, run by the workers."""
        return self._map_async(func, iterable, False, chunksize).get()

    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[_T]:
        """``[func(*args) for args in iterable]``, run by the workers."""
        return self._map_async(func, iterable, True, chunksize).get()

    def map_async(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult[_T]:
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult[_T]:
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Callback = None,
        error_callback: Callback = None,
    ) -> MapResult[_T]:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)  # type: ignore[arg-type]
            chunksize = min(chunksize + bool(extra), _MAX_AUTO_CHUNK)
        it = iter(items)
        reading = iter(lambda: list(itertools.islice(it, max(chunksize, 1))), [])
        chunks: list[Future[list[Any]]] = []
        while True:
            try:
                chunk = next(reading)
            except StopIteration:
                break
            except Exception as exc:  # the input failed: the result fails with its error
                chunks.append(_failed(exc))
                break
            chunks.append(self._executor.submit(_calls.run_chunk, func, chunk, star))
        return MapResult(chunks, callback, error_callback)

    def imap(
        self, func: Callable[[Any], _T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[_T]:
        """The results of ``func`` over ``iterable``, in order, as they come."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], _T], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator[_T]:
        """The results of ``func`` over ``iterable``, in the order they finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self, func: Callable[..., _T], iterable: Iterable[Any], chunksize: int, *, ordered: bool
    ) -> IMapIterator[_T]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        return IMapIterator(self._executor, func, iterable, chunksize, ordered=ordered)

    # -- stopping ----------------------------------------------------------------------

    def close(self) -> None:
        """Take no more work; ``join()`` then waits for what was given."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self) -> None:
        """Stop the workers now: outstanding tasks are cancelled or fail."""
        self._state = _TERMINATE
        self._executor.terminate_workers()
        self._executor.shutdown(wait=True)

    def join(self) -> None:
        """Wait for every task, and for the workers to end; after close() or terminate()."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    # -- observing ---------------------------------------------------------------------

    def stats(self) -> list[StageStats]:
        """The counters of the pool's tasks (a ``map`` counts its chunks)."""
        return self._executor.stats()

    def snapshot(self) -> RunSnapshot | dict[str, Any]:
        """The pool's run as plain data (see :meth:`spindle.Results.snapshot`)."""
        return self._executor.snapshot()
