"""``spindle.Executor``: a ``concurrent.futures.Executor`` on one long-lived spindle run.

::

    submit(fn, *args) ──(fn, args, kwargs)──▶ SimpleQueue ──source thread──▶ one-stage run
         │ pending[id(task)] = future                  (draws a task: future running,     │
         │                                              or skipped if it was cancelled)   │
         ▼                                                                                ▼
      Future ◀── set_result / set_exception ◀── collector thread ◀── (inputs, results) chunks

The executor does not pool workers itself: its tasks are the input of a run of the
engine's one-stage pipeline (``ordered=False``, ``on_error="yield"``, with inputs),
whose stage calls :func:`spindle.pool._calls.apply` on each task. So it has what every
run has: batches sent to supervised workers, a replacement for a worker that dies,
per-task timeouts, retries, ``stats()`` and ``snapshot()``.

- The run's input is a blocking iterator over a ``queue.SimpleQueue`` of tasks, read by
  the run's source thread a queue-full at a time (a :class:`ChunkedSource`), until the
  sentinel that :meth:`Executor.shutdown` puts. Drawing a task is where its future
  starts running (``set_running_or_notify_cancel``): a cancelled future's task is
  dropped there, which is ``concurrent.futures``' contract.
- The engine hands back each result beside the input object it came from, so the
  collector finds a task's future by the task's identity, with no id sent to workers.
  Whoever pops a task from ``pending`` owns its future: the collector, or the clean-up
  after the run ends, never both.
- The run starts on the first ``submit``, in the caller's thread: an executor made
  before a ``fork`` holds no thread, and worker processes are forked (when the process
  has no other thread) before spindle starts any thread of its own. That first submit
  waits until the workers are ready: the source's first chunk is a marker that passes
  through the stage untouched once its workers have started.
- Nothing here refers to the :class:`Executor` object: an executor that nobody holds
  is collected, which ends its run (a finalizer puts the sentinel), as does the
  interpreter's exit.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures import BrokenExecutor, Future
from typing import Any, Literal, ParamSpec, TypeVar

from .._core.pipeline import Pipeline, Results
from .._core.snapshot import RunSnapshot
from .._core.source import ChunkedSource
from .._core.stage import Stage, StageStats, make_stage
from .._errors import ConfigError, PipelineClosed, Timeout, Unpicklable, WorkerCrashed
from .._failure import Failure
from . import _calls, _future

__all__ = ["Executor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Put by ``shutdown`` after the last task: the run's input ends there.
_STOP: Any = object()
#: The input of the marker that tells the first ``submit`` the workers are ready.
_READY: Any = object()
#: Most tasks the source thread puts into the run as one chunk.
_DRAW = 1024


class _State:
    """What an executor shares with its threads: not the executor itself, so that an
    executor nobody holds can be collected (and its run ended)."""

    __slots__ = ("__weakref__", "broken", "cause", "lock", "pending", "queue", "shutdown", "taking")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: id(task) -> future, for every task not yet settled. The engine holds each
        #: task until it hands it back (which keeps its id its own); a task it drops
        #: (a stop) leaves with the run, and then no task can be submitted any more.
        #: One object per task less than a (task, future) pair: with many futures
        #: alive, the garbage collector's work per submit is what costs most.
        self.pending: dict[int, Future[Any]] = {}
        #: Held by the source while it takes a chunk of tasks, and by cancel_pending.
        self.taking = threading.Lock()
        self.shutdown = False
        #: Why the executor cannot take tasks any more (its run failed), else None.
        self.broken: str | None = None
        #: The error the run failed with, if it did.
        self.cause: BaseException | None = None

    def stop(self) -> None:
        """Take no more tasks; the run ends after those already submitted."""
        with self.lock:
            if not self.shutdown:
                self.shutdown = True
                self.queue.put(_STOP)

    @contextlib.asynccontextmanager
    async def release_source(self, _snapshot: Callable[[], RunSnapshot]) -> AsyncIterator[None]:
        """A service of the run: when the run ends, for whatever reason, its source
        thread stops waiting for tasks (the run joins that thread next)."""
        try:
            yield
        finally:
            self.queue.put(_STOP)

    def cancel_pending(self) -> None:
        """Cancel every future that has not started (the source then drops its task).
        The source takes no task meanwhile: what is cancelled is all that it had not
        taken, not some of it, in turns with the source."""
        with self.taking:
            for future in self.pending.copy().values():
                future.cancel()


#: Executors with a run going, told to stop when the interpreter exits (before it
#: joins non-daemon threads, as ``concurrent.futures`` does), so exit never hangs.
_LIVE: weakref.WeakSet[_State] = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    global _exiting
    _exiting = True
    for state in list(_LIVE):
        state.stop()


getattr(threading, "_register_atexit")(_at_exit)  # noqa: B009 - private, as concurrent.futures uses it


def _draw(state: _State) -> Iterator[list[Any]]:
    """The run's input: the readiness marker, then the submitted tasks, each drain of
    the queue as one chunk, until the sentinel."""
    yield [Failure(_READY, "", "", "")]  # passes through the stage untouched
    get, get_nowait, pending = state.queue.get, state.queue.get_nowait, state.pending
    taking = state.taking
    while True:
        chunk: list[Any] = []
        # The last task of a chunk is not held while waiting for the next one (so a
        # task's arguments go once its future has settled, as on the standard pools).
        task = future = None
        task = get()
        stop = False
        with taking:
            while True:
                if task is _STOP:
                    stop = True
                    break
                future = pending.get(id(task))
                if future is not None:
                    try:
                        running = future.set_running_or_notify_cancel()
                    except RuntimeError:  # failed meanwhile by terminate_workers()
                        running = False
                    if running:
                        chunk.append(task)
                    else:
                        pending.pop(id(task), None)
                if len(chunk) >= _DRAW:
                    break
                try:
                    task = get_nowait()
                except queue.Empty:
                    break
        if chunk:
            yield chunk
        if stop:
            return


def _settle(state: _State, chunks: Iterable[tuple[list[Any], list[Any]]]) -> None:
    """Settle each task's future from the run's ``(inputs, results)`` chunks."""
    pop = state.pending.pop
    task = result = future = None
    for inputs, results in chunks:
        for task, result in zip(inputs, results, strict=True):
            future = pop(id(task), None)
            if future is None:  # the readiness marker
                continue
            if type(result) is Failure:
                future.set_exception(_exception_of(result))
            else:
                future.set_result(result)
        # Not held while waiting for the next chunk: a settled task's arguments and
        # result belong to its future alone.
        del inputs, results
        task = result = future = None


#: spindle's own errors, which a failure names but may not carry as an object.
_OWN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (WorkerCrashed, Timeout, Unpicklable, PipelineClosed)
}


def _exception_of(failure: Failure) -> BaseException:
    """What a failed task's future raises: the task's own exception (same type, the
    worker's traceback as its cause), or spindle's error for a crash, a timeout or
    something that could not be pickled."""
    if failure.exception is None and (cls := _OWN_ERRORS.get(failure.error)) is not None:
        failure.exception = cls(failure.message)
    return failure.to_exception()


def _collect(
    state: _State,
    run: Iterator[tuple[list[Any], list[Any]]],
    first: list[tuple[list[Any], list[Any]]],
) -> None:
    """The collector thread: settle futures until the run ends, then what is left.

    ``first`` (the chunk with the readiness marker, which may hold the first tasks)
    comes in a list that this empties: the thread's arguments live as long as it
    does, and would keep those tasks alive."""
    error: BaseException | None = None
    try:
        _settle(state, [first.pop()])
        _settle(state, run)
    except BaseException as exc:  # the run failed: every future left fails with it
        error = exc
    _end(state, error)


def _end(state: _State, error: BaseException | None) -> None:
    """The run is over: cancel the futures that never started, fail the others."""
    with state.lock:
        rest = _close(state, error)
    _fail(rest, error)


def _close(state: _State, error: BaseException | None) -> list[Future[Any]]:
    """Mark the executor as ended (broken, unless it was shut down) and take every
    task left; call with the lock held."""
    if error is not None or not state.shutdown:
        state.broken = f"the executor's run stopped: {error!r}"
        state.cause = error
        state.shutdown = True
    rest = list(state.pending.values())
    state.pending.clear()
    _LIVE.discard(state)
    return rest


def _fail(rest: list[Future[Any]], error: BaseException | None) -> None:
    """Settle the futures of ``rest``: after a shutdown (no ``error``) those that never
    started are cancelled; after a failure every one fails with ``BrokenExecutor``
    caused by it, as on the standard pools."""
    for future in rest:
        if error is None and future.cancel():
            future.set_running_or_notify_cancel()  # wakes wait() and as_completed()
            continue
        if error is None:
            exc = BrokenExecutor("the executor was stopped before this task finished")
        else:
            exc = BrokenExecutor(f"the executor's run failed: {error!r}")
        exc.__cause__ = error
        with contextlib.suppress(futures.InvalidStateError, RuntimeError):
            if not future.running():
                future.set_running_or_notify_cancel()
            if not future.done():
                future.set_exception(exc)


def _result_or_cancel(future: Future[_T], timeout: float | None = None) -> _T:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # keep no reference to it in a traceback


class Executor(futures.Executor):
    """A ``concurrent.futures.Executor`` whose tasks run on a spindle run.

    Change one import (``from spindle import Executor`` in place of
    ``ProcessPoolExecutor``, or ``Executor(kind="thread")`` in place of
    ``ThreadPoolExecutor``) and keep ``submit``, ``map``, ``shutdown``, ``as_completed``,
    ``wait`` and ``loop.run_in_executor``. Differences from the standard library:

    - A worker that dies fails only the task it was running, with
      :class:`spindle.WorkerCrashed`; a replacement takes its place and the executor
      stays usable (the standard pool breaks, failing every pending future).
    - ``timeout=`` bounds each task: a task that runs longer fails with
      :class:`spindle.Timeout` and only its worker is replaced (a thread cannot be
      stopped, so a thread task is abandoned instead).
    - An argument or a result that cannot be pickled fails its own future with
      :class:`spindle.Unpicklable`.
    - ``retries=`` runs a failed task again, with backoff (see :func:`spindle.cpu`).
    - Small tasks are batched to the workers, so the default ``chunksize=1`` of
      ``map`` is already cheap per task. A task counts as running once the executor
      has taken it in, which may be a little before a worker starts it; ``cancel()``
      and ``shutdown(cancel_futures=True)`` cancel only the tasks not yet taken in.
    - Batches grow only while tasks are quick (under a millisecond for threads,
      20 ms for processes), so a slow task runs alone. Tasks that wait on one another
      (a barrier, an event another task sets) could still be caught in one batch
      behind each other: give them ``batch_size=1``, and each task goes to a worker
      on its own, as on the standard pools.
    - The workers start with the first ``submit``, which returns once they are ready
      (forking takes milliseconds; ``mp_context`` "spawn" or "forkserver" starts fresh
      interpreters, which takes longer).
    - ``terminate_workers()`` and ``kill_workers()`` both stop the workers at once:
      SIGTERM, then SIGKILL half a second later for a worker still alive.

    ``stats()`` and ``snapshot()`` show the run as they do for a pipeline.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        kind: Literal["cpu", "thread"] = "cpu",
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        retries: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if kind not in ("cpu", "thread"):
            raise ConfigError(f"kind must be 'cpu' or 'thread', not {kind!r}")
        # The context's start method, else the one the program set for multiprocessing
        # (set_start_method), else spindle's own choice.
        if mp_context is not None:
            method = mp_context.get_start_method()
        else:
            method = multiprocessing.get_start_method(allow_none=True)
        start_method = "auto" if method is None else "fork" if method == "fork" else "spawn"
        self._stage: Stage = make_stage(
            _calls.apply,
            kind,
            workers=max_workers,
            name=f"executor.{kind}",
            batch_size=batch_size,
            start_method=start_method if kind == "cpu" else "auto",
            timeout=timeout,
            retries=retries,
            init=None if initializer is None else _calls.Initializer(initializer, tuple(initargs)),
            max_jobs_per_worker=max_tasks_per_child,
        )
        self._pipeline = Pipeline([self._stage], ordered=False, on_error="yield")
        self._state = _State()
        self._results: Results | None = None
        self._collector: threading.Thread | None = None
        weakref.finalize(self, self._state.stop)

    def __repr__(self) -> str:
        return f"<spindle.Executor {self._stage.stats()!r}>"

    @property
    def kind(self) -> str:
        return self._stage.kind

    @property
    def max_workers(self) -> int:
        return self._stage.workers

    # -- submitting ------------------------------------------------------------------

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        state = self._state
        with state.lock:
            if state.broken is not None:
                raise BrokenExecutor(state.broken) from state.cause
            if state.shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[_T] = _future.Future()
            task = (fn, args, kwargs)
            state.pending[id(task)] = future
            state.queue.put(task)
            failed = self._start() if self._results is None else None
        if failed is not None:  # settled outside the lock: callbacks may submit
            rest, exc = failed
            _fail(rest, exc)
            if not isinstance(exc, Exception):
                raise exc
        return future

    def start(self) -> None:
        """Start the workers now rather than with the first ``submit`` (what
        ``spindle.Pool`` does, as ``multiprocessing.Pool`` starts its processes in its
        constructor). If they cannot start, the executor is broken: the next
        ``submit`` raises ``BrokenExecutor``, caused by the error."""
        state = self._state
        with state.lock:
            if self._results is not None or state.shutdown:
                return
            failed = self._start()
        if failed is not None:
            rest, exc = failed
            _fail(rest, exc)
            if not isinstance(exc, Exception):
                raise exc

    def _start(self) -> tuple[list[Future[Any]], BaseException] | None:
        """Start the run, in the caller's thread (see the module's docstring), with
        the lock held; if it cannot start, the tasks to fail and why."""
        state = self._state
        self._results = results = self._pipeline.run(
            ChunkedSource(_draw(state)), with_inputs=True, services=[state.release_source]
        )
        run = results.chunks_with_inputs()
        try:
            first = next(run)  # the readiness marker, once the workers have started
        except BaseException as exc:  # the workers could not start (init failed...)
            return _close(state, exc), exc
        _LIVE.add(state)
        self._collector = threading.Thread(
            target=_collect, args=(state, run, [first]), name="spindle-executor"
        )
        self._collector.start()
        return None

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[_T]:
        """Like ``map(fn, *iterables)``, the calls run by the workers: results in order.

        As in Python 3.14: ``timeout`` counts from this call; ``buffersize`` bounds the
        calls submitted ahead of the consumer, and the iterables are then read as the
        results are taken (without it, they are read whole now). ``chunksize`` sends
        that many calls as one task.

        With the default ``chunksize=1`` the first calls run one task each (one per
        worker, twice over); when the first is done within 5 ms, the calls are that
        quick and the rest go in chunks sized to take about 20 ms each (up to 1,024
        calls; with ``buffersize``, resized as the chunks report their time), which
        is what makes a map of tiny calls as fast as ``multiprocessing.Pool.map``. As
        with any chunk, a call in one waits for its chunk, and a worker that dies
        fails the whole chunk. Calls are never grouped on an executor with
        ``timeout``, ``retries`` or ``max_tasks_per_child``, which count tasks.
        """
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        calls = zip(*iterables, strict=False)
        if chunksize == 1:
            return _Mapping(self, fn, calls, timeout, buffersize).results()
        chunks = _chunked(calls, chunksize)
        tasks = ((fn, c, True) for c in chunks)
        lists = _Mapping(self, _calls.run_chunk, tasks, timeout, buffersize, grow=False)
        return itertools.chain.from_iterable(lists.results())

    def _groups_calls(self) -> bool:
        """Whether ``map`` may put several calls in one task: not when tasks are
        counted or bounded one by one (a timeout, retries, tasks per worker)."""
        stage = self._stage
        return (
            stage.timeout is None
            and stage.retry.retries == 0
            and stage.max_jobs_per_worker is None
        )

    # -- stopping --------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more tasks; with ``wait``, return when every task has settled and every
        thread and worker of the executor has ended. ``cancel_futures`` cancels the
        tasks not yet taken in."""
        state = self._state
        if cancel_futures:
            state.cancel_pending()
        state.stop()
        collector = self._collector
        if wait and collector is not None:
            collector.join()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        """``shutdown(wait=True)``; after a Ctrl-C (or any exception that is not an
        ``Exception``), the tasks not taken in are cancelled and the workers stopped
        first, so that leaving the block does not wait for the tasks running."""
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.terminate_workers()
        self.shutdown(wait=True)
        return False

    def terminate_workers(self) -> None:
        """Stop the workers now and shut down: tasks not taken in are cancelled, the
        others fail with ``BrokenExecutor``. Does not wait (``shutdown()`` does)."""
        state = self._state
        state.cancel_pending()
        state.stop()
        if self._results is not None:
            self._results.stop_intake(0.0)

    def kill_workers(self) -> None:
        """Like :meth:`terminate_workers` (a worker that outlives SIGTERM by half a
        second is killed)."""
        self.terminate_workers()

    # -- observing -------------------------------------------------------------------

    def stats(self) -> list[StageStats]:
        """The counters of the executor's stage (tasks done, failed, running...)."""
        return [self._stage.stats()]

    def snapshot(self) -> RunSnapshot | dict[str, Any]:
        """The run as plain data (see :meth:`spindle.Results.snapshot`); ``{}`` before
        the first task."""
        return self._pipeline.snapshot()


#: ``map``: a first call done within this many seconds makes the rest go in chunks.
_QUICK = 0.005
#: ``map``: seconds of work a chunk of calls is sized to take.
_CHUNK_SECONDS = 0.02
#: ``map``: most calls in one chunk.
_MAX_CHUNK = 1024


class _Mapping:
    """One ``Executor.map``: its tasks in order (a call each, or a chunk of calls),
    submitted ahead of the consumer (all of them, or ``buffersize`` calls' worth)."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        calls: Iterator[tuple[Any, ...]],
        timeout: float | None,
        buffersize: int | None,
        *,
        grow: bool = True,
    ) -> None:
        self.end_time = None if timeout is None else timeout + time.monotonic()
        self.fn = fn
        self.calls = calls
        self.buffersize = buffersize
        # A weak reference, so that the iterator does not keep the executor alive.
        self.executor = weakref.ref(executor)
        #: (future, calls in it; 0 for a task of one call, whose result is the value)
        self.tasks: deque[tuple[Future[Any], int]] = deque()
        self.ahead = 0  # calls submitted and not yet given to the consumer
        self.size = 1  # calls per task from now on
        workers = executor.max_workers
        self.workers = workers
        probes = 2 * workers if buffersize is None else min(2 * workers, buffersize)
        first = self._submit_calls(probes)
        if grow and first == 2 * workers and executor._groups_calls():
            # Not waited for under a timeout: the map's time is the caller's.
            self.size = self._measure(self.tasks[0][0], _QUICK if timeout is None else 0.0)
        self._refill()

    def _submit_calls(self, n: int | None) -> int:
        """Submit up to ``n`` calls (None: all), a task each; how many there were."""
        executor = self.executor()
        if executor is None:
            return 0
        submitted = 0
        for args in itertools.islice(self.calls, n):
            self.tasks.append((executor.submit(self.fn, *args), 0))
            submitted += 1
        self.ahead += submitted
        return submitted

    def _measure(self, first: Future[Any], wait: float) -> int:
        """Calls per chunk, from how soon the first call is done (1: not quick)."""
        started = time.monotonic()
        futures.wait([first], timeout=wait)
        elapsed = time.monotonic() - started
        if not first.done() or first.cancelled() or first.exception() is not None:
            return 1
        return self._chunk_size(max(elapsed, 1e-6))

    def _chunk_size(self, per_call: float) -> int:
        size = min(int(_CHUNK_SECONDS / per_call), _MAX_CHUNK)
        if self.buffersize is not None:  # room for a chunk per worker, twice over
            size = min(size, self.buffersize // (2 * self.workers))
        return max(size, 1)

    def _refill(self) -> None:
        """Submit what the buffer has room for (everything, without ``buffersize``)."""
        if self.size == 1:
            room = None if self.buffersize is None else self.buffersize - self.ahead
            if room is None or room > 0:
                self._submit_calls(room)
            return
        executor = self.executor()
        while executor is not None and (
            self.buffersize is None or self.ahead + self.size <= self.buffersize
        ):
            chunk = list(itertools.islice(self.calls, self.size))
            if not chunk:
                return
            self.tasks.append((executor.submit(_calls.run_calls, self.fn, chunk), len(chunk)))
            self.ahead += len(chunk)

    def _next_task(self) -> tuple[Future[Any], int]:
        """The next task in order; its calls leave the buffer, which is refilled."""
        task = self.tasks.popleft()
        self.ahead -= task[1] or 1
        if self.buffersize is not None:
            self._refill()
        return task

    def results(self) -> Iterator[Any]:
        try:
            while self.tasks:
                end = self.end_time
                timeout = None if end is None else end - time.monotonic()
                if not self.tasks[0][1]:  # one call: its value, held by nothing here
                    yield _result_or_cancel(self._next_task()[0], timeout)
                    continue
                calls = self.tasks[0][1]
                try:
                    values, seconds = _result_or_cancel(self._next_task()[0], timeout)
                except _calls.CallsStopped as stop:  # a call raised: what came before it
                    yield from stop.results
                    raise stop.error from stop.__cause__
                if self.buffersize is not None:  # later chunks sized by this one's time
                    self.size = self._chunk_size(max(seconds / calls, 1e-7))
                yield from values
        finally:
            for future, _ in self.tasks:
                future.cancel()


def _chunked(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk
