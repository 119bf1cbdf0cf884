"""A worker process as the parent sees it: starting it, talking to it, reaping it.

The process executor (``processes``) decides what each worker does; a
:class:`WorkerHandle` carries it out for one process and tells the executor, its
*owner*, what happened: a result arrived (the worker is free), a report arrived, the
worker exited.

Starting. Workers are started by ``fork`` when that is safe (the calling process has a
single thread at the time, which the executor's ``prepare()`` checks before spindle
starts its own), else as fresh interpreters (``posix_spawn`` of ``python -c``) that
receive the function, cloudpickled, in an INIT frame. Fork makes a pool ready in
milliseconds; spawning costs an interpreter start-up per worker but is safe in a
threaded process. Replacement workers are always spawned, since by then the parent
has threads. Either way the worker says READY (or FATAL, when its ``init`` or the
loading of the function failed) before it is sent any batch.

Watching. A worker's death is noticed at once through its pidfd (Linux), not by
polling, and acted on only once its socket has also reached EOF, so that every frame
it sent before dying is read first. Its batches are then answered from what is known:
a sync worker runs its batches one at a time in the order sent, so only the oldest
was running and the others are sent again as they were (``"again"``); the running one
failed at the item its progress slot names (``"crashed_at"``), or as a whole
(``"crashed"``) when there is no slot; an item the executor's watchdog killed the
worker for is ``"timeout"``.

Progress slot. With a stage ``timeout``, each worker writes into a small shared-memory
slot (``memfd``) which batch and item it is running and since when; the executor's
watchdog reads it through :meth:`WorkerHandle.read_progress`.

Ending. ``STOP`` asks a worker to finish the batches sent to it and exit; SIGTERM ends
a busy one, and SIGKILL whatever outlives :data:`TERM_GRACE`. A pid is never signalled
once it has been reaped, since the system may have given it to another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Any, Protocol

from .._errors import SpindleError
from . import _wire
from ._worker import PROGRESS, WorkerConfig, forked_main
from .spec import WorkSpec

# Parent-side ends of every live worker socket in this process. A child made by fork
# inherits them and must close them, or a parent's death would go unnoticed by
# workers started later. This is per-process state by nature (like the at-fork
# registries of the standard library), so it lives at module level.
_PARENT_FDS: set[int] = set()

_SPAWN_CODE = "from spindle.executors._worker import spawned_main; spawned_main()"

#: Seconds a worker gets to exit after SIGTERM before SIGKILL.
TERM_GRACE = 0.5


class Owner(Protocol):
    """What a :class:`WorkerHandle` tells the executor that started it."""

    def on_worker_free(self) -> None:
        """A batch was answered: the worker may take another."""

    def on_report(self, worker: WorkerHandle, payload: bytes) -> None:
        """The worker sent a REPORT frame (a pickled dict)."""

    def on_worker_exit(self, worker: WorkerHandle) -> None:
        """The worker exited; its pending batches have been answered."""


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
    """Feeds frames from one worker's socket to its :class:`WorkerHandle`."""

    def __init__(self, worker: WorkerHandle) -> None:
        self.worker = worker
        self.parser = _wire.FrameParser()

    def data_received(self, data: bytes) -> None:
        for op, ident, payload in self.parser.feed(data):
            self.worker.on_frame(op, ident, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.on_connection_lost()


class WorkerHandle:
    """One worker process as the parent sees it."""

    def __init__(
        self,
        owner: Owner,
        spec: WorkSpec,
        index: int,
        pid: int,
        sock: socket.socket,
        progress: mmap.mmap | None,
    ):
        self.owner = owner
        self.spec = spec
        #: ``max_jobs_per_worker``, read by :attr:`usable` for every batch.
        self.max_jobs = spec.max_jobs_per_worker
        #: The worker's slot: the place in the pool (and on a hash ring) it holds.
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
        #: When the worker began its current batch (``time.monotonic()``), while it has
        #: any; 0.0 when idle. Dispatch sends no more to a worker stuck on a long batch.
        self.since = 0.0
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
        limit = self.max_jobs
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
            # Batches run in the order sent: the next pending one starts now.
            self.since = time.monotonic() if self.pending else 0.0
            if fut is not None and not fut.done():
                fut.set_result(("ok" if op == _wire.OP_RESULT else "bad", payload))
            self.jobs += 1
            self.owner.on_worker_free()
        elif op == _wire.OP_REPORT:
            self.owner.on_report(self, payload)
        elif op == _wire.OP_READY:
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
        elif op == _wire.OP_FATAL:
            where, name, message, text = pickle.loads(payload)
            stage = self.spec.name
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
            elif n == 0 or self.spec.is_async:
                fut.set_result(("crashed", self.reason))
            else:
                fut.set_result(("again", None))
        self.pending.clear()
        self.since = 0.0
        if self.progress is not None:
            self.progress.close()
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(
                WorkerStartError(
                    f"a worker process of stage {self.spec.name!r} {self.reason} "
                    "while starting (see its output above)"
                )
            )
        assert self.exited is not None
        self.exited.set()
        self.owner.on_worker_exit(self)

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
            self._loop.call_later(TERM_GRACE, self.kill)

    def discard(self) -> None:
        """End a worker that was started but never attached to a loop, and free its fds."""
        self.kill()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)  # SIGKILLed: returns at once
        self.alive = False
        _PARENT_FDS.discard(self.fd)
        self.sock.close()
        if self.progress is not None:
            self.progress.close()


def can_fork(start_method: str) -> bool:
    """Whether workers may be forked now: ``"fork"`` asks for it; ``"auto"`` forks
    on Linux while this process has a single thread."""
    if start_method == "spawn" or not hasattr(os, "fork"):
        return False
    if start_method == "fork":
        return True
    return threading.active_count() == 1 and sys.platform.startswith("linux")


def _progress_slot(track: bool) -> tuple[int, mmap.mmap] | tuple[None, None]:
    """A shared-memory slot for the timeout watchdog (an fd and its mapping)."""
    if not track:
        return None, None
    fd = os.memfd_create("spindle-progress")
    os.ftruncate(fd, PROGRESS.size)
    return fd, mmap.mmap(fd, PROGRESS.size)


def fork_worker(
    owner: Owner, spec: WorkSpec, slot: int, config: WorkerConfig, *, track: bool
) -> WorkerHandle:
    """Fork a worker for ``slot`` that runs ``config``; with ``track``, give it a
    progress slot."""
    parent, child = socket.socketpair()
    fd, progress = _progress_slot(track)
    # Stale numbers may have been reused by the new pair: never close the child's own.
    close_in_child = [fd for fd in (*_PARENT_FDS, parent.fileno()) if fd != child.fileno()]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        forked_main(child, config, close_in_child, progress)
    child.close()
    if fd is not None:
        os.close(fd)
    _PARENT_FDS.add(parent.fileno())
    return WorkerHandle(owner, spec, slot, pid, parent, progress)


def spawn_worker(
    owner: Owner, spec: WorkSpec, slot: int, payload: bytes, *, track: bool
) -> WorkerHandle:
    """Start a fresh interpreter for ``slot`` and send it ``payload`` (the pickled
    ``(sys.path, cloudpickled WorkerConfig)``) as its INIT frame."""
    parent, child = socket.socketpair()
    fd = child.fileno()
    os.set_inheritable(fd, True)
    progress_fd, progress = _progress_slot(track)
    if progress_fd is not None:
        os.set_inheritable(progress_fd, True)
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-c", _SPAWN_CODE, str(fd), str(progress_fd or -1)]
    try:
        pid = os.posix_spawn(sys.executable, argv, env)
    finally:
        child.close()
        if progress_fd is not None:
            os.close(progress_fd)
    _PARENT_FDS.add(parent.fileno())
    parent.sendall(b"".join(_wire.frame(_wire.OP_INIT, 0, payload)))
    return WorkerHandle(owner, spec, slot, pid, parent, progress)
