"""The pipeline: stages joined by bounded channels, fed lazily, drained by the caller.

::

    caller's iterable ──source thread──▶ ch0 ──▶ stage 1 ──▶ ch1 ──▶ … ──▶ stage n ──▶ out
                                                   (all stages on one event loop)        │
    caller  ◀──────────────────── get_blocking / await get ◀─────────────────────────────┘

``run()`` runs the event loop in a thread of its own and hands results to the
caller's thread through ``out``; ``arun()`` runs the stages on the caller's own loop.
A synchronous iterable is always read in a thread, because reading it may block (a
file, a socket, standard input) and must not stall the loop; an async iterable is read
on the loop.

Every thread, task and process a run starts is joined before the iterator finishes,
whether it ends normally, by an exception (in a job, the source or the consumer), by
``close()``/``break`` or by Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from itertools import chain
from typing import Any, Literal

from .._errors import ConfigError
from .._failure import Failure
from ..executors._eventloop import new_event_loop
from ..executors.base import Executor
from .channel import Channel, ChannelClosed
from .runner import StageRunner
from .snapshot import RunSnapshot
from .source import ChunkedSource, feed, feed_chunks
from .stage import Stage, StageStats

OnError = Literal["raise", "yield"]
#: Something to run beside a pipeline on its loop: given the run's ``snapshot``
#: function, returns an async context manager (a display, a metrics server...).
Service = Callable[[Callable[[], RunSnapshot]], AbstractAsyncContextManager[Any]]
#: Capacity of the channel between the last stage and the caller.
OUTPUT_BUFFER = 8192
#: Seconds the caller waits for the source thread to finish after a stop; a source
#: blocked inside the user's iterable (stdin, a socket) cannot be interrupted.
_SOURCE_JOIN = 2.0
#: Times the loop thread runs the loop again after an exception escaped it, to let
#: the run clean up, before it gives up on the clean-up.
_ESCAPES = 100


class Pipeline:
    """A sequence of stages run as one bounded pipeline: the engine's.

    Users make :class:`spindle.Pipeline`, this class with journaled runs added (see
    ``spindle/_api.py``); the engine and the journal use this one.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        ordered: bool = True,
        on_error: OnError = "raise",
        buffer: int = OUTPUT_BUFFER,
    ) -> None:
        if not stages:
            raise ConfigError("a Pipeline needs at least one stage")
        for s in stages:
            if not isinstance(s, Stage):
                raise ConfigError(
                    f"Pipeline stages are made with spindle.io(), spindle.thread() or "
                    f"spindle.cpu(); got {type(s).__name__}"
                )
        if on_error not in ("raise", "yield"):
            raise ConfigError(f"on_error must be 'raise' or 'yield', not {on_error!r}")
        self.stages = list(stages)
        self.ordered = ordered
        self.on_error = on_error
        self.buffer = buffer
        self._last: _Execution | None = None

    def __repr__(self) -> str:
        names = " -> ".join(f"{s.name}({s.kind})" for s in self.stages)
        return f"<Pipeline {names}>"

    def run(
        self,
        items: Iterable[Any],
        *,
        with_inputs: bool = False,
        total: int | None = None,
        services: Sequence[Service] = (),
    ) -> Results:
        """A lazy iterator of the results of ``items`` (see :meth:`spindle.Pipeline.run`,
        which adds journaled runs to this one)."""
        ex = _Execution(self, items, with_inputs, total, services)
        self._last = ex
        return Results(ex)

    def arun(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        with_inputs: bool = False,
        total: int | None = None,
        services: Sequence[Service] = (),
    ) -> AsyncIterator[Any]:
        """Like :meth:`run`, as an async iterator on the running event loop."""
        ex = _Execution(self, items, with_inputs, total, services)
        self._last = ex
        return ex.aiterate()

    def snapshot(self) -> RunSnapshot | dict[str, Any]:
        """The latest run as plain data (see :meth:`Results.snapshot`)."""
        return self._last.snapshot() if self._last is not None else {}

    def stats(self) -> list[StageStats]:
        """Counters of each stage of the latest run."""
        return self._last.stats() if self._last is not None else []

    def bound(self) -> int:
        """The most items a run of this pipeline holds at once, whatever the input size.

        The sum of each stage's input buffer and in-flight window (tickets times
        the largest batch), plus the output buffer twice (the buffer, and the chunk
        the caller is iterating through). A flat-map stage multiplies what follows it by
        its outputs per input.
        """
        total = 2 * self.buffer
        for s in self.stages:
            capacity = s.capacity
            total += s.input_buffer + (2 * capacity + capacity) * s.max_batch
        return total


class Results(Iterator[Any]):
    """The lazy iterator of a run. ``close()`` (or leaving a ``for`` loop, or garbage
    collection) stops the run and every worker."""

    def __init__(
        self,
        ex: _Execution,
        run: Generator[Any, None, None] | None = None,
        *,
        with_inputs: bool | None = None,
    ) -> None:
        self._ex = ex
        self._tagged = ex.tagged if with_inputs is None else with_inputs
        # The run yields lists of results (with inputs: pairs of lists, inputs and
        # results, zipped here into pairs); chain walks each list in C, so the per-item
        # step of iterating costs no generator frame. ``run`` replaces the run's own
        # lists (a journaled run hands out what it records).
        self._run: Generator[Any, None, None] = ex.iterate() if run is None else run
        self._gen: Generator[list[Any], None, None] = (
            _pairs(self._run) if self._tagged else self._run
        )
        self._items: Iterator[Any] = chain.from_iterable(self._gen)

    @property
    def outcome(self) -> object | None:
        """What a journaled run recorded and skipped (see :mod:`spindle.journal`); None
        for a run without a journal."""
        return None

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def __next__(self) -> Any:
        return next(self._items)

    def chunks(self) -> Iterator[list[Any]]:
        """The results in lists, as they arrive (in order when the run is ordered).

        For consumers of many tiny results: a list at a time saves the per-item step of
        the iterator. Call it before taking any result; then iterate it instead of the
        results themselves.
        """
        if inspect.getgeneratorstate(self._gen) != inspect.GEN_CREATED:
            raise RuntimeError("chunks() must be called before the first result is taken")
        return self._gen

    def chunks_with_inputs(self) -> Iterator[tuple[list[Any], list[Any]]]:
        """A run ``with_inputs``: its results as ``(inputs, results)``, two lists of the
        same length, as they arrive. For consumers that take the inputs and the results
        apart anyway: no pair is built per item. Call it before taking any result."""
        if not self._tagged:
            raise RuntimeError("chunks_with_inputs() needs a run with with_inputs=True")
        if inspect.getgeneratorstate(self._run) != inspect.GEN_CREATED or (
            inspect.getgeneratorstate(self._gen) != inspect.GEN_CREATED
        ):
            raise RuntimeError(
                "chunks_with_inputs() must be called before the first result is taken"
            )
        return self._run

    def close(self) -> None:
        self._gen.close()
        self._run.close()

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> list[StageStats]:
        return self._ex.stats()

    def snapshot(self) -> RunSnapshot:
        """The run as plain data: elapsed, status, and per stage the counters and
        latency percentiles, the workers' states and the most recent failures."""
        return self._ex.snapshot()

    def stop_intake(self, grace: float = 5.0) -> None:
        """Take no more input; let jobs in flight finish for ``grace`` seconds, then
        cancel them. Safe to call from any thread, including a signal handler; the
        iterator then ends by itself once the run has drained."""
        self._ex.stop_intake(grace)

    @property
    def not_started(self) -> int:
        """Items read but dropped, unstarted, by :meth:`stop_intake`."""
        return self._ex.dropped


class _Execution:
    """One run of a pipeline: its channels, executors, runners and threads."""

    def __init__(
        self,
        pipeline: Pipeline,
        items: Any,
        with_inputs: bool,
        total: int | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        self.pipeline = pipeline
        self.items = items
        self.tagged = with_inputs
        self.total = total
        self.services = list(services)
        self.started_at: float | None = None
        self.status = "running"
        stages = pipeline.stages
        self.channels: list[Channel[Any]] = [
            Channel(s.input_buffer, name=f"{s.name}.in", tagged=with_inputs) for s in stages
        ]
        self.out: Channel[Any] = Channel(pipeline.buffer, name="out", tagged=with_inputs)
        self.executors: list[Executor] = [s.make_executor() for s in stages]
        self.runners: list[StageRunner] = []
        for i, (stage, ex) in enumerate(zip(stages, self.executors, strict=True)):
            last = i == len(stages) - 1
            nxt = self.out if last else self.channels[i + 1]
            stop = self._on_failure if last and pipeline.on_error == "raise" else None
            self.runners.append(
                StageRunner(
                    stage,
                    ex,
                    self.channels[i],
                    nxt,
                    ordered=pipeline.ordered,
                    tagged=with_inputs,
                    stop_at_failure=stop,
                )
            )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main_task: asyncio.Task[None] | None = None
        self.cancelled = False
        self.finishing = False
        self.source_thread: threading.Thread | None = None
        self.loop_thread: threading.Thread | None = None
        self.drawn = 0
        self.dropped = 0

    def stats(self) -> list[StageStats]:
        return [r.stats() for r in self.runners]

    def snapshot(self) -> RunSnapshot:
        """Plain data about the run; cheap, and safe to call from any thread (it only
        reads counters and copies small bounded buffers)."""
        started = self.started_at
        failures = sorted(
            (f for r in self.runners for f in list(r.recent_failures)), key=lambda f: f["time"]
        )[-50:]
        stages = [r.snapshot() for r in self.runners]
        snap: RunSnapshot = {
            "elapsed": 0.0 if started is None else time.monotonic() - started,
            "status": self.status,
            "total": self.total,
            "stages": stages,
            "workers": [w for ex in self.executors for w in ex.workers_snapshot()],
            "failures": failures,
        }
        # A stage's report may carry rows of a section of the whole run (a fetch
        # stage's "hosts"): the run's section gathers those of every stage.
        gathered: dict[str, Any] = snap  # type: ignore[assignment]
        caches = cache_rows(self.runners)
        if caches:
            gathered["caches"] = caches
        for stage, runner in zip(stages, self.runners, strict=True):
            report = stage.get("report")
            if report is None:
                continue
            for section in runner.stage.sections:
                rows = report.get(section)
                if isinstance(rows, list):
                    gathered.setdefault(section, []).extend(rows)
        return snap

    # -- the source ----------------------------------------------------------------

    def _read_source(self, iterable: Iterable[Any]) -> None:
        """The source thread: feed the first channel, item by item, until the end."""
        channel = self.channels[0]
        try:
            if isinstance(iterable, ChunkedSource):
                self.drawn = feed_chunks(channel, iterable, self, self.tagged)
                channel.close()
                return
            self.drawn = feed(channel, iter(iterable), self)
        except ChannelClosed:
            return
        except BaseException as exc:  # the user's iterable raised: stop the run with it
            self._fail_from_thread(exc)
            return
        channel.close()

    async def _read_async_source(self, iterable: AsyncIterable[Any]) -> None:
        channel = self.channels[0]
        try:
            async for x in iterable:
                await channel.put([x])
                self.drawn += 1
        except ChannelClosed:
            return
        channel.close()

    def _fail_from_thread(self, exc: BaseException) -> None:
        loop = self.loop
        if loop is None:
            self.out.close(exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._fail, exc)

    def _fail(self, exc: BaseException) -> None:
        self.out.close(exc)
        self._abort()

    def stop_intake(self, grace: float) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._stop_intake, grace)

    def _stop_intake(self, grace: float) -> None:
        self.status = "stopping"
        self.dropped += self.channels[0].discard()
        assert self.loop is not None
        self.loop.call_later(grace, self._abort)

    def _on_failure(self, failure: Failure) -> None:
        self._abort()

    def _abort(self) -> None:
        if self.finishing:  # already shutting down: let the clean-up finish
            return
        self.cancelled = True
        if self.main_task is not None and not self.main_task.done():
            self.main_task.cancel()

    # -- the main coroutine --------------------------------------------------------

    async def _main(self, async_source: AsyncIterable[Any] | None = None) -> None:
        self.main_task = asyncio.current_task()
        self.started_at = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        async with contextlib.AsyncExitStack() as services:
            try:
                for make in self.services:
                    await services.enter_async_context(make(self.snapshot))
                await asyncio.gather(*(ex.start() for ex in self.executors))
                if async_source is not None:
                    tasks.append(asyncio.create_task(self._read_async_source(async_source)))
                tasks.extend(asyncio.create_task(r.run()) for r in self.runners)
                await asyncio.gather(*tasks)
                self.status = "done" if self.status == "running" else "stopped"
            except asyncio.CancelledError:
                self.cancelled = True
                self.status = "stopped"
                self.out.close()
            except BaseException as exc:
                self.cancelled = True
                self.status = "failed"
                self.out.close(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self.finishing = True
                for t in tasks:
                    t.cancel()
                for ch in self.channels:
                    ch.close()  # releases a source thread waiting for room
                await _finish(asyncio.gather(*tasks, return_exceptions=True))
                closing = [ex.aclose(cancel=self.cancelled) for ex in self.executors]
                await _finish(asyncio.gather(*closing, return_exceptions=True))
                self.out.close()
                self._finish_runners()

    def _finish_runners(self) -> None:
        """Each stage keeps its final counters; the run's objects are let go."""
        for r in self.runners:
            r.finish()

    # -- synchronous iteration -----------------------------------------------------

    def _loop_main(self) -> None:
        loop = self.loop
        assert loop is not None
        main = loop.create_task(self._main())
        try:
            for _ in range(_ESCAPES):
                try:
                    loop.run_until_complete(main)
                    break
                except BaseException as exc:
                    # A BaseException that is not an Exception (a job's SystemExit)
                    # leaves the event loop at once, from whichever task raised it,
                    # and _main never hears of it: the run fails with it, and the
                    # loop runs again so that _main closes the workers.
                    if main.done():
                        break  # _main ended with it, after its clean-up
                    self.out.close(exc)
                    main.cancel()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def iterate(self) -> Generator[Any, None, None]:
        """The results, a list at a time (with inputs: ``(inputs, results)`` lists); the
        run stops when this generator is closed."""
        if isinstance(self.items, AsyncIterable) and not isinstance(self.items, Iterable):
            raise ConfigError("run() takes a synchronous iterable; use arun() for an async one")
        started = completed = False
        try:
            for ex in self.executors:
                ex.prepare()  # forks happen here, before spindle starts any thread
            self.loop = new_event_loop()
            self.out.coalesce_wakeups(self.loop)  # the caller's thread reads it
            self.loop_thread = threading.Thread(target=self._loop_main, name="spindle-loop")
            self.loop_thread.start()
            started = True
            source = threading.Thread(
                target=self._read_source, args=(self.items,), name="spindle-source", daemon=True
            )
            source.start()
            self.source_thread = source  # once started: _stop_sync joins it
            out = self.out
            if self.tagged:
                yield from _tagged_chunks(out)
            else:
                while chunks := out.get_chunks_blocking():
                    # Everything that arrived during one wait goes as one list: a consumer
                    # writing a list at a time then writes once per wake-up, not per chunk.
                    yield chunks[0] if len(chunks) == 1 else list(chain.from_iterable(chunks))
            completed = True
        finally:
            self._stop_sync(started, completed)

    def _stop_sync(self, started: bool, completed: bool) -> None:
        loop, thread = self.loop, self.loop_thread
        if started and loop is not None and thread is not None:
            # After the last result the run is closing its workers gracefully: wait
            # for that rather than cancel it; in any other case, cancel.
            if thread.is_alive() and not completed:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._abort)
            _join_uninterrupted(thread, None)
        else:
            for ex in self.executors:  # prepared (maybe forked) but never started
                _run_quietly(ex.aclose(cancel=True))
            self._finish_runners()
            if loop is not None and not loop.is_closed():
                loop.close()
        for ch in self.channels:
            ch.close()
        if self.source_thread is not None:
            _join_uninterrupted(self.source_thread, _SOURCE_JOIN)

    # -- asynchronous iteration ----------------------------------------------------

    async def aiterate(self) -> AsyncIterator[Any]:
        self.loop = asyncio.get_running_loop()
        for ex in self.executors:
            ex.prepare()
        async_source: AsyncIterable[Any] | None = None
        if isinstance(self.items, AsyncIterable):
            async_source = self.items
        else:
            self.source_thread = threading.Thread(
                target=self._read_source, args=(self.items,), name="spindle-source", daemon=True
            )
        main = asyncio.create_task(self._main(async_source))
        completed = False
        if self.source_thread is not None:
            self.source_thread.start()
        try:
            out = self.out
            if self.tagged:
                while tagged := await out.get_tagged_chunks():
                    for chunk, inputs in tagged:
                        for pair in zip(inputs, chunk, strict=True):
                            yield pair
            else:
                while chunks := await out.get_chunks():
                    for chunk in chunks:
                        for x in chunk:
                            yield x
            completed = True
        finally:
            if not main.done() and not completed:
                self._abort()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(main)
            for ch in self.channels:
                ch.close()
            if self.source_thread is not None:
                self.source_thread.join(_SOURCE_JOIN)


def cache_rows(runners: Iterable[StageRunner]) -> list[dict[str, Any]]:
    """The run's ``caches`` section: a row per cache its stages use, from the cache's
    own counters (those of every process of the machine), and the time one read of
    its shared memory takes here now (``get_us``: each snapshot reads one key, which
    counts nowhere)."""
    stages_of: dict[int, tuple[Any, list[str]]] = {}
    for r in runners:
        cache = r.stage.cache
        if cache is not None:
            stages_of.setdefault(id(cache), (cache, []))[1].append(r.stage.name)
    rows = []
    for cache, names in stages_of.values():
        try:
            get_us = cache.probe() * 1e6
            stats = cache.stats()
        except Exception:  # closed, or its directory gone: the row says nothing
            continue
        row: dict[str, Any] = {
            "path": stats.path,
            "stages": ", ".join(names),
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_rate": stats.hit_rate,
            "sets": stats.sets,
            "evictions": stats.evictions,
            "expired": stats.expired,
            "entries": stats.entries,
            "bytes_used": stats.bytes_used,
            "max_bytes": stats.max_bytes,
            "get_us": round(get_us, 2),
        }
        if stats.ring is not None:
            nodes = stats.ring.get("nodes", {})
            row["ring_members"] = len(nodes)
            row["ring_down"] = sum(not n.get("up") for n in nodes.values())
            medians = [
                n["latency_us"]["median"]
                for n in nodes.values()
                if n.get("latency_us", {}).get("median") is not None
            ]
            row["ring_get_us"] = max(medians) if medians else None
        rows.append(row)
    return rows


def _tagged_chunks(out: Channel[Any]) -> Iterator[tuple[list[Any], list[Any]]]:
    """The output of a tagged run as ``(inputs, results)`` lists, everything that
    arrived during one wait as one pair of lists."""
    while tagged := out.get_tagged_chunks_blocking():
        if len(tagged) == 1:
            results, inputs = tagged[0]
            del tagged
            yield inputs, results
            del inputs, results  # not held while waiting for the next
        else:
            pair = (
                list(chain.from_iterable(t for _, t in tagged)),
                list(chain.from_iterable(c for c, _ in tagged)),
            )
            del tagged
            yield pair
            del pair


def _pairs(columns: Generator[Any, None, None]) -> Generator[list[Any], None, None]:
    """``(input, result)`` pairs, a list at a time, of a tagged run's columns."""
    try:
        for inputs, results in columns:
            yield list(zip(inputs, results, strict=True))
    finally:
        columns.close()


async def _finish(fut: asyncio.Future[Any]) -> None:
    """Await clean-up to its end, even if this task is cancelled meanwhile."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(fut)


def _join_uninterrupted(thread: threading.Thread, timeout: float | None) -> None:
    """Join a thread even if a KeyboardInterrupt arrives meanwhile (then re-raise it)."""
    interrupted: BaseException | None = None
    while True:
        try:
            thread.join(timeout)
            break
        except KeyboardInterrupt as exc:  # keep joining: leaving now would orphan workers
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _run_quietly(coro: Any) -> None:
    loop = new_event_loop()
    try:
        loop.run_until_complete(coro)
    except Exception:
        pass
    finally:
        loop.close()
