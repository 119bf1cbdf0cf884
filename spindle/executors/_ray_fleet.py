"""The actors of one Ray stage's run, as the driver sees them: made, replaced, retired, killed.

::

    prepare()   the actor class and its options; the stage's config put once in the
                object store, for every actor
    start()     an actor in each of the ``workers`` slots; each answers ``start()`` with
       │        its pid and node, or the error of ``init`` or of loading the function;
       │        the run begins once all have started, or ``ALL_WAIT`` after the first
       │        has (a busy cluster may have no room for the others yet: they join as
       │        they start)
       │
       ├── it died       its Death is decided once, at the first news of it, and
       │                 a replacement starts in its slot (``restarts``)
       ├── it retires    it reached ``max_jobs_per_worker`` or ``max_memory_per_worker``:
       │                 a replacement starts at once; once its batches are answered it
       │                 gives its last report, runs init's teardown and is killed
       └── the run ends  a last report and init's teardown (unless cancelled), then
                         killed, and waited for until Ray has it dead

Placement. Each actor holds a CPU, or a share of one when there are more actors than
CPUs; Ray places them where there is room (never on a node without CPUs), one per node
before two on any, so that a node lost costs the fewest.

An actor that never started is not replaced (that could loop); the run fails when none
is left to do the work. The actors of a run are killed when it ends, Ctrl-C included,
and Ray ends them anyway with their driver.

The fleet records what happened to each actor; what a death means for the batches the
actor had (run again, split, failed) is the executor's call (``ray.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

from .._errors import RemoteTraceback, SpindleError
from ._handle import WorkerStartError
from ._ray_session import cluster_cpus
from ._reports import ReportBook
from .base import WorkerSnapshot
from .spec import WorkSpec

#: Seconds the actors of a run get to start (a cluster may have to place them first).
START_TIMEOUT = 120.0
#: Seconds a run waits for all its actors once one has started: then it goes on with
#: those started, and the others join as they start (a busy cluster may have no room
#: for all of them yet).
ALL_WAIT = 2.0
#: Seconds actors get for their last report and ``init``'s teardown at the end of a run.
_STOP_GRACE = 2.0
#: Seconds to wait for killed actors to be gone.
_KILL_WAIT = 10.0


@dataclass(slots=True)
class Death:
    """How an actor ended, decided once, at the first news of it."""

    #: Its node is gone: nothing it ran is suspected.
    node_lost: bool
    #: The batch it was running (a sync actor runs them in order), if any.
    running: int | None
    #: Ray's words, shortened, for failure messages.
    reason: str


class Actor:
    """One actor of the stage: a slot's current occupant."""

    __slots__ = (
        "alone",
        "death",
        "first",
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
        self.death: Death | None = None
        self.pid: int | None = None
        self.node: str | None = None
        self.items_done = 0
        #: ``(batch id, item index)`` of the item it was killed for (-1: not known).
        self.timed_out: tuple[int, int] | None = None
        #: The timeout watchdog's timer, while it is busy (see ``_ray_watch``).
        self.timer: asyncio.TimerHandle | None = None
        self.ready: asyncio.Task[None] | None = None
        #: Kept for one suspect item: nothing else is sent to it meanwhile.
        self.alone = False
        #: One of the run's first actors, not a replacement.
        self.first = False

    @property
    def alive(self) -> bool:
        return self.death is None

    @property
    def serves(self) -> bool:
        """It takes batches: alive, started, not retiring nor at its limit of jobs."""
        limit = self.max_jobs
        return (
            self.death is None
            and self.started
            and not self.retiring
            and (limit is None or self.items_assigned < limit)
        )

    @property
    def usable(self) -> bool:
        """Dispatch may send it a batch: it serves and is not kept for a suspect."""
        return self.serves and not self.alone

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def succeeded(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def reason(text: str) -> str:
    """The part of a Ray death message that says why, on one line."""
    for marker in ("The actor died because", "The actor is dead because"):
        at = text.find(marker)
        if at >= 0:
            text = text[at:]
            break
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


class Fleet:
    """The actors of one stage's run, their counts, and the tasks that tend them."""

    def __init__(
        self,
        ray: ModuleType,
        spec: WorkSpec,
        workers: int,
        reports: ReportBook | None,
        *,
        track: bool,
    ) -> None:
        self.ray = ray
        self.spec = spec
        self.workers = workers
        #: Each actor's latest report (with a stage ``reporter``).
        self.reports = reports
        #: Sync actors note the item they run, for the timeout watchdog.
        self._track = track
        #: The actors alive or starting; one that ended is dropped at once.
        self.actors: list[Actor] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Set when an actor starts or ends: dispatch waits on it when none is usable.
        self.free: asyncio.Event | None = None
        #: The run is ending: deaths are no longer counted, nor actors replaced.
        self.closing = False
        #: Why the run cannot go on: an actor of the run's start could not start, or
        #: no actor is left.
        self.broken: SpindleError | None = None
        #: The run's first actors are starting (their start errors break the run).
        self.starting = True
        self.restarts = 0
        self.crashes = 0
        self.timeouts = 0
        self.lost = 0
        self.retired = 0
        self._slot_restarts: dict[int, int] = {}
        self._names = itertools.count(1)
        self._run_id = uuid.uuid4().hex[:8]
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._config_ref: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retiring: set[asyncio.Task[Any]] = set()

    # -- starting ------------------------------------------------------------------

    def prepare(self, blob: bytes) -> None:
        """Make the actor class and its options; put ``blob`` (the packed config) in the
        object store, one copy for every actor."""
        from ._ray_actor import AsyncBatchActor, SyncBatchActor, TrackedBatchActor

        ray = self.ray
        # Each actor holds a CPU, or a share of one when there are more actors than
        # CPUs: Ray places them where there is room (never on a node without CPUs).
        options: dict[str, Any] = {
            "num_cpus": min(1.0, cluster_cpus(ray) / self.workers),
            "max_restarts": 0,
            "max_task_retries": 0,
            # One actor per node before two on any: a node lost costs the fewest.
            "scheduling_strategy": "SPREAD",
        }
        if self.spec.is_async:
            self._actor_class = ray.remote(AsyncBatchActor)
            options["max_concurrency"] = max(1, self.spec.concurrency)
        elif self._track:  # progress() answers from a thread of its own
            self._actor_class = ray.remote(concurrency_groups={"control": 1})(TrackedBatchActor)
        else:
            self._actor_class = ray.remote(SyncBatchActor)
        self._actor_options = options
        self._config_ref = ray.put(blob)  # one copy in the object store for every actor

    async def start(self) -> None:
        """Start an actor in every slot and wait until each has started, or, once one
        has, for :data:`ALL_WAIT` more: the run goes on with those started and the
        others join as they start. The first start error is raised (one that comes
        later breaks the run at its next dispatch); ``TimeoutError`` when none has
        started within :data:`START_TIMEOUT`."""
        loop = self.loop = asyncio.get_running_loop()
        self.free = asyncio.Event()
        actors = [self._launch(slot) for slot in range(self.workers)]
        waiting: set[asyncio.Task[None]] = set()
        for a in actors:
            assert a.ready is not None
            a.ready.add_done_callback(_consume)
            waiting.add(a.ready)
        all_by: float | None = None
        async with asyncio.timeout(START_TIMEOUT):
            while waiting:
                wait = None if all_by is None else max(0.0, all_by - loop.time())
                done, waiting = await asyncio.wait(
                    waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break  # ALL_WAIT has passed since the first started
                for task in done:
                    task.result()  # a start error
                if all_by is None:
                    all_by = loop.time() + ALL_WAIT
        self.starting = False

    def _launch(self, slot: int) -> Actor:
        """Create an actor for ``slot``; its ``ready`` task says when it has started."""
        assert self.loop is not None and self._actor_class is not None
        name = f"spindle-{self.spec.name}-{self._run_id}-{next(self._names)}"
        handle = self._actor_class.options(**self._actor_options, name=name).remote(
            self._config_ref
        )
        actor = Actor(slot, handle, self.spec.max_jobs_per_worker)
        actor.first = self.starting
        self.actors.append(actor)
        actor.ready = self.loop.create_task(self._await_start(actor))
        return actor

    async def _await_start(self, actor: Actor) -> None:
        from ._ray_actor import FATAL

        RayActorError = self.ray.exceptions.RayActorError
        try:
            kind, pid, node, error = await actor.handle.start.remote()
        except RayActorError as exc:
            err = WorkerStartError(
                f"a Ray actor of stage {self.spec.name!r} died while starting: {reason(str(exc))}"
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
        assert self.free is not None
        self.free.set()

    def _start_failed(self, actor: Actor, err: SpindleError) -> None:
        """An actor that never started is not replaced (that could loop). The run
        fails when it was one of the run's first actors (as its error is the run's
        start error), or when none is left to do the work."""
        first = actor.first
        self.gone(actor, Death(False, None, str(err)))
        self.kill(actor)
        if not self.closing and (first or not any(a.alive for a in self.actors)):
            self.broken = self.broken or err
        if self.free is not None:
            self.free.set()

    def _replace(self, slot: int) -> None:
        """Start an actor in ``slot`` (the place of one that died or retires)."""
        self.restarts += 1
        self._slot_restarts[slot] = self._slot_restarts.get(slot, 0) + 1
        actor = self._launch(slot)
        assert actor.ready is not None
        # A replacement that fails to start is dropped (see _start_failed).
        actor.ready.add_done_callback(_consume)

    # -- deaths ---------------------------------------------------------------------

    def died(self, actor: Actor, exc: BaseException) -> Death:
        """How ``actor``, which a call failed with ``exc``, died. At the first news of
        it: which batch it was running, whether its node is gone; it is counted and a
        replacement started."""
        if actor.death is None:
            text = str(exc)
            node_lost = "node has died" in text or self._node_gone(actor.node)
            running = min((i for i, f in actor.pending.items() if not succeeded(f)), default=None)
            self.gone(actor, Death(node_lost, running, reason(text)))
            if not self.closing and actor.started:
                if actor.timed_out is not None:
                    self.timeouts += 1
                elif node_lost:
                    self.lost += 1
                elif not actor.retiring:
                    self.crashes += 1
                if not actor.retiring:
                    self._replace(actor.index)
        assert actor.death is not None
        return actor.death

    def _node_gone(self, node: str | None) -> bool:
        if node is None:
            return False
        with contextlib.suppress(Exception):
            for info in self.ray.nodes():
                if info.get("NodeID") == node:
                    return not info.get("Alive", True)
        return False

    def gone(self, actor: Actor, death: Death) -> None:
        """Forget an actor that has ended (its last report counts for good)."""
        if actor.death is not None:
            return
        actor.death = death
        actor.cancel_timer()
        if self.reports is not None:
            self.reports.end(actor)
        with contextlib.suppress(ValueError):
            self.actors.remove(actor)
        if self.free is not None:
            self.free.set()

    def kill(self, actor: Actor) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor.handle, no_restart=True)

    # -- life cycle -----------------------------------------------------------------

    def after_batch(self, actor: Actor, n_items: int, rss: int | None) -> None:
        """Count a batch ``actor`` ran; retire it when it reached a limit."""
        actor.items_done += n_items
        limit_jobs = self.spec.max_jobs_per_worker
        limit_rss = self.spec.max_memory_per_worker
        if actor.retiring or self.closing or not actor.alive:
            return
        if (limit_jobs is not None and actor.items_done >= limit_jobs) or (
            limit_rss is not None and rss is not None and rss >= limit_rss
        ):
            actor.retiring = True
            self.retired += 1
            self._replace(actor.index)
            self.spawn(self._retire(actor), self._retiring)

    async def _retire(self, actor: Actor) -> None:
        """Once the batches sent to a retiring actor are answered: its last report and
        ``init``'s teardown, then it is killed (its replacement is already starting)."""
        if actor.pending:
            await asyncio.wait(list(actor.pending.values()))
        await self._stop_actors([actor])
        self.gone(actor, Death(False, None, "retired"))
        self.kill(actor)

    async def _stop_actors(self, actors: list[Actor]) -> None:
        """Ask ``actors`` for their last report and to run ``init``'s teardown."""
        refs = [(a, a.handle.stop.remote()) for a in actors if a.alive and a.started]
        if not refs:
            return
        futures = [asyncio.wrap_future(ref.future()) for _, ref in refs]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE):
                await asyncio.wait(futures)
        for (actor, _), fut in zip(refs, futures, strict=True):
            if succeeded(fut) and fut.result() is not None:
                self.take_report(actor, fut.result())
            elif not fut.done():
                fut.cancel()

    def take_report(self, actor: Actor, payload: bytes) -> None:
        """Keep ``actor``'s latest report (pickled by the actor)."""
        if self.reports is not None:
            self.reports.take(actor, payload, "driver")

    def spawn(
        self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[Any]] | None = None
    ) -> None:
        """Run ``coro`` as a task of the fleet's, cancelled (or, retiring, awaited) at the end."""
        assert self.loop is not None
        task = self.loop.create_task(coro)
        into = self._tasks if tasks is None else tasks
        into.add(task)
        task.add_done_callback(into.discard)

    # -- observing ------------------------------------------------------------------

    def snapshot(self) -> list[WorkerSnapshot]:
        """One row per actor, its ``stage`` naming its node too (``"parse @ 3f2a1b9c"``)."""
        out: list[WorkerSnapshot] = []
        for a in list(self.actors):
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

    async def wind_down(self, *, cancel: bool) -> list[Actor]:
        """Stop tending the actors: cancel the fleet's tasks, let retiring actors give
        their last reports (unless ``cancel``), stop the watchdog's timers. The actors
        left, to :meth:`end`."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._retiring:  # retiring actors' last reports (bounded by their grace)
            if cancel:
                for task in self._retiring:
                    task.cancel()
            await asyncio.wait(list(self._retiring))
        actors = list(self.actors)
        for a in actors:
            a.cancel_timer()
        return actors

    async def end(self, actors: list[Actor], *, cancel: bool) -> None:
        """Kill ``actors``, after a last report from the idle ones unless ``cancel``,
        and wait until Ray has them dead."""
        if actors and not cancel:
            await self._stop_actors([a for a in actors if not a.pending])
        for a in actors:
            self.kill(a)
        await self._wait_dead(actors)
        for a in actors:
            if a.ready is not None and not a.ready.done():
                a.ready.cancel()
            self.gone(a, Death(False, None, "the run ended"))

    async def _wait_dead(self, actors: list[Actor]) -> None:
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

    def wake(self) -> None:
        """Wake dispatch, waiting for an actor (to find that the run is over)."""
        if self.free is not None:
            self.free.set()


def _consume(task: asyncio.Task[None]) -> None:
    """Retrieve a finished task's exception, so that asyncio does not warn of it."""
    if not task.cancelled():
        task.exception()
