"""The main function of a worker process.

A worker owns one end of a socket pair; the parent owns the other (see ``_wire``).
It announces itself with READY, then answers each BATCH with one RESULT, until STOP
or until the parent's end closes. It never decides anything about retries or
ordering: the parent's supervisor does. When the stage has a reporter, it also sends
a REPORT now and then (after a batch, or from a timer on its event loop) and a last
one after STOP (see ``_reports``).

A worker ignores SIGINT: a Ctrl-C in a terminal reaches the whole process group, and
it is the parent that decides how the run stops (drain, then cancel). On Linux the
worker also asks the kernel to kill it if the parent dies, so no worker outlives a
parent killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import Timeout
from .._failure import short_repr
from .._worker_state import _UNSET, STATE, InitScope
from . import _wire
from ._batch import call_batch
from ._reports import Reporter, ReporterFn, state_or_none

#: Layout of a worker's progress slot: batch id, index in the batch, start time
#: (``time.monotonic()``, the same clock in every process). Written before each item
#: when the stage has a timeout, read by the parent's watchdog.
PROGRESS = struct.Struct("qqd")
#: Bytes an async worker reads from the parent at once (many small frames).
_READ_SIZE = 1 << 16

PROTOCOL = 5

# (type name, message, traceback text, pickled exception or None)
EncodedError = tuple[str, str, str, bytes | None]


@dataclass
class WorkerConfig:
    """What a worker needs to run a stage's function."""

    fn: Callable[[Any], Any]
    flat: bool
    is_async: bool
    concurrency: int
    stage: str
    timeout: float | None = None
    init: Callable[[], Any] | None = None
    #: The stage's ``setup`` (see :class:`~spindle.executors.spec.WorkSpec`).
    setup: Callable[[], Any] | None = None
    #: ``max_memory_per_worker``: the worker reports its own memory after each batch.
    memory_limit: int | None = None
    reporter: ReporterFn | None = None


def encode_error(exc: BaseException) -> EncodedError:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    blob: bytes | None
    try:
        blob = pickle.dumps(exc, protocol=PROTOCOL)
        pickle.loads(blob)  # many exceptions pickle but cannot be rebuilt: check now
    except BaseException:
        blob = None
    return type(exc).__name__, str(exc), text, blob


def encode_result(
    items: list[Any],
    results: list[Any],
    errors: dict[int, BaseException],
    seconds: float,
    rss: int | None = None,
) -> bytes:
    """Pickle a batch's results; a result that cannot be pickled fails its item alone."""
    encoded = {i: encode_error(e) for i, e in errors.items()}
    try:
        return pickle.dumps((results, encoded, seconds, rss), protocol=PROTOCOL)
    except BaseException:  # a __reduce__ may raise anything, SystemExit included
        pass
    for i, value in enumerate(results):
        if i in encoded:
            continue
        try:
            pickle.dumps(value, protocol=PROTOCOL)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # SystemExit...: the item's own error
                results[i] = None
                encoded[i] = encode_error(exc)
                continue
            results[i] = None
            msg = (
                f"the result of item {short_repr(items[i])} cannot be pickled to return it "
                f"from the worker process ({type(exc).__name__}: {exc}); return plain data "
                "(str, numbers, lists, dicts, dataclasses) or use kind='thread'"
            )
            encoded[i] = ("Unpicklable", msg, "", None)
    return pickle.dumps((results, encoded, seconds, rss), protocol=PROTOCOL)


class _Sender:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, op: int, ident: int, payload: bytes = b"") -> None:
        self._sock.sendall(b"".join(_wire.frame(op, ident, payload)))


def _reporter(config: WorkerConfig) -> Reporter | None:
    if config.reporter is None:
        return None
    return Reporter(config.reporter, config.stage)


def _report(reporter: Reporter, send: Callable[[int, int, bytes], None]) -> None:
    """Send the stage's report of this worker, unless it failed or has not changed."""
    payload = reporter.encode(state_or_none(STATE.get(), _UNSET))
    if payload is not None:
        send(_wire.OP_REPORT, 0, payload)


def current_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def own_memory(limit: int) -> int:
    """The resident memory this worker holds alone, in bytes, as far as ``limit`` needs.

    Why not RSS alone: a forked worker's RSS counts every page it still shares with its
    parent, so a parent holding 1 GB would make each forked worker look 1 GB big and be
    retired after every batch. RSS is cheap to read and never below the private part,
    so the private part (``Private_*`` of ``/proc/self/smaps_rollup``, about a
    millisecond for a large process) is read only when RSS is over the limit.
    """
    rss = current_rss()
    if rss < limit:
        return rss
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            private = sum(int(line.split()[1]) for line in f if line.startswith(b"Private_"))
    except (OSError, ValueError, IndexError):  # no smaps_rollup (not Linux, or before 4.14)
        return rss
    return private * 1024


def call_batch_tracked(
    fn: Callable[[Any], Any], items: list[Any], flat: bool, progress: mmap.mmap, ident: int
) -> tuple[list[Any], dict[int, BaseException]]:
    """Like :func:`call_batch`, writing which item runs since when into ``progress``."""
    write = PROGRESS.pack_into
    clock = time.monotonic
    results: list[Any] = []
    errors: dict[int, BaseException] = {}
    for i, item in enumerate(items):
        write(progress, 0, ident, i, clock())
        try:
            results.append(list(fn(item)) if flat else fn(item))
        except BaseException as exc:  # SystemExit too, as in call_batch
            errors[i] = exc
            results.append(None)
    return results, errors


def _serve_sync(sock: socket.socket, config: WorkerConfig, progress: mmap.mmap | None) -> None:
    reader = _wire.FrameReader(sock)
    out = _Sender(sock)
    fn, flat = config.fn, config.flat
    reporter = _reporter(config)
    out.send(_wire.OP_READY, 0, pickle.dumps(os.getpid()))
    clock = time.perf_counter
    while True:
        msg = reader.read()
        if msg is None:
            return
        op, ident, payload = msg
        if op == _wire.OP_STOP:
            if reporter is not None:
                _report(reporter, out.send)  # the last report, before init's teardown
            return
        if op != _wire.OP_BATCH:
            continue
        try:
            items = pickle.loads(payload)
        except Exception as exc:
            out.send(_wire.OP_BAD_BATCH, ident, pickle.dumps(f"{type(exc).__name__}: {exc}"))
            continue
        t0 = clock()
        if progress is None:
            results, errors = call_batch(fn, items, flat)
        else:
            results, errors = call_batch_tracked(fn, items, flat, progress, ident)
        seconds = clock() - t0
        rss = None if config.memory_limit is None else own_memory(config.memory_limit)
        out.send(_wire.OP_RESULT, ident, encode_result(items, results, errors, seconds, rss))
        # Not held while waiting for the next batch: an argument's finalizer runs once
        # its task is done, as in the standard pool's workers.
        del items, results, errors, payload, msg
        if reporter is not None and reporter.due():
            _report(reporter, out.send)


async def _serve_async(sock: socket.socket, config: WorkerConfig) -> None:
    """An event loop in the worker: up to ``concurrency`` calls in flight at once."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    fn, flat = config.fn, config.flat
    limit = asyncio.Semaphore(config.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    # Frames sent in one turn of the loop leave in one write: with many short jobs in
    # flight, several finish per turn, and a system call per frame would cost more
    # than the jobs themselves.
    out: list[bytes] = []
    flush_due = False

    def flush() -> None:
        nonlocal out, flush_due
        flush_due = False
        if out:
            frames, out = out, []
            writer.writelines(frames)

    def send(op: int, ident: int, payload: bytes) -> None:
        nonlocal flush_due
        out.extend(_wire.frame(op, ident, payload))
        if not flush_due:
            flush_due = True
            loop.call_soon(flush)

    async def call(x: Any) -> Any:
        async with limit:
            if config.timeout is None:
                return [y async for y in fn(x)] if flat else await fn(x)
            deadline = asyncio.timeout(config.timeout)
            try:
                async with deadline:
                    return [y async for y in fn(x)] if flat else await fn(x)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise Timeout(
                    f"the job took longer than the timeout of {config.timeout:g} s"
                ) from None

    async def run_batch(ident: int, items: list[Any]) -> None:
        t0 = time.perf_counter()
        results: list[Any] = []
        errors: dict[int, BaseException] = {}
        if len(items) == 1:  # the usual batch of an async stage: no gather, no extra task
            try:
                results.append(await call(items[0]))
            except Exception as exc:
                errors[0] = exc
                results.append(None)
        else:
            outcomes = await asyncio.gather(*(call(x) for x in items), return_exceptions=True)
            for i, value in enumerate(outcomes):
                if isinstance(value, BaseException):
                    if not isinstance(value, Exception):
                        raise value
                    errors[i] = value
                    results.append(None)
                else:
                    results.append(value)
        seconds = time.perf_counter() - t0
        rss = None if config.memory_limit is None else own_memory(config.memory_limit)
        send(_wire.OP_RESULT, ident, encode_result(items, results, errors, seconds, rss))

    scope = InitScope(config.init) if config.init is not None else None
    if scope is not None:
        try:
            STATE.set(await scope.enter())
        except Exception as exc:
            send(_wire.OP_FATAL, 0, pickle.dumps(("init", *encode_error(exc)[:3])))
            flush()
            return
    reporter = _reporter(config)
    timer: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal timer
        assert reporter is not None
        _report(reporter, send)
        timer = loop.call_later(reporter.every, tick) if reporter.fn is not None else None

    send(_wire.OP_READY, 0, pickle.dumps(os.getpid()))
    if reporter is not None:
        timer = loop.call_later(reporter.every, tick)
    # Frames are parsed from whatever one read returns: with many single-item batches
    # in flight, one await takes many frames instead of two awaits a frame.
    parser = _wire.FrameParser()
    try:
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except ConnectionError:
                return
            if not data:
                return
            for op, ident, payload in parser.feed(data):
                if op == _wire.OP_STOP:
                    if tasks:
                        await asyncio.gather(*tasks)
                    if reporter is not None:
                        _report(reporter, send)  # the last report, before init's teardown
                        flush()
                        with contextlib.suppress(ConnectionError):
                            await writer.drain()
                    return
                if op != _wire.OP_BATCH:
                    continue
                try:
                    items = pickle.loads(payload)
                except Exception as exc:
                    msg = pickle.dumps(f"{type(exc).__name__}: {exc}")
                    send(_wire.OP_BAD_BATCH, ident, msg)
                    continue
                task = asyncio.create_task(run_batch(ident, items))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        if timer is not None:
            timer.cancel()
        for task in tasks:
            task.cancel()
        if scope is not None:
            with contextlib.suppress(Exception):
                await scope.exit()
        flush()
        writer.close()


def _prepare_process() -> None:
    """Signals and parent-death handling common to forked and spawned workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - unusual libc
            pass


def serve(sock: socket.socket, config: WorkerConfig, progress: mmap.mmap | None) -> None:
    """Run the worker loop on ``sock`` until STOP or until the parent goes away."""
    if config.setup is not None:
        try:
            config.setup()
        except Exception as exc:  # reported as init's failure: the worker cannot start
            _Sender(sock).send(_wire.OP_FATAL, 0, pickle.dumps(("init", *encode_error(exc)[:3])))
            return
    if config.is_async:
        from ._eventloop import new_event_loop

        loop = new_event_loop()
        try:
            loop.run_until_complete(_serve_async(sock, config))
        finally:
            loop.close()
        return
    scope = InitScope(config.init) if config.init is not None else None
    if scope is not None:
        try:
            STATE.set(scope.enter_sync())
        except Exception as exc:
            _Sender(sock).send(_wire.OP_FATAL, 0, pickle.dumps(("init", *encode_error(exc)[:3])))
            return
    try:
        _serve_sync(sock, config, progress)
    finally:
        if scope is not None:
            scope.exit_sync()


def forked_main(
    sock: socket.socket, config: WorkerConfig, close_fds: list[int], progress: mmap.mmap | None
) -> None:
    """Entry point in a child made by ``os.fork()``: never returns."""
    code = 0
    try:
        asyncio.events._set_running_loop(None)  # the parent's loop is not ours
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _prepare_process()
        serve(sock, config, progress)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def spawned_main() -> None:
    """Entry point of a worker started as a fresh interpreter (``python -c``).

    ``argv``: the socket's fd, then the progress slot's fd (or -1 without a timeout).
    """
    _prepare_process()
    sock = socket.socket(fileno=int(sys.argv[1]))
    progress_fd = int(sys.argv[2])
    progress = mmap.mmap(progress_fd, PROGRESS.size) if progress_fd >= 0 else None
    if progress_fd >= 0:
        os.close(progress_fd)
    reader = _wire.FrameReader(sock)
    msg = reader.read()
    if msg is None or msg[0] != _wire.OP_INIT:
        sys.exit(1)
    try:
        config = _load_config(msg[2])
    except Exception as exc:
        _Sender(sock).send(_wire.OP_FATAL, 0, pickle.dumps(("load", *encode_error(exc)[:3])))
        sys.exit(1)
    reader.close()  # nothing is buffered past INIT: the parent waits for READY first
    serve(sock, config, progress)


def _load_config(payload: bytes) -> WorkerConfig:
    """Unpickle the config, once the process is prepared as multiprocessing prepares
    a spawned child (the parent's ``sys.path`` so the function's module imports, its
    authkey, its main module imported as ``__mp_main__``)."""
    import multiprocessing.spawn

    prep, blob = pickle.loads(payload)
    multiprocessing.spawn.prepare(prep)
    config = pickle.loads(blob)
    if not isinstance(config, WorkerConfig):
        raise TypeError(f"expected a WorkerConfig, got {type(config).__name__}")
    return config
