"""The Ray executor: a stage's batches on long-lived Ray actors anywhere in a cluster.

::

    slot coroutine                    driver (event loop)                    Ray actor
    ──────────────                    ───────────────────                    ─────────
    run(items) ── pickle(items) ──▶ actor by dispatch ─── run.remote() ──▶ call_batch(fn, items)
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
(:class:`~spindle.policies.batching.AdaptiveBatch`), the same dispatch (the stage's
``dispatch`` policy: least loaded, in turn, weighted, or the hash ring of a key), the
same per-item results and failures, retries and timeouts, ``init``,
``worker_state()`` and reports. Why actors and batches, not a Ray
task per item: a task costs the driver about half a millisecond, a hundred times a
tiny job; a long-lived actor also keeps what ``init`` made (a model, a connection)
for the whole run.

This module decides where each batch goes and what becomes of it; the rest of the
executor is in three modules beside it, none of which imports this one:

- ``_ray_session``: connecting to Ray (or starting a local one) and letting it go;
- ``_ray_fleet``: the actors, as the driver sees them: starting, replacing, retiring
  and killing them, their counts and snapshot rows;
- ``_ray_watch``: the timeout watchdog of sync actors;

and the actors themselves, on the other side, are in ``_ray_actor``.

Bounds. The stage runner calls ``run`` at most ``capacity`` times at once: two batches
per sync actor (one running, one waiting in the actor's queue), ``concurrency`` per
async actor. Each call awaits its one ObjectRef on the loop, so results stream back as
batches finish and nothing waits for the whole input; the driver holds at most
``capacity`` batches. Items and results travel as pickled bytes, inline when small and
through Ray's object store when large.

Faults. A batch whose actor died while it *waited* runs again elsewhere. The batch an
actor was *running* when it died is split into single items, which run again one by one
on an actor kept for them alone (nothing else is sent to it meanwhile): Ray may tell of
a death before the answer of a batch the actor had finished, so only an item that ran
alone is surely the one running when its actor died, and only such an item fails with
``WorkerCrashed``. So an item that kills its worker fails alone, while a worker killed
from outside costs nothing but time. When an actor's node is gone, every batch on it
runs again, none is suspected. Each dead actor is replaced (``restarts``). With a
``timeout``, a sync actor whose item is late is killed by the watchdog
(``_ray_watch``): the item fails with ``Timeout`` and the rest of its batch runs again.
Async actors enforce the timeout themselves, as deadlines on their loop.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
from typing import Any

import cloudpickle

from .._errors import SpindleError
from .._failure import Failure, short_repr
from ..policies.dispatch import least_loaded
from ._ray_fleet import START_TIMEOUT, Actor, Fleet, reason
from ._ray_session import (
    INSTALL_HINT,
    SESSION,
    cluster_cpus,
    estimated_workers,
    import_ray,
    local_cpus,
    ray_installed,
)
from ._ray_watch import Watchdog
from ._reports import Report, ReportBook
from ._worker import PROTOCOL
from .base import Executor, Outcome, WorkerSnapshot, around_fault, decode_results
from .loop import timeout_failure
from .spec import WorkSpec

#: Seconds of work a batch aims at: a call to an actor costs the driver about a
#: millisecond (the process executor's frame, tens of microseconds), so batches are
#: five times the local ones (see :class:`~spindle.policies.batching.AdaptiveBatch`).
BATCH_TARGET = 0.1
#: Calls a second the driver makes at most, whatever the number of actors: each costs
#: the driver about a millisecond of CPU (Ray's threads in it included; ``bench.ray``'s
#: scaling rows: 6,500-9,100 items of 10 ms a driver CPU second, batches of ten), so
#: with more than 20 actors batches grow past :data:`BATCH_TARGET` to keep the driver
#: at about a fifth of a core.
MAX_CALLS_PER_SECOND = 200.0


class Kept:
    """The actor kept for the suspects of one split (see ``RayExecutor._keep``)."""

    __slots__ = ("actor",)

    def __init__(self) -> None:
        self.actor: Actor | None = None


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
                workers = cluster_cpus(ray)
            elif self._address is None:
                workers = local_cpus()  # the local Ray that prepare() will start
            else:
                # Joining a cluster whose size only it knows: connect now, since the
                # stage's windows are sized from its actors before the run starts.
                SESSION.acquire(self._address)
                self._acquired = True
                workers = cluster_cpus(ray)
        self.workers = workers
        self.is_async = spec.is_async
        self.timeout = spec.timeout
        self.capacity = workers * (spec.concurrency if spec.is_async else prefetch)
        self._batching = spec.batching(max(BATCH_TARGET, workers / MAX_CALLS_PER_SECOND))
        track = self.timeout is not None and not self.is_async
        self._config = spec.worker_config()
        self.reports = (
            ReportBook(spec.name, spec.merge_reports) if spec.reporter is not None else None
        )
        self._fleet = Fleet(ray, spec, workers, self.reports, track=track)
        self._watchdog = (
            Watchdog(self._fleet, self.timeout) if track and self.timeout is not None else None
        )
        self._blob: bytes | None = None
        self._ids = itertools.count(1)
        self._dispatch = spec.dispatch.chooser(workers, spec.route)

    def __repr__(self) -> str:
        actors = self._fleet.actors
        alive = sum(a.alive for a in actors)
        busy = sum(len(a.pending) for a in actors)
        return f"<RayExecutor {self.spec.name!r}: {alive} actors, {busy} batches in flight>"

    def batch_size(self) -> int:
        return self._batching.size

    def stats(self) -> dict[str, Any]:
        fleet = self._fleet
        return {
            "workers": sum(a.alive and a.started for a in fleet.actors),
            "restarts": fleet.restarts,
            "crashes": fleet.crashes,
            "timeouts": fleet.timeouts,
            "lost": fleet.lost,
            "retired": fleet.retired,
            "nodes": len({a.node for a in fleet.actors if a.alive and a.node}),
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
            SESSION.acquire(self._address)
            self._acquired = True
        self._fleet.prepare(blob)

    async def start(self) -> None:
        try:
            await self._fleet.start()
        except TimeoutError:
            # The message asks the cluster its size: before closing, which may end Ray.
            message = (
                f"the Ray actors of stage {self.spec.name!r} did not start within "
                f"{START_TIMEOUT:g} s: does the cluster have room for {self.workers} of them "
                f"({cluster_cpus(self._ray)} CPUs, each actor takes one, or a share); with "
                "several Ray stages, give them workers= that fit together"
            )
            await self.aclose(cancel=True)
            raise SpindleError(message) from None
        except BaseException:
            await self.aclose(cancel=True)
            raise

    # -- dispatch -------------------------------------------------------------------

    async def _pick(self, items: list[Any]) -> Actor:
        fleet = self._fleet
        assert fleet.free is not None
        while True:
            if fleet.broken is not None:
                raise fleet.broken
            best = self._dispatch.pick(fleet.actors, items)
            if best is not None:
                return best
            if fleet.closing:
                raise SpindleError(f"stage {self.spec.name!r} is closing")
            fleet.free.clear()
            await fleet.free.wait()

    async def _keep(self, kept: Kept) -> Actor:
        """The actor kept for ``kept``'s suspects (sync stages): the one it has while
        that one serves, else the least loaded, to which nothing more is sent; it is
        returned once the batches it had are answered.

        Ray may tell of an actor's death before the answer of a batch that actor had
        finished, so with two batches on a dying actor the driver cannot be sure which
        one was running. A suspect that runs alone is the only candidate: an item fails
        ``WorkerCrashed`` only when its actor died with nothing else to run."""
        if kept.actor is not None and kept.actor.serves:
            return kept.actor
        fleet = self._fleet
        assert fleet.free is not None
        while True:
            if fleet.broken is not None:
                raise fleet.broken
            actor = least_loaded(fleet.actors)
            if actor is None:
                if fleet.closing:
                    raise SpindleError(f"stage {self.spec.name!r} is closing")
                fleet.free.clear()
                await fleet.free.wait()
                continue
            actor.alone = True
            kept.actor = actor
            while actor.serves and (busy := [f for f in actor.pending.values() if not f.done()]):
                await asyncio.wait(busy)
            if actor.serves:
                return actor
            self._release(kept)

    def _release(self, kept: Kept) -> None:
        """The actor kept for suspects takes any batch again."""
        if kept.actor is not None:
            kept.actor.alone = False
            kept.actor = None
            assert self._fleet.free is not None
            self._fleet.free.set()

    # -- running --------------------------------------------------------------------

    async def run(self, items: list[Any]) -> Outcome:
        try:
            payload = pickle.dumps(items, protocol=PROTOCOL)
        except Exception:
            return await self._run_split(items, unpicklable=True)
        return await self._send(items, payload, suspect=False)

    async def _send(
        self, items: list[Any], payload: bytes, *, suspect: bool, kept: Kept | None = None
    ) -> Outcome:
        """Send one batch until an actor answers for it; see the module's "Faults".
        A suspect of a sync stage runs on the actor ``kept`` for it (see :meth:`_keep`)."""
        from ._ray_actor import BAD

        assert self._fleet.loop is not None
        errors = self._ray.exceptions
        while True:
            actor = await (self._keep(kept) if kept is not None else self._pick(items))
            ident = next(self._ids)
            ref = actor.handle.run.remote(ident, payload)
            fut: asyncio.Future[Any] = asyncio.wrap_future(ref.future())
            del ref
            actor.pending[ident] = fut
            actor.items_assigned += len(items)
            if self._watchdog is not None:
                self._watchdog.arm(actor)
            verdict: tuple[str, int] | None = None
            try:
                code, data, report = await fut
            except errors.RayActorError as exc:
                verdict = self._on_death(actor, ident, exc)
            except errors.RayTaskError as exc:  # the actor's own code failed: not the items'
                verdict = ("broken", 0)
                data = f"{type(exc).__name__}: {reason(str(exc))}"
            except errors.RayError:  # the result was lost with its node's object store
                verdict = ("again", 0)
            finally:
                actor.pending.pop(ident, None)
                if not actor.pending:
                    actor.cancel_timer()
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
                return await around_fault(self, items, index, failed)
            if what == "crashed":
                if len(items) > 1 or not suspect:
                    # Each item once more, alone: one under which an actor dies again fails.
                    return await self._run_split(items, suspect=True)
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
            self._fleet.take_report(actor, report)
        if code == BAD:
            if len(items) > 1:
                return await self._run_split(items)
            msg = (
                f"input {short_repr(items[0])} could not be unpickled in the Ray actor "
                f"({data}); its type must be importable there"
            )
            return Outcome([Failure(items[0], "Unpicklable", msg, "", 1, self.spec.name)], 1)
        return self._outcome(actor, items, data)

    async def _run_split(
        self, items: list[Any], *, unpicklable: bool = False, suspect: bool = False
    ) -> Outcome:
        kept = Kept() if suspect and not self.is_async else None
        try:
            return await self._run_each(items, suspect, kept)
        finally:
            if kept is not None:
                self._release(kept)

    async def _run_each(self, items: list[Any], suspect: bool, kept: Kept | None) -> Outcome:
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
            one = await self._send([item], payload, suspect=suspect, kept=kept)
            results.extend(one.results)
            failures += one.failures
        return Outcome(results, failures)

    def _outcome(self, actor: Actor, items: list[Any], data: bytes) -> Outcome:
        decoded = decode_results(data, items, self.spec.name, "driver")
        if isinstance(decoded, Outcome):
            return decoded
        outcome, rss = decoded
        self._batching.observe(len(items), outcome.seconds)
        self._fleet.after_batch(actor, len(items), rss)
        return outcome

    # -- deaths ---------------------------------------------------------------------

    def _on_death(self, actor: Actor, ident: int, exc: BaseException) -> tuple[str, int]:
        """What the death of ``actor`` means for batch ``ident`` it had: run it again,
        it crashed (it was running), or it timed out (and which item)."""
        death = self._fleet.died(actor, exc)
        if actor.timed_out is not None:
            batch, index = actor.timed_out
            return ("timeout", index) if batch == ident else ("again", 0)
        if death.node_lost or self._fleet.closing:
            return "again", 0
        if self.is_async or ident == death.running:
            return "crashed", 0
        return "again", 0

    # -- observing ------------------------------------------------------------------

    # The counts of the process executor, kept by the fleet.
    @property
    def restarts(self) -> int:
        return self._fleet.restarts

    @property
    def crashes(self) -> int:
        return self._fleet.crashes

    @property
    def timeouts(self) -> int:
        return self._fleet.timeouts

    @property
    def lost(self) -> int:
        return self._fleet.lost

    @property
    def retired(self) -> int:
        return self._fleet.retired

    def workers_snapshot(self) -> list[WorkerSnapshot]:
        """One row per actor. Its ``stage`` names the node too (``"parse @ 3f2a1b9c"``),
        so that every view that groups workers by stage shows them per node; ``node``
        holds the full node id."""
        return self._fleet.snapshot()

    # -- stopping -------------------------------------------------------------------

    async def aclose(self, *, cancel: bool) -> None:
        """Kill every actor of the stage, after a last report unless ``cancel``; wait
        until Ray has them dead; then let go of Ray (see
        :class:`~spindle.executors._ray_session.Session`)."""
        fleet = self._fleet
        actors = await fleet.wind_down(cancel=cancel)
        try:
            await fleet.end(actors, cancel=cancel)
        finally:
            if self._acquired:
                self._acquired = False
                await SESSION.release_in_thread()
            fleet.wake()


__all__ = [
    "INSTALL_HINT",
    "RayExecutor",
    "estimated_workers",
    "import_ray",
    "ray_installed",
]
