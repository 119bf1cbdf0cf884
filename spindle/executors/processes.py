"""The process executor: a supervised pool of worker processes.

::

    slot coroutine                     parent (event loop)                     worker process
    ──────────────                     ───────────────────                     ──────────────
    run(items) ── pickle(items) ──▶ least-loaded worker ── BATCH frame ──▶ call_batch(fn, items)
         ▲                                  │                                      │
         └──── Outcome ◀── unpickle ◀── RESULT frame ◀─────────────────────────────┘
                                            │
                          pidfd readable ◀──┘ worker died: its batches are re-run
                                             item by item; the item that kills a
                                             worker fails with WorkerCrashed; a
                                             replacement is started

Workers are started by ``fork`` when that is safe (the calling process has a single
thread at the time, which ``prepare()`` checks before spindle starts its own), else
as fresh interpreters (``posix_spawn`` of ``python -c``) that receive the function,
cloudpickled, in an INIT frame. Fork makes a pool ready in milliseconds; spawning
costs an interpreter start-up per worker but is safe in a threaded process. Replacement
workers are always spawned, since by then the parent has threads.

A worker's death is noticed at once through its pidfd (Linux), not by polling.
Batches are sized by :class:`~spindle.policies.batching.AdaptiveBatch` from the
compute time workers report.

Timeouts: with a stage ``timeout``, each worker writes into a small shared-memory
slot which batch and item it is running and since when; one timer per busy worker
reads it and, when an item has run too long, terminates the worker (SIGTERM, then
SIGKILL). The item fails with ``Timeout``; the rest of its batch runs again on the
other workers; a replacement worker starts. This costs one small write per item, and
only when a timeout is set.

Worker life cycle: ``max_jobs_per_worker`` and ``max_memory_per_worker`` (the resident
memory the worker holds alone, not pages it shares with its parent since a fork, which
it reports after each batch) retire a worker after the batch
that reaches the limit: it gets STOP behind the batches already sent to it, and a
replacement starts at once.

Reports: with a stage ``reporter``, workers send REPORT frames (at most about one a
second, and a last one after STOP); the executor keeps each worker's latest in a
:class:`~spindle.executors._reports.ReportBook`, which merges them for snapshots.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

from .._errors import SpindleError
from .._failure import Failure, short_repr
from ..policies.batching import AdaptiveBatch
from . import _wire
from ._reports import Report, ReportBook
from ._worker import PROGRESS, PROTOCOL, WorkerConfig, forked_main
from .base import Executor, Outcome
from .loop import timeout_failure

if TYPE_CHECKING:
    from .._core.stage import Stage

# Parent-side ends of every live worker socket in this process. A child made by fork
# inherits them and must close them, or a parent's death would go unnoticed by
# workers started later. This is per-process state by nature (like the at-fork
# registries of the standard library), so it lives at module level.
_PARENT_FDS: set[int] = set()

_SPAWN_CODE = "from spindle.executors._worker import spawned_main; spawned_main()"

#: Seconds a worker gets to exit after STOP (idle) or SIGTERM (busy) before SIGKILL.
_TERM_GRACE = 0.5
#: Seconds to wait for a worker to start and say READY.
_START_TIMEOUT = 60.0


class WorkerStartError(SpindleError):
    """A worker process could not load or run the stage's function."""


def describe_status(status: int) -> str:
    """A human reason from a ``waitpid`` status: signal name or exit code."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = ""
        if sig == signal.SIGKILL:
            hint = " (killed from outside, often the out-of-memory killer)"
        elif sig == signal.SIGSEGV:
            hint = " (segmentation fault in native code)"
        return f"killed by {name}{hint}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class _Conn(asyncio.Protocol):
    """Feeds frames from one worker's socket to its :class:`_Worker`."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.parser = _wire.FrameParser()

    def data_received(self, data: bytes) -> None:
        for op, ident, payload in self.parser.feed(data):
            self.worker.on_frame(op, ident, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.on_connection_lost()


class _Worker:
    """One worker process as the parent sees it."""

    def __init__(
        self,
        executor: ProcessExecutor,
        index: int,
        pid: int,
        sock: socket.socket,
        progress: mmap.mmap | None,
    ):
        self.executor = executor
        self.index = index
        self.pid = pid
        self.sock = sock
        #: The socket's descriptor number, kept: once the transport has closed the
        #: socket, ``sock.fileno()`` is -1 and could no longer be taken out of
        #: ``_PARENT_FDS``, whose stale numbers forked children would then close.
        self.fd = sock.fileno()
        self.progress = progress
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out: tuple[int, int] | None = None
        self.retiring = False
        self._eof = False
        self.items_done = 0
        self.items_assigned = 0
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[tuple[str, Any]]] = {}
        self._out: list[bytes] = []  # frames waiting for the end of this loop turn
        self._flush_due = False
        self.ready: asyncio.Future[None] | None = None
        self._started = False
        self.exited: asyncio.Event | None = None
        self.status: int | None = None
        self.reason = ""
        self.alive = True
        self.jobs = 0
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"dead ({self.reason})"
        return f"<worker {self.index} pid {self.pid} {state}, {len(self.pending)} batches>"

    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.ready = loop.create_future()
        # A start failure is reported by start(); do not also log it as unretrieved.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.exited = asyncio.Event()
        transport, _ = await loop.connect_accepted_socket(lambda: _Conn(self), sock=self.sock)
        self.transport = transport
        # Watch the exit only now: a worker that dies at once (its init failed) must
        # have its last frames read from the socket before its death is acted on.
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
            self._pidfd = None
        if self._pidfd is not None:
            loop.add_reader(self._pidfd, self._on_exit)

    @property
    def usable(self) -> bool:
        """Alive, started, ready for batches and not being retired."""
        limit = self.executor.stage.max_jobs_per_worker
        return (
            self.alive
            and not self.retiring
            and self.started
            and not self.unreachable
            and (limit is None or self.items_assigned < limit)
        )

    @property
    def started(self) -> bool:
        """The worker said READY (once true, true for good: asked for every item)."""
        if self._started:
            return True
        ready = self.ready
        self._started = (
            ready is not None
            and ready.done()
            and not ready.cancelled()  # start-up cut short by the run's end
            and ready.exception() is None
        )
        return self._started

    @property
    def unreachable(self) -> bool:
        """Its socket closed: it is dying, and its exit will be reported shortly."""
        return self.transport is None or self.transport.is_closing()

    def read_progress(self) -> tuple[int, int, float]:
        """(batch id, index, start time) the worker last wrote; read until stable."""
        assert self.progress is not None
        while True:
            first = PROGRESS.unpack_from(self.progress)
            if PROGRESS.unpack_from(self.progress) == first:
                return first

    def send(self, op: int, ident: int, payload: bytes = b"") -> bool:
        """Queue a frame; False if the worker can no longer be reached.

        Frames queued in one turn of the event loop leave in one write at its end:
        with many single-item batches (an async stage) a system call per frame
        would cost more than the frame.
        """
        if self.unreachable:
            return False
        self._out += _wire.frame(op, ident, payload)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_due = False
        frames, self._out = self._out, []
        if frames and not self.unreachable:
            assert self.transport is not None
            self.transport.writelines(frames)

    # -- events from the loop --------------------------------------------------------

    def on_frame(self, op: int, ident: int, payload: bytes) -> None:
        if op == _wire.OP_RESULT or op == _wire.OP_BAD_BATCH:
            fut = self.pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(("ok" if op == _wire.OP_RESULT else "bad", payload))
            self.jobs += 1
            self.executor.on_worker_free()
        elif op == _wire.OP_REPORT:
            self.executor.on_report(self, payload)
        elif op == _wire.OP_READY:
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
        elif op == _wire.OP_FATAL:
            where, name, message, text = pickle.loads(payload)
            stage = self.executor.stage.name
            if where == "init":
                err = WorkerStartError(
                    f"the init function of stage {stage!r} failed in a worker process: "
                    f"{name}: {message}"
                )
            else:
                err = WorkerStartError(
                    f"a worker process of stage {stage!r} could not load the function: "
                    f"{name}: {message}. The worker imports the function's module by name; "
                    "make sure it is importable (on sys.path, or installed), or define the "
                    "function in the script that runs the pipeline."
                )
            err.add_note(text)
            if self.ready is not None and not self.ready.done():
                self.ready.set_exception(err)

    def on_connection_lost(self) -> None:
        self._eof = True
        if self._loop is None or not self.alive:
            return
        if self.status is not None:
            self._finalize()
        elif self._pidfd is None:  # pragma: no cover - platforms without pidfd
            self._poll_exit(0)
        else:
            # The socket closed but the process may live on (it closed the fd itself):
            # it can no longer be reached, so end it; the pidfd reports the exit.
            self._loop.call_later(1.0, self.kill)

    def _poll_exit(self, tries: int) -> None:  # pragma: no cover - platforms without pidfd
        assert self._loop is not None
        self._on_exit()
        if self.alive and self.status is None:
            if tries > 200:
                self.kill()
            self._loop.call_later(0.01, self._poll_exit, tries + 1)

    def _on_exit(self) -> None:
        """The process exited (its pidfd is readable): collect its status.

        The death is acted on once the socket has also reached EOF, so that every
        frame the worker sent before dying (a result, an init error) is read first.
        """
        if self.status is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        self.status = status
        self.reason = describe_status(status)
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._eof or self.transport is None:
            self._finalize()
        elif self._loop is not None:
            self._loop.call_later(1.0, self._finalize)  # EOF should follow at once

    def _finalize(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._release()
        # A sync worker runs its batches one at a time, in the order sent: only the
        # oldest was running when it died; the others were waiting in the pipe and
        # are sent again as they were. An async worker runs them all at once.
        for n, ident in enumerate(sorted(self.pending)):
            fut = self.pending[ident]
            if fut.done():
                continue
            if self.timed_out is not None and self.timed_out[0] == ident:
                fut.set_result(("timeout", self.timed_out[1]))
            elif n == 0 and self.progress is not None and self._running(ident) is not None:
                fut.set_result(("crashed_at", (self._running(ident), self.reason)))
            elif n == 0 or self.executor.is_async:
                fut.set_result(("crashed", self.reason))
            else:
                fut.set_result(("again", None))
        self.pending.clear()
        if self.progress is not None:
            self.progress.close()
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(
                WorkerStartError(
                    f"a worker process of stage {self.executor.stage.name!r} {self.reason} "
                    "while starting (see its output above)"
                )
            )
        assert self.exited is not None
        self.exited.set()
        self.executor.on_worker_exit(self)

    def reap_blocking(self) -> None:
        """Wait for a worker already sent SIGKILL (returns at once) and free its fds."""
        if self.status is None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.alive = False
        self._release()
        if self.progress is not None:
            self.progress.close()

    def _running(self, ident: int) -> int | None:
        """The index of the item of batch ``ident`` the worker was running, if known."""
        running, index, _ = self.read_progress()
        return index if running == ident else None

    def _release(self) -> None:
        """Free the parent's resources for this worker (idempotent)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._pidfd is not None and self._loop is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        _PARENT_FDS.discard(self.fd)
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()

    def signal(self, sig: int) -> None:
        if self.alive and self.status is None:  # never signal a reaped (reusable) pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM now, SIGKILL if still alive after the grace period."""
        self.signal(signal.SIGTERM)
        if self._loop is not None:
            self._loop.call_later(_TERM_GRACE, self.kill)


class _Ring:
    """A consistent-hash ring of worker slots (64 virtual points per slot)."""

    POINTS = 64
    CACHE = 65_536

    def __init__(self, slots: Iterable[int]) -> None:
        self._cache: dict[Any, tuple[int, ...]] = {}
        points = sorted(
            (_hash64(f"{slot}:{i}"), slot) for slot in slots for i in range(self.POINTS)
        )
        self._hashes = [h for h, _ in points]
        self._slots = [slot for _, slot in points]

    def walk(self, key: Any) -> Iterator[int]:
        """Slots in ring order from the key's point, each once."""
        start = bisect.bisect(self._hashes, _hash64(str(key)))
        seen: set[int] = set()
        n = len(self._slots)
        for i in range(n):
            slot = self._slots[(start + i) % n]
            if slot not in seen:
                seen.add(slot)
                yield slot

    def order(self, key: Any) -> tuple[int, ...]:
        """Every slot in ring order from the key's point, remembered per key.

        The parent routes every item, and a crawl has far fewer hosts than URLs: a
        lookup in the cache replaces a hash and a walk. The cache is emptied when it
        reaches ``CACHE`` keys, so a stream of distinct keys costs no more memory.
        """
        cache = self._cache
        found = cache.get(key)
        if found is None:
            if len(cache) >= self.CACHE:
                cache.clear()
            found = cache[key] = tuple(self.walk(key))
        return found


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ProcessExecutor(Executor):
    """Runs a stage's function on ``workers`` supervised processes."""

    def __init__(self, stage: Stage, *, prefetch: int = 2) -> None:
        self.stage = stage
        self.workers = stage.workers
        self.is_async = stage.is_async
        self.start_method = stage.start_method
        self.timeout = stage.timeout
        self.capacity = stage.workers * (stage.concurrency if stage.is_async else prefetch)
        batch_size = stage.batch_size
        if self.is_async and batch_size is None:
            batch_size = 1
        max_size = stage.max_batch
        if stage.max_jobs_per_worker is not None:
            max_size = min(max_size, stage.max_jobs_per_worker)
            batch_size = min(batch_size, max_size) if batch_size is not None else None
        self._batching = AdaptiveBatch(max_size=max_size, fixed=batch_size)
        self._track = self.timeout is not None and not self.is_async
        self._config = WorkerConfig(
            fn=stage.fn,
            flat=stage.flat,
            is_async=stage.is_async,
            concurrency=max(1, stage.concurrency),
            stage=stage.name,
            sys_path=list(sys.path),
            timeout=self.timeout,
            init=stage.init,
            memory_limit=stage.max_memory_per_worker,
            reporter=stage.reporter,
        )
        self.reports = (
            ReportBook(stage.name, stage.merge_reports) if stage.reporter is not None else None
        )
        self._init_payload: bytes | None = None
        self._workers: list[_Worker] = []
        self._prelaunched: list[_Worker] = []
        self._ids = itertools.count(1)
        self._ring = _Ring(range(stage.workers)) if stage.route is not None else None
        self._slot_restarts: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Event | None = None
        self._closing = False
        self._broken: WorkerStartError | None = None
        self._attaching: set[asyncio.Task[None]] = set()
        self.restarts = 0
        self.crashes = 0
        self.timeouts = 0
        self.retired = 0

    def __repr__(self) -> str:
        alive = sum(w.alive for w in self._workers)
        busy = sum(len(w.pending) for w in self._workers)
        return f"<ProcessExecutor {self.stage.name!r}: {alive} workers, {busy} batches in flight>"

    def batch_size(self) -> int:
        return self._batching.size

    def stats(self) -> dict[str, Any]:
        return {
            "workers": sum(w.alive for w in self._workers),
            "restarts": self.restarts,
            "crashes": self.crashes,
            "timeouts": self.timeouts,
            "retired": self.retired,
            "batch_size": self._batching.size,
            "cost_per_item": self._batching.cost_per_item,
        }

    # -- starting ------------------------------------------------------------------

    def _pickle_config(self) -> bytes:
        if self._init_payload is None:
            try:
                blob = cloudpickle.dumps(self._config, protocol=PROTOCOL)
            except Exception as exc:
                raise SpindleError(
                    f"the function of stage {self.stage.name!r} ({short_repr(self.stage.fn)}) "
                    "(or its init function) cannot be "
                    f"sent to worker processes: {type(exc).__name__}: {exc}. It must be "
                    "picklable with cloudpickle (functions, lambdas and closures over plain "
                    "data are); a closure over a lock, socket or open file is not: create "
                    "such resources inside the function, or use kind='thread'."
                ) from exc
            self._init_payload = pickle.dumps((self._config.sys_path, blob), protocol=PROTOCOL)
        return self._init_payload

    def _can_fork(self) -> bool:
        if self.start_method == "spawn" or not hasattr(os, "fork"):
            return False
        if self.start_method == "fork":
            return True
        return threading.active_count() == 1 and sys.platform.startswith("linux")

    def prepare(self) -> None:
        self._pickle_config()  # fail early, in the caller, if the function cannot travel
        if self._can_fork():
            for slot in range(self.workers):
                self._prelaunched.append(self._fork(slot))

    def _progress_slot(self) -> tuple[int, mmap.mmap] | tuple[None, None]:
        """A shared-memory slot for the timeout watchdog (an fd and its mapping)."""
        if not self._track:
            return None, None
        fd = os.memfd_create("spindle-progress")
        os.ftruncate(fd, PROGRESS.size)
        return fd, mmap.mmap(fd, PROGRESS.size)

    def _fork(self, slot: int) -> _Worker:
        parent, child = socket.socketpair()
        fd, progress = self._progress_slot()
        # Stale numbers may have been reused by the new pair: never close the child's own.
        close_in_child = [fd for fd in (*_PARENT_FDS, parent.fileno()) if fd != child.fileno()]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            forked_main(child, self._config, close_in_child, progress)
        child.close()
        if fd is not None:
            os.close(fd)
        _PARENT_FDS.add(parent.fileno())
        return _Worker(self, slot, pid, parent, progress)

    def _spawn(self, slot: int) -> _Worker:
        payload = self._pickle_config()
        parent, child = socket.socketpair()
        fd = child.fileno()
        os.set_inheritable(fd, True)
        progress_fd, progress = self._progress_slot()
        if progress_fd is not None:
            os.set_inheritable(progress_fd, True)
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        argv = [sys.executable, "-c", _SPAWN_CODE, str(fd), str(progress_fd or -1)]
        try:
            pid = os.posix_spawn(sys.executable, argv, env)
        finally:
            child.close()
            if progress_fd is not None:
                os.close(progress_fd)
        _PARENT_FDS.add(parent.fileno())
        parent.sendall(b"".join(_wire.frame(_wire.OP_INIT, 0, payload)))
        return _Worker(self, slot, pid, parent, progress)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._free = asyncio.Event()
        fresh = self._prelaunched or [self._spawn(slot) for slot in range(self.workers)]
        self._prelaunched = []
        self._workers.extend(fresh)
        try:
            for w in fresh:
                await w.attach(self._loop)
            async with asyncio.timeout(_START_TIMEOUT):
                for w in fresh:
                    assert w.ready is not None
                    await w.ready
        except BaseException:
            await self.aclose(cancel=True)
            raise

    # -- events from workers ---------------------------------------------------------

    def on_worker_free(self) -> None:
        assert self._free is not None
        self._free.set()

    def on_report(self, worker: _Worker, payload: bytes) -> None:
        if self.reports is None:
            return
        try:
            report = pickle.loads(payload)
        except Exception as exc:
            # The worker pickled a dict it made; only a class the parent cannot
            # import gets here. Worth a warning, not the run.
            warnings.warn(
                f"a report of stage {self.stage.name!r} could not be unpickled in the "
                f"parent ({type(exc).__name__}: {exc}); reporters should return plain data",
                RuntimeWarning,
                stacklevel=1,
            )
            return
        self.reports.update(worker, report)

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    def on_worker_exit(self, worker: _Worker) -> None:
        if self.reports is not None:
            self.reports.end(worker)
        if self._closing:
            return
        self._workers.remove(worker)
        if not worker.started:
            # It died while starting: starting another would likely loop. The run
            # fails if no worker is left to do the work.
            if not any(w.alive for w in self._workers):
                self._broken = WorkerStartError(
                    f"every worker process of stage {self.stage.name!r} failed to start; "
                    f"the last one {worker.reason}"
                )
                assert self._free is not None
                self._free.set()
            return
        if worker.timed_out is not None:
            self.timeouts += 1
        elif not worker.retiring:
            self.crashes += 1
        if not worker.retiring:  # a retired worker's replacement is already starting
            self._replace(worker.index)

    def _replace(self, slot: int) -> None:
        """Start a worker in ``slot`` (the place of one that died or retires)."""
        assert self._loop is not None
        self.restarts += 1
        self._slot_restarts[slot] = self._slot_restarts.get(slot, 0) + 1
        worker = self._spawn(slot)
        self._workers.append(worker)
        task = self._loop.create_task(self._attach_replacement(worker))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach_replacement(self, worker: _Worker) -> None:
        assert self._loop is not None and self._free is not None
        try:
            await worker.attach(self._loop)
            assert worker.ready is not None
            await worker.ready
        except WorkerStartError:
            worker.kill()
        self._free.set()

    # -- running -------------------------------------------------------------------

    def _routed(self, items: list[Any]) -> _Worker | None:
        """Key affinity: the worker whose slot owns the item's key on the hash ring.

        When that worker is not usable (it is being replaced), the next slot on the
        ring takes the key, so a dead worker's keys move to one neighbour only. A key
        ``(key, i)`` spreads one key over several workers: it goes to the i-th usable
        slot in the key's ring order (modulo the usable workers).
        """
        assert self._ring is not None and self.stage.route is not None
        try:
            key = self.stage.route(items[0])
        except Exception:
            return None
        usable = {w.index: w for w in self._workers if w.usable}
        if not usable:
            return None
        share = 0
        if type(key) is tuple and len(key) == 2 and type(key[1]) is int:
            key, share = key  # the share-th usable slot in the key's ring order
            share %= len(usable)
        try:
            order: Iterable[int] = self._ring.order(key)
        except TypeError:  # an unhashable key: walk the ring without the cache
            order = self._ring.walk(key)
        for slot in order:
            if slot in usable:
                if not share:
                    return usable[slot]
                share -= 1
        return None

    async def _pick(self, items: list[Any]) -> _Worker:
        assert self._free is not None
        while True:
            best: _Worker | None = None
            if self._ring is not None and len(items) == 1:
                best = self._routed(items)
            if best is None:
                for w in self._workers:
                    if w.usable and (best is None or len(w.pending) < len(best.pending)):
                        best = w
            if best is not None:
                return best
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise SpindleError(f"stage {self.stage.name!r} is closing")
            self._free.clear()
            await self._free.wait()

    async def run(self, items: list[Any]) -> Outcome:
        try:
            payload = pickle.dumps(items, protocol=PROTOCOL)
        except Exception:
            return await self._run_split(items, unpicklable=True)
        assert self._loop is not None
        kind = "again"
        while kind == "again":
            worker = await self._pick(items)
            ident = next(self._ids)
            fut: asyncio.Future[tuple[str, Any]] = self._loop.create_future()
            worker.pending[ident] = fut
            if not worker.send(_wire.OP_BATCH, ident, payload):
                del worker.pending[ident]
                continue
            worker.items_assigned += len(items)
            if self._track and worker.timer is None:
                self._watch(worker, self.timeout)
            kind, data = await fut
        if kind == "ok":
            return self._outcome(worker, items, data)
        if kind == "timeout":
            assert self.timeout is not None
            detail = "; its worker process was killed and replaced"
            failed = timeout_failure(items[data], self.timeout, self.stage.name, detail)
            return await self._after_fault(items, data, failed)
        if kind == "crashed_at":
            index, reason = data
            msg = f"the worker process running this item {reason}"
            failed = Failure(items[index], "WorkerCrashed", msg, "", 1, self.stage.name)
            return await self._after_fault(items, index, failed)
        if len(items) > 1:
            # Which item broke the batch is unknown: run each alone to find out.
            return await self._run_split(items)
        if kind == "bad":
            msg = (
                f"input {short_repr(items[0])} could not be unpickled in the worker process "
                f"({pickle.loads(data)}); its type must be importable there"
            )
            return Outcome([Failure(items[0], "Unpicklable", msg, "", 1, self.stage.name)], 1)
        msg = f"the worker process running this item {data}"
        return Outcome([Failure(items[0], "WorkerCrashed", msg, "", 1, self.stage.name)], 1)

    async def _after_fault(self, items: list[Any], index: int, failed: Failure) -> Outcome:
        """Item ``index`` killed its worker (or timed out): it fails, the others of the
        batch run again (those before it had run, but their results died with it)."""
        before = await self.run(items[:index]) if index else Outcome([], 0)
        rest = items[index + 1 :]
        after = await self.run(rest) if rest else Outcome([], 0)
        return Outcome(
            [*before.results, failed, *after.results], before.failures + 1 + after.failures
        )

    # -- the timeout watchdog --------------------------------------------------------

    def _watch(self, worker: _Worker, delay: float | None) -> None:
        assert self._loop is not None and delay is not None
        worker.timer = self._loop.call_later(max(delay, 0.0), self._check, worker)

    def _check(self, worker: _Worker) -> None:
        """Is the item the worker is running past its deadline? Kill it if so."""
        worker.timer = None
        timeout = self.timeout
        if not worker.alive or not worker.pending or timeout is None:
            return
        ident, index, started = worker.read_progress()
        if ident != min(worker.pending):
            # The oldest batch sent has not started yet: look again shortly.
            self._watch(worker, timeout / 4)
            return
        overdue = time.monotonic() - started - timeout
        if overdue < 0:
            self._watch(worker, -overdue)
            return
        worker.timed_out = (ident, index)
        worker.terminate()

    # -- worker life cycle -----------------------------------------------------------

    def _after_batch(self, worker: _Worker, n_items: int, rss: int | None) -> None:
        worker.items_done += n_items
        limit_jobs = self.stage.max_jobs_per_worker
        limit_rss = self.stage.max_memory_per_worker
        if worker.retiring or self._closing:
            return
        if (limit_jobs is not None and worker.items_done >= limit_jobs) or (
            limit_rss is not None and rss is not None and rss >= limit_rss
        ):
            worker.retiring = True
            self.retired += 1
            worker.send(_wire.OP_STOP, 0)  # behind the batches already sent to it
            self._replace(worker.index)

    async def _run_split(self, items: list[Any], unpicklable: bool = False) -> Outcome:
        results: list[Any] = []
        failures = 0
        for item in items:
            if unpicklable:
                try:
                    pickle.dumps(item, protocol=PROTOCOL)
                except Exception as exc:
                    msg = (
                        f"input {short_repr(item)} cannot be pickled to send it to a worker "
                        f"process ({type(exc).__name__}: {exc}); pass plain data (str, "
                        "numbers, lists, dicts, dataclasses) or use kind='thread'"
                    )
                    results.append(Failure(item, "Unpicklable", msg, "", 1, self.stage.name))
                    failures += 1
                    continue
            one = await self.run([item])
            results.extend(one.results)
            failures += one.failures
        return Outcome(results, failures)

    def _outcome(self, worker: _Worker, items: list[Any], data: bytes) -> Outcome:
        stage = self.stage.name
        try:
            results, errors, seconds, rss = pickle.loads(data)
        except Exception as exc:
            msg = f"the results could not be unpickled in the parent ({type(exc).__name__}: {exc})"
            return Outcome(
                [Failure(x, "Unpicklable", msg, "", 1, stage) for x in items], len(items)
            )
        self._batching.observe(len(items), seconds)
        self._after_batch(worker, len(items), rss)
        for i, (name, message, text, blob) in errors.items():
            exc_obj: BaseException | None = None
            if blob is not None:
                with contextlib.suppress(Exception):
                    exc_obj = pickle.loads(blob)
            results[i] = Failure(items[i], name, message, text, 1, stage, exc_obj)
        return Outcome(results, len(errors), seconds)

    def workers_snapshot(self) -> list[dict[str, Any]]:
        out = []
        for w in self._workers:
            if not w.alive:
                state = "dead"
            elif not w.started:
                state = "starting"
            else:
                state = "busy" if w.pending else "idle"
            out.append(
                {
                    "stage": self.stage.name,
                    "index": w.index,
                    "pid": w.pid,
                    "state": state,
                    "jobs": w.items_done,
                    "restarts": self._slot_restarts.get(w.index, 0),
                }
            )
        return out

    # -- stopping ------------------------------------------------------------------

    async def aclose(self, *, cancel: bool) -> None:
        """Stop every worker and reap it; SIGKILL whatever outlives the grace period."""
        self._closing = True
        for task in list(self._attaching):
            task.cancel()
        for w in self._prelaunched:  # forked but never attached (start() not reached)
            w.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)  # noqa: ASYNC222 - SIGKILLed: returns at once
            _PARENT_FDS.discard(w.fd)
            w.sock.close()
            if w.progress is not None:
                w.progress.close()
        self._prelaunched.clear()
        workers = [w for w in self._workers if w.alive]
        for w in workers:
            # A worker still starting (a replacement the run's end cut short) has done
            # nothing to report and may never read a STOP: it is ended, not asked.
            if cancel or w.pending or w.transport is None or not w.started:
                w.signal(signal.SIGTERM)
            else:
                w.send(_wire.OP_STOP, 0)
        await self._wait_exit(workers, _TERM_GRACE if cancel else 2.0)
        for w in workers:
            if w.alive:
                w.kill()
        await self._wait_exit(workers, 5.0)
        for w in self._workers:
            if w.alive:  # never attached (no pidfd), or not reaped in time: SIGKILLed
                w.kill()
                w.reap_blocking()
        if self._free is not None:
            self._free.set()

    async def _wait_exit(self, workers: list[_Worker], seconds: float) -> None:
        waits = [w.exited.wait() for w in workers if w.alive and w.exited is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.gather(*waits)
