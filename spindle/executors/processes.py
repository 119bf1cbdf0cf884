"""The process executor: a supervised pool of worker processes.

::

    slot coroutine                     parent (event loop)                     worker process
    ──────────────                     ───────────────────                     ──────────────
    run(items) ── pickle(items) ──▶ worker by dispatch ─── BATCH frame ──▶ call_batch(fn, items)
         ▲                                  │                                      │
         └──── Outcome ◀── unpickle ◀── RESULT frame ◀─────────────────────────────┘
                                            │
                          pidfd readable ◀──┘ worker died: its batches are re-run
                                             item by item; the item that kills a
                                             worker fails with WorkerCrashed; a
                                             replacement is started

The executor is the supervisor: it decides which worker gets a batch, what to do when
one dies, when to replace one. Each worker process is driven through a
:class:`~spindle.executors._handle.WorkerHandle`, which starts it (fork, or a fresh
interpreter), sends it frames, notices its death through its pidfd and reaps it; see
``_handle`` for how workers start and how a death is read.

Dispatch: the stage's ``dispatch`` policy picks the worker of each batch, among the
usable ones: by default the one with the fewest batches pending; or in turn
(``round-robin``), in proportion to weights (``weighted:3,1``), or, with a key
(``key:FIELD`` or a stage ``route``), the worker that owns the key on a hash ring (see
:mod:`spindle.policies.dispatch`). Batches are sized by
:class:`~spindle.policies.batching.AdaptiveBatch` from the compute time workers report.

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
import contextlib
import itertools
import multiprocessing.spawn
import pickle
import signal
import time
from typing import Any

import cloudpickle

from .._errors import SpindleError
from .._failure import Failure, short_repr
from . import _wire
from ._handle import (
    TERM_GRACE,
    WorkerHandle,
    WorkerStartError,
    can_fork,
    fork_worker,
    spawn_worker,
)
from ._reports import Report, ReportBook
from ._worker import PROTOCOL
from .base import Executor, Outcome, WorkerSnapshot, around_fault, decode_results
from .loop import timeout_failure
from .spec import WorkSpec

#: Seconds to wait for a worker to start and say READY.
_START_TIMEOUT = 60.0


class ProcessExecutor(Executor):
    """Runs a stage's function on ``workers`` supervised processes."""

    def __init__(self, spec: WorkSpec, *, prefetch: int = 2) -> None:
        self.spec = spec
        self.workers = spec.workers
        self.is_async = spec.is_async
        self.start_method = spec.start_method
        self.timeout = spec.timeout
        self.capacity = spec.workers * (spec.concurrency if spec.is_async else prefetch)
        self._batching = spec.batching()
        self._track = self.timeout is not None and not self.is_async
        self._config = spec.worker_config()
        self.reports = (
            ReportBook(spec.name, spec.merge_reports) if spec.reporter is not None else None
        )
        self._init_payload: bytes | None = None
        self._workers: list[WorkerHandle] = []
        self._prelaunched: list[WorkerHandle] = []
        self._ids = itertools.count(1)
        self._dispatch = spec.dispatch.chooser(spec.workers, spec.route)
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
        return f"<ProcessExecutor {self.spec.name!r}: {alive} workers, {busy} batches in flight>"

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
                    f"the function of stage {self.spec.name!r} ({short_repr(self.spec.fn)}) "
                    "(or its init function) cannot be "
                    f"sent to worker processes: {type(exc).__name__}: {exc}. It must be "
                    "picklable with cloudpickle (functions, lambdas and closures over plain "
                    "data are); a closure over a lock, socket or open file is not: create "
                    "such resources inside the function, or use kind='thread'."
                ) from exc
            # What multiprocessing's spawn sends its children, read the same way
            # (sys.path, the working directory, the authkey, the main module):
            # with it a Manager proxy can connect, and a class of the main script
            # can be unpickled, in a spawned worker as in a Process.
            prep = multiprocessing.spawn.get_preparation_data(self.spec.name)
            prep["authkey"] = bytes(prep["authkey"])  # pickled only by a Popen otherwise
            self._init_payload = pickle.dumps((prep, blob), protocol=PROTOCOL)
        return self._init_payload

    def prepare(self) -> None:
        self._pickle_config()  # fail early, in the caller, if the function cannot travel
        if can_fork(self.start_method):
            for slot in range(self.workers):
                worker = fork_worker(self, self.spec, slot, self._config, track=self._track)
                self._prelaunched.append(worker)

    def _spawn(self, slot: int) -> WorkerHandle:
        payload = self._pickle_config()
        return spawn_worker(self, self.spec, slot, payload, track=self._track)

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

    def on_report(self, worker: WorkerHandle, payload: bytes) -> None:
        if self.reports is not None:
            self.reports.take(worker, payload, "parent")

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    def on_worker_exit(self, worker: WorkerHandle) -> None:
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
                    f"every worker process of stage {self.spec.name!r} failed to start; "
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

    async def _attach_replacement(self, worker: WorkerHandle) -> None:
        assert self._loop is not None and self._free is not None
        try:
            await worker.attach(self._loop)
            assert worker.ready is not None
            await worker.ready
        except WorkerStartError:
            worker.kill()
        self._free.set()

    # -- running -------------------------------------------------------------------

    async def _pick(self, items: list[Any]) -> WorkerHandle:
        assert self._free is not None
        while True:
            best = self._dispatch.pick(self._workers, items)
            if best is not None:
                return best
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise SpindleError(f"stage {self.spec.name!r} is closing")
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
            idle = not worker.pending
            worker.pending[ident] = fut
            if not worker.send(_wire.OP_BATCH, ident, payload):
                del worker.pending[ident]
                continue
            if idle:
                worker.since = time.monotonic()
            worker.items_assigned += len(items)
            if self._track and worker.timer is None:
                self._watch(worker, self.timeout)
            kind, data = await fut
        if kind == "ok":
            return self._outcome(worker, items, data)
        if kind == "timeout":
            assert self.timeout is not None
            detail = "; its worker process was killed and replaced"
            failed = timeout_failure(items[data], self.timeout, self.spec.name, detail)
            return await around_fault(self, items, data, failed)
        if kind == "crashed_at":
            index, reason = data
            msg = f"the worker process running this item {reason}"
            failed = Failure(items[index], "WorkerCrashed", msg, "", 1, self.spec.name)
            return await around_fault(self, items, index, failed)
        if len(items) > 1:
            # Which item broke the batch is unknown: run each alone to find out.
            return await self._run_split(items)
        if kind == "bad":
            msg = (
                f"input {short_repr(items[0])} could not be unpickled in the worker process "
                f"({pickle.loads(data)}); its type must be importable there"
            )
            return Outcome([Failure(items[0], "Unpicklable", msg, "", 1, self.spec.name)], 1)
        msg = f"the worker process running this item {data}"
        return Outcome([Failure(items[0], "WorkerCrashed", msg, "", 1, self.spec.name)], 1)

    # -- the timeout watchdog --------------------------------------------------------

    def _watch(self, worker: WorkerHandle, delay: float | None) -> None:
        assert self._loop is not None and delay is not None
        worker.timer = self._loop.call_later(max(delay, 0.0), self._check, worker)

    def _check(self, worker: WorkerHandle) -> None:
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

    def _after_batch(self, worker: WorkerHandle, n_items: int, rss: int | None) -> None:
        worker.items_done += n_items
        limit_jobs = self.spec.max_jobs_per_worker
        limit_rss = self.spec.max_memory_per_worker
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
                    results.append(Failure(item, "Unpicklable", msg, "", 1, self.spec.name))
                    failures += 1
                    continue
            one = await self.run([item])
            results.extend(one.results)
            failures += one.failures
        return Outcome(results, failures)

    def _outcome(self, worker: WorkerHandle, items: list[Any], data: bytes) -> Outcome:
        decoded = decode_results(data, items, self.spec.name, "parent")
        if isinstance(decoded, Outcome):
            return decoded
        outcome, rss = decoded
        self._batching.observe(len(items), outcome.seconds)
        self._after_batch(worker, len(items), rss)
        return outcome

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        out: list[WorkerSnapshot] = []
        for w in self._workers:
            if not w.alive:
                state = "dead"
            elif not w.started:
                state = "starting"
            else:
                state = "busy" if w.pending else "idle"
            out.append(
                {
                    "stage": self.spec.name,
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
            w.discard()
        self._prelaunched.clear()
        workers = [w for w in self._workers if w.alive]
        for w in workers:
            # A worker still starting (a replacement the run's end cut short) has done
            # nothing to report and may never read a STOP: it is ended, not asked.
            if cancel or w.pending or w.transport is None or not w.started:
                w.signal(signal.SIGTERM)
            else:
                w.send(_wire.OP_STOP, 0)
        await self._wait_exit(workers, TERM_GRACE if cancel else 2.0)
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

    async def _wait_exit(self, workers: list[WorkerHandle], seconds: float) -> None:
        waits = [w.exited.wait() for w in workers if w.alive and w.exited is not None]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.gather(*waits)
