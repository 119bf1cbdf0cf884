"""The Ray executor: a stage's batches on long-lived Ray actors anywhere in a cluster.

::

    slot coroutine                    driver (event loop)                    Ray actor
    ──────────────                    ───────────────────                    ─────────
    run(items) ── pickle(items) ──▶ least-loaded actor ── run.remote() ──▶ call_batch(fn, items)
         ▲                                 │  (an ObjectRef, awaited on the loop)     │
         └──── Outcome ◀── unpickle ◀── (OK, encoded results, report) ◀───────────────┘
                                            │
                  ActorDiedError ◀──────────┘ the actor died: its node went away (every
                                              batch on it runs again elsewhere), or its
                                              process died (the batch it was running is
                                              split to find the culprit, the others run
                                              again); a replacement actor is started

It is the process executor (``processes.py``) with Ray actors in place of worker
processes and ObjectRefs in place of socket frames: the same adaptive batches
(:class:`~spindle.policies.batching.AdaptiveBatch`), the same dispatch (least loaded, or
the hash ring of ``route=``), the same per-item results and failures, retries and
timeouts, ``init``, ``worker_state()`` and reports. Why actors and batches, not a Ray
task per item: a task costs the driver about half a millisecond, a hundred times a
tiny job; a long-lived actor also keeps what ``init`` made (a model, a connection)
for the whole run.

Bounds. The stage runner calls ``run`` at most ``capacity`` times at once: two batches
per sync actor (one running, one waiting in the actor's queue), ``concurrency`` per
async actor. Each call awaits its one ObjectRef on the loop, so results stream back as
batches finish and nothing waits for the whole input; the driver holds at most
``capacity`` batches. Items and results travel as pickled bytes, inline when small and
through Ray's object store when large.

Faults. A batch whose actor died while it *waited* runs again elsewhere. The batch an
actor was *running* when it died is split into single items, which run again; a
single item that was running on an actor that died, having been sent as a suspect
already, fails with ``WorkerCrashed``: so an item that kills its worker fails alone,
while a worker killed from outside costs nothing but time. When an actor's node is
gone, every batch on it runs again, none is suspected. Each dead actor is replaced
(``restarts``). With a ``timeout``, a sync actor notes the item it is running; one
timer per busy actor asks it (``progress``, on a thread of the actor's own) at the
item's deadline and kills the actor when the item is late; the item fails with
``Timeout`` and the rest of its batch runs again. Async actors enforce the timeout
themselves, as deadlines on their loop.

Ray itself. The first run that needs Ray connects to ``ray_address``, or starts a
local Ray when there is none; a Ray that spindle started is shut down when the last
run using it ends, one it joined (or that the program started) is left running. The
actors of a run are killed when it ends, Ctrl-C included, and Ray ends them anyway
with their driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import sys
import threading
import uuid
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from types import ModuleType
from typing import Any, cast

import cloudpickle

from .._errors import ConfigError, RemoteTraceback, SpindleError
from .._failure import Failure, short_repr
from ..policies.batching import AdaptiveBatch
from ..policies.dispatch import HashRing, least_loaded
from ._handle import WorkerStartError
from ._reports import Report, ReportBook
from ._worker import PROTOCOL, WorkerConfig
from .base import Executor, Outcome, WorkerSnapshot
from .loop import timeout_failure
from .spec import WorkSpec

#: Seconds of work a batch aims at: a call to an actor costs the driver about a
#: millisecond (the process executor's frame, tens of microseconds), so batches are
#: five times the local ones (see :class:`~spindle.policies.batching.AdaptiveBatch`).
BATCH_TARGET = 0.1
#: What to install when Ray is missing.
INSTALL_HINT = "pip install 'spindle[ray]'"
#: Seconds the actors of a run get to start (a cluster may have to place them first).
_START_TIMEOUT = 120.0
#: Seconds an actor gets to answer ``progress`` before it counts as stuck.
_PROBE_LIMIT = 5.0
#: Seconds actors get for their last report and ``init``'s teardown at the end of a run.
_STOP_GRACE = 2.0
#: Seconds to wait for killed actors to be gone.
_KILL_WAIT = 10.0


def ray_installed() -> bool:
    """Whether Ray can be imported (without importing it)."""
    return find_spec("ray") is not None


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`~spindle.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"backend='ray' runs stages on a Ray cluster, but Ray is not installed: {INSTALL_HINT}"
        ) from exc
    return ray


# -- the Ray session ----------------------------------------------------------------------


class _Session:
    """Who connected this process to Ray, and how many runs use it now.

    Ray has one connection per process, so this is per process too: the first run that
    needs Ray connects (``ray.init``) and the last one to end disconnects, if spindle
    was the one that connected. A Ray the program connected itself is left alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._ours = False

    def acquire(self, address: str | None) -> None:
        """Connect unless connected; count one more run using Ray."""
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                _init(ray, address)
                self._ours = True
            self._users += 1

    def release(self) -> None:
        """One run less; the last one shuts down a Ray that spindle connected."""
        ray = import_ray()
        with self._lock:
            self._users -= 1
            if self._users > 0 or not self._ours:
                return
            self._ours = False
        ray.shutdown()


_SESSION = _Session()


def estimated_workers() -> int:
    """How many actors a stage of ``workers`` 0 will have, without connecting: the
    CPUs of the cluster this process is connected to, else of this machine (those of
    the local Ray a run would start). A stage's bound is sized with it."""
    if "ray" in sys.modules and ray_installed():
        ray = import_ray()
        if ray.is_initialized():
            return _cluster_cpus(ray)
    return _local_cpus()


def _init(ray: ModuleType, address: str | None) -> None:
    """``ray.init``, keeping this process's SIGINT and SIGTERM handlers (Ray installs
    its own for SIGTERM; spindle's command line stops runs on both)."""
    import logging

    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        if address is None:
            ray.init(num_cpus=_local_cpus(), logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise SpindleError(
            f"could not start or reach {where}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cluster_cpus(ray: ModuleType) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- the driver's view of one actor -------------------------------------------------------


@dataclass(slots=True)
class _Death:
    """How an actor ended, decided once, at the first news of it."""

    #: Its node is gone: nothing it ran is suspected.
    node_lost: bool
    #: The batch it was running (a sync actor runs them in order), if any.
    running: int | None
    #: Ray's words, shortened, for failure messages.
    reason: str


class _Actor:
    """One actor of the stage: a slot's current occupant."""

    __slots__ = (
        "death",
        "handle",
        "index",
        "items_assigned",
        "items_done",
        "max_jobs",
        "node",
        "pending",
        "pid",
        "ready",
        "retiring",
        "started",
        "timed_out",
        "timer",
    )

    def __init__(self, index: int, handle: Any, max_jobs: int | None) -> None:
        self.index = index
        self.handle = handle
        self.max_jobs = max_jobs
        self.items_assigned = 0
        #: Batches sent and not answered, by id: the futures of their ObjectRefs.
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.started = False
        self.retiring = False
        self.death: _Death | None = None
        self.pid: int | None = None
        self.node: str | None = None
        self.items_done = 0
        #: ``(batch id, item index)`` of the item it was killed for (-1: not known).
        self.timed_out: tuple[int, int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.death is None

    @property
    def usable(self) -> bool:
        limit = self.max_jobs
        return (
            self.death is None
            and self.started
            and not self.retiring
            and (limit is None or self.items_assigned < limit)
        )


def _succeeded(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _reason(text: str) -> str:
    """The part of a Ray death message that says why, on one line."""
    for marker in ("The actor died because", "The actor is dead because"):
        at = text.find(marker)
        if at >= 0:
            text = text[at:]
            break
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- the executor -------------------------------------------------------------------------


class RayExecutor(Executor):
    """Runs a stage's function on ``workers`` Ray actors (default: one per CPU of the
    cluster)."""

    def __init__(self, spec: WorkSpec, *, prefetch: int = 2) -> None:
        self.spec = spec
        self._ray = ray = import_ray()
        self._address = spec.ray_address
        self._acquired = False
        workers = spec.workers
        if workers < 1:
            if ray.is_initialized():
                workers = _cluster_cpus(ray)
            elif self._address is None:
                workers = _local_cpus()  # the local Ray that prepare() will start
            else:
                # Joining a cluster whose size only it knows: connect now, since the
                # stage's windows are sized from its actors before the run starts.
                _SESSION.acquire(self._address)
                self._acquired = True
                workers = _cluster_cpus(ray)
        self.workers = workers
        self.is_async = spec.is_async
        self.timeout = spec.timeout
        self.capacity = workers * (spec.concurrency if spec.is_async else prefetch)
        batch_size = spec.batch_size
        if self.is_async and batch_size is None:
            batch_size = 1
        max_size = spec.max_batch
        if spec.max_jobs_per_worker is not None:
            max_size = min(max_size, spec.max_jobs_per_worker)
            batch_size = min(batch_size, max_size) if batch_size is not None else None
        self._batching = AdaptiveBatch(target=BATCH_TARGET, max_size=max_size, fixed=batch_size)
        self._track = self.timeout is not None and not self.is_async
        self._config = WorkerConfig(
            fn=spec.fn,
            flat=spec.flat,
            is_async=spec.is_async,
            concurrency=max(1, spec.concurrency),
            stage=spec.name,
            timeout=self.timeout,
            init=spec.init,
            memory_limit=spec.max_memory_per_worker,
            reporter=spec.reporter,
            # A stage's setup (the run's cache), where this version of spindle has one.
            **({"setup": setup} if (setup := getattr(spec, "setup", None)) else {}),
        )
        self.reports = (
            ReportBook(spec.name, spec.merge_reports) if spec.reporter is not None else None
        )
        self._blob: bytes | None = None
        self._config_ref: Any = None
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._actors: list[_Actor] = []
        self._ids = itertools.count(1)
        self._names = itertools.count(1)
        self._run_id = uuid.uuid4().hex[:8]
        self._route = spec.route
        self._ring = HashRing(range(workers)) if spec.route is not None else None
        self._slot_restarts: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Event | None = None
        self._closing = False
        self._broken: SpindleError | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()
        self.restarts = 0
        self.crashes = 0
        self.timeouts = 0
        self.lost = 0
        self.retired = 0

    def __repr__(self) -> str:
        alive = sum(a.alive for a in self._actors)
        busy = sum(len(a.pending) for a in self._actors)
        return f"<RayExecutor {self.spec.name!r}: {alive} actors, {busy} batches in flight>"

    def batch_size(self) -> int:
        return self._batching.size

    def stats(self) -> dict[str, Any]:
        return {
            "workers": sum(a.alive and a.started for a in self._actors),
            "restarts": self.restarts,
            "crashes": self.crashes,
            "timeouts": self.timeouts,
            "lost": self.lost,
            "retired": self.retired,
            "nodes": len({a.node for a in self._actors if a.alive and a.node}),
            "batch_size": self._batching.size,
            "cost_per_item": self._batching.cost_per_item,
        }

    def report(self) -> Report | None:
        return self.reports.merged() if self.reports is not None else None

    # -- starting ------------------------------------------------------------------

    def _pickle_config(self) -> bytes:
        if self._blob is None:
            try:
                blob = cloudpickle.dumps(self._config, protocol=PROTOCOL)
            except Exception as exc:
                raise SpindleError(
                    f"the function of stage {self.spec.name!r} ({short_repr(self.spec.fn)}) "
                    "(or its init function) cannot be sent to Ray actors: "
                    f"{type(exc).__name__}: {exc}. It must be picklable with cloudpickle "
                    "(functions, lambdas and closures over plain data are); a closure over "
                    "a lock, socket or open file is not: create such resources inside the "
                    "function, or in init."
                ) from exc
            from ._ray_actor import pack_config

            self._blob = pack_config(blob)
        return self._blob

    def prepare(self) -> None:
        blob = self._pickle_config()  # fail early, in the caller, if the function cannot travel
        if not self._acquired:
            _SESSION.acquire(self._address)
            self._acquired = True
        from ._ray_actor import AsyncBatchActor, SyncBatchActor, TrackedBatchActor

        ray = self._ray
        # Each actor holds a CPU, or a share of one when there are more actors than
        # CPUs: Ray places them where there is room (never on a node without CPUs).
        options: dict[str, Any] = {
            "num_cpus": min(1.0, _cluster_cpus(ray) / self.workers),
            "max_restarts": 0,
            "max_task_retries": 0,
            # One actor per node before two on any: a node lost costs the fewest.
            "scheduling_strategy": "SPREAD",
        }
        if self.is_async:
            self._actor_class = ray.remote(AsyncBatchActor)
            options["max_concurrency"] = max(1, self.spec.concurrency)
        elif self._track:  # progress() answers from a thread of its own
            self._actor_class = ray.remote(concurrency_groups={"control": 1})(TrackedBatchActor)
        else:
            self._actor_class = ray.remote(SyncBatchActor)
        self._actor_options = options
        self._config_ref = ray.put(blob)  # one copy in the object store for every actor

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._free = asyncio.Event()
        try:
            actors = [self._launch(slot) for slot in range(self.workers)]
            for a in actors:
                assert a.ready is not None
                a.ready.add_done_callback(_consume)
            async with asyncio.timeout(_START_TIMEOUT):
                for a in actors:
                    assert a.ready is not None
                    await a.ready
            first = next((a for a in actors if not a.started), None)
            if first is not None:  # every start error is raised by its ready task
                raise SpindleError(f"a Ray actor of stage {self.spec.name!r} did not start")
        except TimeoutError:
            await self.aclose(cancel=True)
            raise SpindleError(
                f"the Ray actors of stage {self.spec.name!r} did not start within "
                f"{_START_TIMEOUT:g} s: does the cluster have room for {self.workers} of them "
                f"({_cluster_cpus(self._ray)} CPUs, each actor takes one, or a share); with "
                "several Ray stages, give them workers= that fit together"
            ) from None
        except BaseException:
            await self.aclose(cancel=True)
            raise

    def _launch(self, slot: int) -> _Actor:
        """Create an actor for ``slot``; its ``ready`` task says when it has started."""
        assert self._loop is not None and self._actor_class is not None
        name = f"spindle-{self.spec.name}-{self._run_id}-{next(self._names)}"
        handle = self._actor_class.options(**self._actor_options, name=name).remote(
            self._config_ref
        )
        actor = _Actor(slot, handle, self.spec.max_jobs_per_worker)
        self._actors.append(actor)
        actor.ready = self._loop.create_task(self._await_start(actor))
        return actor

    async def _await_start(self, actor: _Actor) -> None:
        from ._ray_actor import FATAL

        RayActorError = self._ray.exceptions.RayActorError
        try:
            kind, pid, node, error = await actor.handle.start.remote()
        except RayActorError as exc:
            err = WorkerStartError(
                f"a Ray actor of stage {self.spec.name!r} died while starting: {_reason(str(exc))}"
            )
            self._start_failed(actor, err)
            raise err from None
        actor.pid, actor.node = pid, node
        if kind == FATAL:
            where, name, message, text = error
            stage = self.spec.name
            if where == "init":
                err = WorkerStartError(
                    f"the init function of stage {stage!r} failed in a Ray actor: {name}: {message}"
                )
            else:
                err = WorkerStartError(
                    f"a Ray actor of stage {stage!r} could not load the function: {name}: "
                    f"{message}. The actor imports the function's module by name: install it "
                    "on every node (or ship it with Ray's runtime_env), or define the function "
                    "in the script that runs the pipeline."
                )
            err.__cause__ = RemoteTraceback(text)
            self._start_failed(actor, err)
            raise err
        actor.started = True
        assert self._free is not None
        self._free.set()

    def _start_failed(self, actor: _Actor, err: SpindleError) -> None:
        """An actor that never started is not replaced (that could loop); the run fails
        when none is left to do the work."""
        self._gone(actor, _Death(False, None, str(err)))
        self._kill(actor)
        if not self._closing and not any(a.alive for a in self._actors):
            self._broken = err
        if self._free is not None:
            self._free.set()

    def _replace(self, slot: int) -> None:
        """Start an actor in ``slot`` (the place of one that died or retires)."""
        self.restarts += 1
        self._slot_restarts[slot] = self._slot_restarts.get(slot, 0) + 1
        actor = self._launch(slot)
        assert actor.ready is not None
        # A replacement that fails to start is dropped (see _start_failed).
        actor.ready.add_done_callback(_consume)

    # -- dispatch -------------------------------------------------------------------

    def _routed(self, items: list[Any]) -> _Actor | None:
        assert self._ring is not None and self._route is not None
        try:
            key = self._route(items[0])
        except Exception:
            return None
        usable = {a.index: a for a in self._actors if a.usable}
        slot = self._ring.place(key, usable)
        return None if slot is None else usable[slot]

    async def _pick(self, items: list[Any]) -> _Actor:
        assert self._free is not None
        while True:
            best: _Actor | None = None
            if self._ring is not None and len(items) == 1:
                best = self._routed(items)
            if best is None:
                best = least_loaded(self._actors)
            if best is not None:
                return best
            if self._broken is not None:
                raise self._broken
            if self._closing:
                raise SpindleError(f"stage {self.spec.name!r} is closing")
            self._free.clear()
            await self._free.wait()

    # -- running --------------------------------------------------------------------

    async def run(self, items: list[Any]) -> Outcome:
        try:
            payload = pickle.dumps(items, protocol=PROTOCOL)
        except Exception:
            return await self._run_split(items, unpicklable=True)
        return await self._send(items, payload, suspect=False)

    async def _send(self, items: list[Any], payload: bytes, *, suspect: bool) -> Outcome:
        """Send one batch until an actor answers for it; see the module's "Faults"."""
        from ._ray_actor import BAD

        assert self._loop is not None
        errors = self._ray.exceptions
        while True:
            actor = await self._pick(items)
            ident = next(self._ids)
            ref = actor.handle.run.remote(ident, payload)
            fut: asyncio.Future[Any] = asyncio.wrap_future(ref.future())
            del ref
            actor.pending[ident] = fut
            actor.items_assigned += len(items)
            if self._track and actor.timer is None:
                self._watch(actor, self.timeout)
            verdict: tuple[str, int] | None = None
            try:
                code, data, report = await fut
            except errors.RayActorError as exc:
                verdict = self._on_death(actor, ident, exc)
            except errors.RayTaskError as exc:  # the actor's own code failed: not the items'
                verdict = ("broken", 0)
                data = f"{type(exc).__name__}: {_reason(str(exc))}"
            except errors.RayError:  # the result was lost with its node's object store
                verdict = ("again", 0)
            finally:
                actor.pending.pop(ident, None)
                if not actor.pending and actor.timer is not None:
                    actor.timer.cancel()
                    actor.timer = None
            if verdict is None:
                break
            what, index = verdict
            if what == "again":
                continue
            if what == "timeout":
                assert self.timeout is not None
                if index < 0 and len(items) > 1:  # it could not say which: find out alone
                    return await self._run_split(items)
                index = max(index, 0)
                detail = "; its worker process was killed and replaced (a Ray actor)"
                failed = timeout_failure(items[index], self.timeout, self.spec.name, detail)
                return await self._after_fault(items, index, failed)
            if what == "crashed":
                if len(items) > 1:
                    return await self._run_split(items, suspect=True)
                if not suspect:
                    suspect = True  # once more, on another actor: it may not be its fault
                    continue
                assert actor.death is not None
                msg = f"the Ray actor running this item died: {actor.death.reason}"
                failure = Failure(items[0], "WorkerCrashed", msg, "", 1, self.spec.name)
                return Outcome([failure], 1)
            msg = f"the Ray actor failed running this batch: {data}"
            return Outcome(
                [Failure(x, "WorkerCrashed", msg, "", 1, self.spec.name) for x in items],
                len(items),
            )
        if report is not None:
            self._on_report(actor, report)
        if code == BAD:
            if len(items) > 1:
                return await self._run_split(items)
            msg = (
                f"input {short_repr(items[0])} could not be unpickled in the Ray actor "
                f"({data}); its type must be importable there"
            )
            return Outcome([Failure(items[0], "Unpicklable", msg, "", 1, self.spec.name)], 1)
        return self._outcome(actor, items, data)

    async def _after_fault(self, items: list[Any], index: int, failed: Failure) -> Outcome:
        """Item ``index`` timed out and its actor was killed: it fails, the others of the
        batch run again (those before it had run, but their results died with it)."""
        before = await self.run(items[:index]) if index else Outcome([], 0)
        rest = items[index + 1 :]
        after = await self.run(rest) if rest else Outcome([], 0)
        return Outcome(
            [*before.results, failed, *after.results], before.failures + 1 + after.failures
        )

    async def _run_split(
        self, items: list[Any], *, unpicklable: bool = False, suspect: bool = False
    ) -> Outcome:
        results: list[Any] = []
        failures = 0
        for item in items:
            try:
                payload = pickle.dumps([item], protocol=PROTOCOL)
            except Exception as exc:
                msg = (
                    f"input {short_repr(item)} cannot be pickled to send it to a Ray actor "
                    f"({type(exc).__name__}: {exc}); pass plain data (str, numbers, lists, "
                    "dicts, dataclasses)"
                )
                results.append(Failure(item, "Unpicklable", msg, "", 1, self.spec.name))
                failures += 1
                continue
            one = await self._send([item], payload, suspect=suspect)
            results.extend(one.results)
            failures += one.failures
        return Outcome(results, failures)

    def _outcome(self, actor: _Actor, items: list[Any], data: bytes) -> Outcome:
        stage = self.spec.name
        try:
            results, errors, seconds, rss = pickle.loads(data)
        except BaseException as exc:  # a __setstate__ may raise anything, SystemExit too
            msg = f"the results could not be unpickled in the driver ({type(exc).__name__}: {exc})"
            return Outcome(
                [Failure(x, "Unpicklable", msg, "", 1, stage) for x in items], len(items)
            )
        self._batching.observe(len(items), seconds)
        self._after_batch(actor, len(items), rss)
        for i, (name, message, text, blob) in errors.items():
            exc_obj: BaseException | None = None
            if blob is not None:
                with contextlib.suppress(BaseException):
                    exc_obj = pickle.loads(blob)
            results[i] = Failure(items[i], name, message, text, 1, stage, exc_obj)
        return Outcome(results, len(errors), seconds)

    def _on_report(self, actor: _Actor, payload: bytes) -> None:
        if self.reports is None:
            return
        try:
            report = pickle.loads(payload)
        except Exception as exc:
            warnings.warn(
                f"a report of stage {self.spec.name!r} could not be unpickled in the "
                f"driver ({type(exc).__name__}: {exc}); reporters should return plain data",
                RuntimeWarning,
                stacklevel=1,
            )
            return
        self.reports.update(actor, report)

    # -- deaths ---------------------------------------------------------------------

    def _on_death(self, actor: _Actor, ident: int, exc: BaseException) -> tuple[str, int]:
        """What the death of ``actor`` means for batch ``ident`` it had: run it again,
        it crashed (it was running), or it timed out (and which item)."""
        if actor.death is None:
            text = str(exc)
            node_lost = "node has died" in text or self._node_gone(actor.node)
            running = min((i for i, f in actor.pending.items() if not _succeeded(f)), default=None)
            self._gone(actor, _Death(node_lost, running, _reason(text)))
            if not self._closing and actor.started:
                if actor.timed_out is not None:
                    self.timeouts += 1
                elif node_lost:
                    self.lost += 1
                elif not actor.retiring:
                    self.crashes += 1
                if not actor.retiring:
                    self._replace(actor.index)
        death = actor.death
        assert death is not None
        if actor.timed_out is not None:
            batch, index = actor.timed_out
            return ("timeout", index) if batch == ident else ("again", 0)
        if death.node_lost or self._closing:
            return "again", 0
        if self.is_async or ident == death.running:
            return "crashed", 0
        return "again", 0

    def _node_gone(self, node: str | None) -> bool:
        if node is None:
            return False
        with contextlib.suppress(Exception):
            for info in self._ray.nodes():
                if info.get("NodeID") == node:
                    return not info.get("Alive", True)
        return False

    def _gone(self, actor: _Actor, death: _Death) -> None:
        """Forget an actor that has ended (its last report counts for good)."""
        if actor.death is not None:
            return
        actor.death = death
        if actor.timer is not None:
            actor.timer.cancel()
            actor.timer = None
        if self.reports is not None:
            self.reports.end(actor)
        with contextlib.suppress(ValueError):
            self._actors.remove(actor)
        if self._free is not None:
            self._free.set()

    def _kill(self, actor: _Actor) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(actor.handle, no_restart=True)

    # -- the timeout watchdog (sync actors) -------------------------------------------

    def _watch(self, actor: _Actor, delay: float | None) -> None:
        assert self._loop is not None and delay is not None
        actor.timer = self._loop.call_later(max(delay, 0.0), self._check, actor)

    def _check(self, actor: _Actor) -> None:
        actor.timer = None
        if actor.alive and actor.pending and not self._closing:
            self._spawn(self._probe(actor))

    async def _probe(self, actor: _Actor) -> None:
        """Is the item ``actor`` is running past its deadline? Kill the actor if so."""
        timeout = self.timeout
        assert timeout is not None
        try:
            async with asyncio.timeout(_PROBE_LIMIT):
                ident, index, elapsed = await actor.handle.progress.remote()
        except TimeoutError:
            # No answer: the job holds the interpreter (a long call into C that keeps
            # the GIL). Which item is not known; its batch runs again item by item.
            if actor.alive and actor.pending:
                actor.timed_out = (min(actor.pending), -1)
                self._kill(actor)
            return
        except self._ray.exceptions.RayError:
            return  # it died meanwhile: its batches learn of it
        if not actor.alive or not actor.pending or actor.timer is not None:
            return
        if ident != min(actor.pending):
            self._watch(actor, timeout / 4)  # the oldest batch has not started yet
            return
        overdue = elapsed - timeout
        if overdue < 0:
            self._watch(actor, -overdue)
            return
        actor.timed_out = (ident, index)
        self._kill(actor)

    # -- worker life cycle ------------------------------------------------------------

    def _after_batch(self, actor: _Actor, n_items: int, rss: int | None) -> None:
        actor.items_done += n_items
        limit_jobs = self.spec.max_jobs_per_worker
        limit_rss = self.spec.max_memory_per_worker
        if actor.retiring or self._closing or not actor.alive:
            return
        if (limit_jobs is not None and actor.items_done >= limit_jobs) or (
            limit_rss is not None and rss is not None and rss >= limit_rss
        ):
            actor.retiring = True
            self.retired += 1
            self._replace(actor.index)
            self._spawn(self._retire(actor), self._retiring)

    async def _retire(self, actor: _Actor) -> None:
        """Once the batches sent to a retiring actor are answered: its last report and
        ``init``'s teardown, then it is killed (its replacement is already starting)."""
        if actor.pending:
            await asyncio.wait(list(actor.pending.values()))
        await self._stop_actors([actor])
        self._gone(actor, _Death(False, None, "retired"))
        self._kill(actor)

    async def _stop_actors(self, actors: list[_Actor]) -> None:
        """Ask ``actors`` for their last report and to run ``init``'s teardown."""
        refs = [(a, a.handle.stop.remote()) for a in actors if a.alive and a.started]
        if not refs:
            return
        futures = [asyncio.wrap_future(ref.future()) for _, ref in refs]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE):
                await asyncio.wait(futures)
        for (actor, _), fut in zip(refs, futures, strict=True):
            if _succeeded(fut) and fut.result() is not None:
                self._on_report(actor, fut.result())
            elif not fut.done():
                fut.cancel()

    def _spawn(self, coro: Any, tasks: set[asyncio.Task[Any]] | None = None) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        into = self._tasks if tasks is None else tasks
        into.add(task)
        task.add_done_callback(into.discard)

    # -- observing ------------------------------------------------------------------

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        """One row per actor. Its ``stage`` names the node too (``"parse @ 3f2a1b9c"``),
        so that every view that groups workers by stage shows them per node; ``node``
        holds the full node id."""
        out: list[WorkerSnapshot] = []
        for a in list(self._actors):
            if not a.started:
                state = "starting"
            elif a.retiring:
                state = "retiring"
            else:
                state = "busy" if a.pending else "idle"
            where = f"{self.spec.name} @ {a.node[:8]}" if a.node else self.spec.name
            row = {
                "stage": where,
                "index": a.index,
                "pid": a.pid,
                "state": state,
                "jobs": a.items_done,
                "restarts": self._slot_restarts.get(a.index, 0),
                "node": a.node,
            }
            out.append(cast(WorkerSnapshot, row))
        return out

    # -- stopping -------------------------------------------------------------------

    async def aclose(self, *, cancel: bool) -> None:
        """Kill every actor of the stage, after a last report unless ``cancel``; wait
        until Ray has them dead; then let go of Ray (see :class:`_Session`)."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._retiring:  # retiring actors' last reports (bounded by their grace)
            if cancel:
                for task in self._retiring:
                    task.cancel()
            await asyncio.wait(list(self._retiring))
        actors = list(self._actors)
        for a in actors:
            if a.timer is not None:
                a.timer.cancel()
                a.timer = None
        try:
            if actors and not cancel:
                await self._stop_actors([a for a in actors if not a.pending])
            for a in actors:
                self._kill(a)
            await self._wait_dead(actors)
            for a in actors:
                if a.ready is not None and not a.ready.done():
                    a.ready.cancel()
                self._gone(a, _Death(False, None, "the run ended"))
        finally:
            if self._acquired:
                self._acquired = False
                await _in_thread(_SESSION.release)
            if self._free is not None:
                self._free.set()

    async def _wait_dead(self, actors: list[_Actor]) -> None:
        """Wait (bounded) until Ray reports each killed actor dead: a call to it fails."""
        if not actors:
            return
        refs = [a.handle.__ray_ready__.remote() for a in actors]
        futures = [asyncio.wrap_future(ref.future()) for ref in refs]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_KILL_WAIT):
                await asyncio.gather(*futures, return_exceptions=True)
        for fut in futures:
            if not fut.done():
                fut.cancel()


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve a finished task's exception, so that asyncio does not warn of it."""
    if not task.cancelled():
        task.exception()


async def _in_thread(fn: Any) -> None:
    """Run a blocking call (``ray.shutdown``) on a thread of its own, joined."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def work() -> None:
        try:
            fn()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done)

    thread = threading.Thread(target=work, name="spindle-ray-release")
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        thread.join()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


__all__ = ["INSTALL_HINT", "RayExecutor", "import_ray", "ray_installed"]
