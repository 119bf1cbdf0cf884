"""The Ray actors that run a stage's batches: the worker's side of the Ray executor.

An actor is a long-lived worker process somewhere in the Ray cluster. The driver's
executor (``spindle.executors.ray``) makes ``workers`` of them for a run and sends each
whole batches, as the process executor sends its workers frames::

    driver (event loop)                              actor (a Ray worker process)
    ───────────────────                              ────────────────────────────
    start() ────────────────────────────────────────▶ init(); (pid, node id) or the error
    run(ident, pickled items) ──────────────────────▶ call_batch(fn, items)
          ◀──── (OK, encode_result(...), report or None) or (BAD, why) ──┘
    progress() (sync actors with a timeout) ─────────▶ (batch, item, seconds on it)
    stop() ─────────────────────────────────────────▶ last report, init's teardown

Items travel pickled by the driver and results pickled by the actor (the same
``encode_result`` as a worker process), so an item or a result that cannot be pickled
fails alone, as it does on local workers, and Ray moves only bytes: small ones inline
with the call, large ones (over 100 KiB) through the object store.

A sync function runs on a sync actor, one batch at a time (Ray runs an actor's calls
from one caller in order, so the second batch sent waits in the actor's queue, as a
prefetched frame waits in a worker's socket). With a timeout, each item is noted in a
small progress slot, read by ``progress()`` from a second thread of the actor (its own
concurrency group), so a stuck item can be found and its actor killed. An ``async
def`` function runs on an async actor, up to ``concurrency`` calls at once on its
event loop, each with the timeout as a deadline.

This module is imported in every actor process: it imports nothing of spindle but the
worker's own pieces, which load no engine, terminal or HTTP code.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import pickle
import sys
import time
from typing import Any

import ray

from .._errors import Timeout
from .._worker_state import _UNSET, STATE, InitScope
from ._batch import call_batch
from ._reports import Reporter, state_or_none
from ._worker import (
    PROGRESS,
    PROTOCOL,
    WorkerConfig,
    call_batch_tracked,
    encode_error,
    encode_result,
    own_memory,
)

#: ``run`` answers: the batch ran (its encoded results follow), or its items could not
#: be unpickled here (why follows).
OK, BAD = 0, 1
#: What ``start`` answers: ``(READY, pid, node id, None)`` or ``(FATAL, pid, node id,
#: (error type, message, traceback))`` when ``init`` failed or the function could not
#: be loaded.
READY, FATAL = "ready", "fatal"

Answer = tuple[int, Any, bytes | None]


def _load(blob: bytes) -> WorkerConfig:
    """The stage's config, unpickled once the driver's ``sys.path`` entries that exist
    on this node are on this process's path (so the function's module imports as it
    did in the driver)."""
    paths, config_blob = pickle.loads(blob)
    for path in reversed(paths):
        if path not in sys.path and (path == "" or os.path.isdir(path)):
            sys.path.insert(0, path)
    config = pickle.loads(config_blob)
    if not isinstance(config, WorkerConfig):
        raise TypeError(f"expected a WorkerConfig, got {type(config).__name__}")
    return config


def _where() -> tuple[int, str]:
    return os.getpid(), ray.get_runtime_context().get_node_id()


class _Base:
    """What sync and async actors share: the config, the state, reports."""

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._config: WorkerConfig | None = None
        self._state: Any = _UNSET
        self._scope: InitScope | None = None
        self._reporter: Reporter | None = None

    def _configure(self) -> WorkerConfig:
        config = _load(self._blob)
        self._config = config
        setup = getattr(config, "setup", None)  # what every job of the run reaches
        if setup is not None:
            setup()
        if config.init is not None:
            self._scope = InitScope(config.init)
        if config.reporter is not None:
            self._reporter = Reporter(config.reporter, config.stage)
        return config

    def _report(self, last: bool = False) -> bytes | None:
        """A report when one is due (and has changed); the ``last`` one always."""
        reporter = self._reporter
        if reporter is None or not (last or reporter.due()):
            return None
        state = state_or_none(self._state, _UNSET)
        if not last:
            return reporter.encode(state)
        report = reporter.make(state)
        if report is None:
            return None
        try:
            return pickle.dumps(report, protocol=PROTOCOL)
        except Exception:
            return None

    def _rss(self) -> int | None:
        assert self._config is not None
        limit = self._config.memory_limit
        return None if limit is None else own_memory(limit)

    @staticmethod
    def _fatal(stage: str, exc: BaseException) -> tuple[str, int, str, Any]:
        pid, node = _where()
        return FATAL, pid, node, (stage, *encode_error(exc)[:3])


class SyncBatchActor(_Base):
    """Runs a sync function over batches, one batch at a time."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(blob)
        self._progress: mmap.mmap | None = None

    def start(self) -> tuple[str, int, str, Any]:
        try:
            config = self._configure()
        except Exception as exc:
            return self._fatal("load", exc)
        if config.timeout is not None:
            self._progress = mmap.mmap(-1, PROGRESS.size)
        if self._scope is not None:
            try:
                self._state = self._scope.enter_sync()
            except Exception as exc:
                return self._fatal("init", exc)
        pid, node = _where()
        return READY, pid, node, None

    def run(self, ident: int, payload: bytes) -> Answer:
        config = self._config
        assert config is not None
        try:
            items = pickle.loads(payload)
        except Exception as exc:
            return BAD, f"{type(exc).__name__}: {exc}", None
        del payload
        token = STATE.set(self._state) if self._state is not _UNSET else None
        clock = time.perf_counter
        t0 = clock()
        try:
            if self._progress is None:
                results, errors = call_batch(config.fn, items, config.flat)
            else:
                results, errors = call_batch_tracked(
                    config.fn, items, config.flat, self._progress, ident
                )
        finally:
            if token is not None:
                STATE.reset(token)
        seconds = clock() - t0
        data = encode_result(items, results, errors, seconds, self._rss())
        return OK, data, self._report()

    def stop(self) -> bytes | None:
        """The last report, then ``init``'s teardown; the driver kills the actor after."""
        report = self._report(last=True)
        if self._scope is not None:
            self._scope.exit_sync()
        return report


class TrackedBatchActor(SyncBatchActor):
    """A sync actor whose progress can be read while it runs a batch (a stage with a
    timeout): ``progress`` runs on a thread of its own."""

    @ray.method(concurrency_group="control")  # type: ignore[untyped-decorator,unused-ignore]
    def progress(self) -> tuple[int, int, float]:
        """``(batch id, item index, seconds the item has run)`` of the item running now
        (batch id 0 before the first)."""
        slot = self._progress
        if slot is None:
            return 0, 0, 0.0
        ident, index, started = PROGRESS.unpack_from(slot, 0)
        return ident, index, (time.monotonic() - started) if ident else 0.0


class AsyncBatchActor(_Base):
    """Runs an ``async def`` function; Ray runs up to ``concurrency`` calls at once."""

    async def start(self) -> tuple[str, int, str, Any]:
        try:
            self._configure()
        except Exception as exc:
            return self._fatal("load", exc)
        if self._scope is not None:
            try:
                self._state = await self._scope.enter()
            except Exception as exc:
                return self._fatal("init", exc)
        pid, node = _where()
        return READY, pid, node, None

    async def _call(self, x: Any) -> Any:
        config = self._config
        assert config is not None
        fn, flat = config.fn, config.flat
        if config.timeout is None:
            return [y async for y in fn(x)] if flat else await fn(x)
        deadline = asyncio.timeout(config.timeout)
        try:
            async with deadline:
                return [y async for y in fn(x)] if flat else await fn(x)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise Timeout(f"the job took longer than the timeout of {config.timeout:g} s") from None

    async def run(self, ident: int, payload: bytes) -> Answer:
        try:
            items = pickle.loads(payload)
        except Exception as exc:
            return BAD, f"{type(exc).__name__}: {exc}", None
        if self._state is not _UNSET:
            STATE.set(self._state)  # this call's own context: no reset needed
        t0 = time.perf_counter()
        results: list[Any] = []
        errors: dict[int, BaseException] = {}
        if len(items) == 1:  # the usual batch of an async stage: no gather
            try:
                results.append(await self._call(items[0]))
            except Exception as exc:
                errors[0] = exc
                results.append(None)
        else:
            outcomes = await asyncio.gather(*map(self._call, items), return_exceptions=True)
            for i, value in enumerate(outcomes):
                if isinstance(value, BaseException):
                    if not isinstance(value, Exception):
                        raise value
                    errors[i] = value
                    value = None
                results.append(value)
        seconds = time.perf_counter() - t0
        data = encode_result(items, results, errors, seconds, self._rss())
        return OK, data, self._report()

    async def stop(self) -> bytes | None:
        report = self._report(last=True)
        if self._scope is not None:
            await self._scope.exit()
        return report


def pack_config(config_blob: bytes) -> bytes:
    """What every actor of a stage gets: the driver's ``sys.path`` and the cloudpickled
    :class:`WorkerConfig`."""
    return pickle.dumps((list(sys.path), config_blob), protocol=PROTOCOL)
