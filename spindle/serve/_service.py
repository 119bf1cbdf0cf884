"""The server's state, on its event loop: admission, the jobs kept for ``/jobs``, outcomes.

Everything here runs on the HTTP loop, one thread, so nothing needs a lock: results
reach it as whole chunks hopped over from the run's collector thread
(:meth:`Service.finish_threadsafe`).

Admission bounds memory under any load: at most ``max_queue`` jobs are accepted and not
finished. A request that would go past it is refused at once (``429``) without its
body being parsed further, a streaming ``/run`` waits for room instead (it has already
begun answering). Finished jobs with an id are kept, for ``GET /jobs/{id}``, up to
``keep`` of them (the oldest go first; with a journal the journal still has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from typing import Any

from .._core.pipeline import Pipeline
from .._failure import Failure
from ._jobs import QUEUED, STOPPED, Job, Waiter, new_id
from ._runner import JobRunner
from ._store import JobStore, StoredJob

__all__ = ["Full", "Service"]

#: Finished jobs with an id kept in memory, at most.
KEEP = 100_000


class Full(Exception):
    """No room for the request's jobs: answer 429."""


class Service:
    """What the HTTP handlers call (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_queue: int,
        journal: str | None = None,
        keep: int = KEEP,
    ) -> None:
        self.max_queue = max_queue
        self.keep = keep
        self.runner = JobRunner(pipeline, self.finish_threadsafe)
        self.store = JobStore(journal) if journal is not None else None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Jobs accepted and not finished.
        self.active = 0
        #: Jobs with an id: unfinished ones, and the last ``keep`` finished ones.
        self.jobs: dict[str, Job] = {}
        self._finished_ids: deque[str] = deque()
        self.idem: OrderedDict[str, list[str]] = OrderedDict()
        #: Requests waiting for their own jobs (``/run``), for the stop to answer.
        self.waiting: dict[Waiter, list[Job]] = {}
        self._room: list[asyncio.Future[None]] = []
        self.stopping = False
        # Figures for /stats.
        self.started = time.time()
        self.requests = 0
        self.accepted = 0
        self.refused = 0
        self.done = 0
        self.failed = 0
        self.recovered = 0

    # -- start and stop -------------------------------------------------------------

    def start(self) -> None:
        """Start the run (forking its workers) and the journal; put back the jobs a
        previous server accepted and never finished. Call before the loop runs."""
        self.runner.start()
        if self.store is not None:
            self.store.start()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (the HTTP loop) from now on; resubmit the journal's
        unfinished jobs."""
        self.loop = loop
        if self.store is None:
            return
        jobs = []
        for job_id, idem, item in self.store.unfinished():
            job = Job(item, None, job_id, idem)
            self.jobs[job_id] = job  # its idempotency key is found in the journal
            jobs.append(job)
        if jobs:
            self.recovered = len(jobs)
            self.active += len(jobs)
            self.runner.submit(jobs)

    def begin_stop(self) -> None:
        """Refuse new work from now on (503)."""
        self.stopping = True
        for future in self._room:
            if not future.done():
                future.set_result(None)
        self._room.clear()

    def finish_stop(self, left: list[Job]) -> None:
        """The run is over: every job without an outcome gets one (``ServerStopping``),
        except with a journal, where jobs with an id stay accepted for the next start."""
        stopped: list[Job] = list(left)
        for jobs in list(self.waiting.values()):
            stopped.extend(j for j in jobs if not j.finished)
        for job in self.jobs.values():
            if not job.finished:
                stopped.append(job)
        seen: set[int] = set()
        for job in stopped:
            if id(job) in seen or job.finished:
                continue
            seen.add(id(job))
            job.finish(
                Failure(
                    job.item,
                    STOPPED,
                    "the server stopped before this job finished"
                    + ("; it runs when the server starts again" if self._kept(job) else ""),
                    "",
                    0,
                )
            )
        if self.runner.error is not None:
            for job in stopped:
                job.value.message += f" (the run failed: {self.runner.error!r})"

    def _kept(self, job: Job) -> bool:
        return self.store is not None and job.id is not None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # -- admission ------------------------------------------------------------------

    def room(self) -> int:
        return self.max_queue - self.active

    def admit(self, n: int) -> None:
        """Take room for ``n`` jobs, or raise :class:`Full`."""
        if self.active + n > self.max_queue:
            self.refused += 1
            raise Full
        self.active += n

    async def admit_some(self, n: int) -> int:
        """Take room for between 1 and ``n`` jobs, waiting for it if there is none;
        0 once the server is stopping."""
        while True:
            if self.stopping:
                return 0
            free = self.max_queue - self.active
            if free > 0:
                k = min(n, free)
                self.active += k
                return k
            assert self.loop is not None
            future = self.loop.create_future()
            self._room.append(future)
            await future

    def release(self, n: int) -> None:
        """``n`` admitted jobs will not be submitted after all."""
        self.active -= n
        self._wake_room()

    def _wake_room(self) -> None:
        if self._room:
            room, self._room = self._room, []
            for future in room:
                if not future.done():
                    future.set_result(None)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue's drain time at the recent
        pace, at least one."""
        elapsed = max(time.time() - self.started, 1e-3)
        pace = (self.done + self.failed) / elapsed
        return max(1, min(60, round(self.active / pace))) if pace > 0 else 1

    # -- submitting -----------------------------------------------------------------

    def run(self, items: list[Any], waiter: Waiter) -> list[Job]:
        """Jobs for ``items``, already admitted, submitted to the run."""
        jobs = [Job(item, waiter) for item in items]
        self.accepted += len(jobs)
        self.runner.submit(jobs)
        return jobs

    async def enqueue(self, items: list[Any], idem: str | None) -> tuple[list[str], bool]:
        """Accept ``items`` as jobs with ids (``POST /jobs``): durable first with a
        journal. Returns the ids, and whether they are new (False: the idempotency key
        was seen, and these are the ids it was given then)."""
        if idem is not None:
            known = self.find_idem(idem)
            if known:
                return known, False
        self.admit(len(items))
        if len(items) == 1:
            idems: list[str | None] = [idem]
        else:
            idems = [None if idem is None else f"{idem}#{i}" for i in range(len(items))]
        ids = [new_id() for _ in items]
        jobs = [Job(item, None, i, k) for item, i, k in zip(items, ids, idems, strict=True)]
        if idem is not None:  # before the commit: a repeat meanwhile gets these ids
            self._remember_idem(idem, ids)
        for job_id, job in zip(ids, jobs, strict=True):
            self.jobs[job_id] = job
        if self.store is not None:
            assert self.loop is not None
            try:
                await self.store.accept(jobs, self.loop)
            except BaseException:
                for job_id in ids:
                    self.jobs.pop(job_id, None)
                if idem is not None:
                    self.idem.pop(idem, None)
                self.release(len(jobs))
                raise
        self.accepted += len(jobs)
        self.runner.submit(jobs)
        return ids, True

    def _remember_idem(self, idem: str, ids: list[str]) -> None:
        self.idem[idem] = ids
        while len(self.idem) > self.keep:
            self.idem.popitem(last=False)

    def find_idem(self, idem: str) -> list[str]:
        known = self.idem.get(idem)
        if known:
            return list(known)
        if self.store is not None:
            return self.store.find_idem(idem)
        return []

    def job(self, job_id: str) -> Job | StoredJob | None:
        """The job ``job_id``: in memory, else as the journal has it, else None."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        if self.store is not None:
            return self.store.lookup(job_id)
        return None

    # -- outcomes -------------------------------------------------------------------

    def finish_threadsafe(self, jobs: list[Any], values: list[Any]) -> None:
        """The collector thread's hand-over: the chunk goes to the loop."""
        loop = self.loop
        if loop is None:  # results before the loop runs (none are submitted then)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(self.finish, jobs, values)

    def finish(self, jobs: list[Any], values: list[Any]) -> None:
        """Record a chunk of outcomes and wake the requests waiting for them."""
        kept: list[Job] = []
        n = failed = 0
        for job, value in zip(jobs, values, strict=True):
            if type(job) is not Job or job.finished:
                continue
            n += 1
            job.finish(value)
            if type(value) is Failure:
                failed += 1
            if job.id is not None:
                kept.append(job)
        self.active -= n
        self.done += n - failed
        self.failed += failed
        if kept:
            if self.store is not None:
                self.store.finish(kept)
            finished = self._finished_ids
            finished.extend(j.id for j in kept if j.id is not None)
            while len(finished) > self.keep:
                self.jobs.pop(finished.popleft(), None)
        self._wake_room()

    def stats(self) -> dict[str, Any]:
        """The server's own figures (the ``serve`` section of ``/stats``)."""
        queued = sum(1 for j in self.jobs.values() if j.state is QUEUED)
        section: dict[str, Any] = {
            "requests": self.requests,
            "accepted": self.accepted,
            "refused": self.refused,
            "active": self.active,
            "max_queue": self.max_queue,
            "done": self.done,
            "failed": self.failed,
            "jobs_kept": len(self.jobs),
            "jobs_queued": queued,
            "recovered": self.recovered,
            "stopping": self.stopping,
            "uptime": time.time() - self.started,
        }
        if self.store is not None:
            section["journal"] = {
                "path": self.store.path,
                "commits": self.store.commits,
                "rows": self.store.rows,
            }
        return section
