"""Running one stage: slots take batches from the input channel, an emitter puts results out.

::

    input ──get(batch)──▶ slot 1 ─┐                 ┌──────────────┐
                          slot 2 ─┼─ executor.run ─▶│ done tickets │──emitter──▶ output
                          slot N ─┘                 └──────────────┘  (ticket order when
                                                                       ordered; else at once)

Each batch a slot takes gets the next *ticket* at the moment it is taken (no await
between the two), so ticket order is input order. With ``ordered=True`` the emitter
releases tickets in that order; the ``window`` caps how many tickets may be taken but
not yet emitted, which bounds the reorder buffer: when one item is slow, up to
``window`` later batches wait behind it and then the stage takes no new work until
it is done. With ``ordered=False`` results leave as soon as they are done and the
window only caps how much waits for a full output channel.

Retries: a failed item that the stage's retry policy accepts leaves the slot at
once; a retry task waits out the backoff (holding nothing), takes an execution
*permit* (there are ``capacity`` permits, shared with the slots, so retries never
add concurrency), runs the item again, and delivers the ticket when every retried
item of it has succeeded or given up.

Tags (a run ``with_inputs``): the input channel gives each batch's inputs as a list
beside the values, and the results leave with the same list (a flat stage repeats an
input's tag for each of its outputs); no pairs are built per item.

A :class:`~spindle.Failure` arriving from an earlier stage passes through untouched,
in its place. When ``stop_at_failure`` is set (the last stage, with
``on_error="raise"``), the emitter puts out the results before the first failure and
then closes the output channel with that failure's exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any, cast

from .._failure import Failure, short_repr
from ..executors.base import Executor, Outcome
from .channel import Channel
from .histogram import LatencyHistogram
from .snapshot import FailureSnapshot, StageSnapshot
from .stage import Stage, StageStats

#: A ticket's results ready to leave: (results, the inputs they came from when the run
#: is tagged, else None, how many results are failures).
_Ready = tuple[list[Any], list[Any] | None, int]


class StageRunner:
    def __init__(
        self,
        stage: Stage,
        executor: Executor,
        inp: Channel[Any],
        out: Channel[Any],
        *,
        ordered: bool,
        tagged: bool,
        stop_at_failure: Callable[[Failure], None] | None = None,
        window: int | None = None,
    ) -> None:
        self.stage = stage
        self.executor = executor
        self.inp = inp
        self.out = out
        self.ordered = ordered
        self.tagged = tagged
        self.stop_at_failure = stop_at_failure
        self.window = window or 2 * executor.capacity
        self.flat = stage.flat
        self._issued = 0
        self._emitted = 0
        # Results ready to leave, per ticket: (results, their tags or None, failures).
        self._ready: dict[int, _Ready] = {}
        self._ready_fifo: deque[_Ready] = deque()
        self._emitter_wake: asyncio.Future[None] | None = None
        self._room_waiters: list[asyncio.Future[None]] = []
        self._slots_left = 0
        #: Slots waiting for input (see :meth:`_share`).
        self._waiting = 0
        self.retry = stage.retry
        self._use_permits = stage.retry.retries > 0
        self._permits = executor.capacity
        self._permit_waiters: deque[asyncio.Future[None]] = deque()
        self._retrying: set[asyncio.Task[None]] = set()
        self.done = 0
        self.failed = 0
        self.retried = 0
        self.in_flight = 0
        self.latency = LatencyHistogram()
        self._latencies: list[float] = []
        self.recent_failures: deque[FailureSnapshot] = deque(maxlen=50)
        stage._last_run.attach(self)

    def finish(self) -> None:
        """The run is over: ``stage.stats()`` keeps its final counters, not the runner."""
        self.stage._last_run.detach(self)

    def stats(self) -> StageStats:
        extra = self.executor.stats()
        return StageStats(
            name=self.stage.name,
            kind=self.stage.kind,
            done=self.done,
            failed=self.failed,
            retried=self.retried,
            in_flight=self.in_flight,
            queued=len(self.inp),
            workers=int(extra.get("workers", self.stage.workers)),
            restarts=int(extra.get("restarts", 0)),
        )

    @property
    def bound(self) -> int:
        """Most items this stage holds at once, its input channel included."""
        per_ticket = self.stage.max_batch
        return self.inp.capacity + (self.window + self.executor.capacity) * per_ticket

    async def run(self) -> None:
        n = self.executor.capacity
        self._slots_left = n
        emitter = asyncio.create_task(self._emit(), name=f"spindle-emit-{self.stage.name}")
        slots = [
            asyncio.create_task(self._slot(), name=f"spindle-slot-{self.stage.name}")
            for _ in range(n)
        ]
        try:
            # Together: if the emitter fails, slots must not wait for window room forever.
            await asyncio.gather(*slots, emitter)
        finally:
            for task in (*slots, emitter, *self._retrying):
                task.cancel()
        self.out.close()

    # -- slots ---------------------------------------------------------------------

    async def _slot(self) -> None:
        try:
            await self._slot_loop()
        finally:
            self._slots_left -= 1
            self._wake_emitter()

    async def _slot_loop(self) -> None:
        inp = self.inp
        while True:
            while self._issued - self._emitted >= self.window:
                fut = asyncio.get_running_loop().create_future()
                self._room_waiters.append(fut)
                await fut
            self._waiting += 1
            try:
                values, tags = await inp.get_tagged(self._share)
            finally:
                self._waiting -= 1
            if not values:
                return
            ticket = self._issued  # taken together with the items: ticket order = input order
            self._issued += 1
            n = len(values)
            self.in_flight += n
            if self.tagged and tags is None:  # the source's items: their own inputs
                tags = values
            try:
                outcome = await self._execute(values)
            finally:
                self.in_flight -= n
            if outcome.failures and self._use_permits:
                again = [
                    i
                    for i, r in enumerate(outcome.results)
                    if type(r) is Failure and r is not values[i] and self.retry.should_retry(r)
                ]
                if again:
                    task = asyncio.create_task(self._retry(ticket, tags, values, outcome, again))
                    self._retrying.add(task)
                    del values, tags, outcome, task
                    continue
            self._deliver(ticket, tags, outcome)
            # Not held while waiting for the next batch: a run that waits long for
            # input (an executor's) would keep its last items and results alive.
            del values, tags, outcome

    def _share(self) -> int:
        """How many items a slot takes: the executor's batch size, unless what is
        queued would not give every waiting slot a full batch; then an even share.

        Without the share, a few items arriving at once would go as one batch to one
        worker while others sit idle, and a quick item could wait behind a slow one
        of its batch (a batch's results come back together)."""
        n = self.executor.batch_size()
        waiting = self._waiting
        if waiting > 1:
            queued = len(self.inp)
            if queued < n * waiting:
                return max(1, -(-queued // waiting))
        return n

    async def _run(self, items: list[Any]) -> Outcome:
        """``executor.run`` (under a permit when retries may add work), timed."""
        if not self._use_permits:
            outcome = await self.executor.run(items)
        else:
            await self._acquire()
            try:
                outcome = await self.executor.run(items)
            finally:
                self._release()
        self._time(len(items), outcome)
        return outcome

    def _time(self, n: int, outcome: Outcome) -> None:
        """Record a batch's latency: O(1) per batch, whatever its size."""
        if n == 1:
            # Single-item batches (io stages) are timed in bulk: record_many is several
            # times cheaper per value than record.
            pending = self._latencies
            pending.append(outcome.seconds if outcome.seconds > 0.0 else 0.0)
            if len(pending) >= 512:
                self._flush_latencies()
        elif n:
            self.latency.record_n(max(outcome.seconds, 0.0) / n, n)

    def _count(self, n: int, outcome: Outcome) -> None:
        """Count a batch's items as done or failed."""
        self.failed += outcome.failures
        self.done += n - outcome.failures

    def _flush_latencies(self) -> None:
        pending, self._latencies = self._latencies, []
        if pending:
            self.latency.record_many(pending)

    def _note_failures(self, results: list[Any]) -> None:
        """Keep the most recent failures of this stage for reports and dashboards."""
        now = time.time()
        name = self.stage.name
        for r in results:
            if type(r) is Failure and r.stage == name:
                self.recent_failures.append(
                    {
                        "time": now,
                        "stage": name,
                        "item": short_repr(r.item),
                        "error": r.error,
                        "message": r.message,
                        "traceback": r.traceback,
                    }
                )

    def snapshot(self) -> StageSnapshot:
        """This stage as plain data (the ``stages`` entries of a run's snapshot)."""
        self._flush_latencies()
        snap = cast(StageSnapshot, dataclasses.asdict(self.stats()))
        snap["latency"] = self.latency.snapshot()
        report = self.executor.report()
        if report is not None:
            snap["report"] = report
        return snap

    async def _acquire(self) -> None:
        if self._permits > 0 and not self._permit_waiters:
            self._permits -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._permit_waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # it was handed to us just as we were cancelled
            raise

    def _release(self) -> None:
        while self._permit_waiters:
            fut = self._permit_waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the permit passes straight to the waiter
                return
        self._permits += 1

    async def _retry(
        self,
        ticket: int,
        tags: list[Any] | None,
        items: list[Any],
        outcome: Outcome,
        again: list[int],
    ) -> None:
        """Run failed items again with backoff, then deliver their ticket."""
        results = list(outcome.results)
        failures = outcome.failures

        async def retry_one(i: int) -> None:
            nonlocal failures
            failure: Failure = results[i]
            while self.retry.should_retry(failure):
                await asyncio.sleep(self.retry.delay(failure.attempts))
                self.retried += 1
                self.in_flight += 1
                try:
                    result = (await self._run([items[i]])).results[0]
                finally:
                    self.in_flight -= 1
                if type(result) is Failure:
                    result.attempts = failure.attempts + 1
                    results[i] = failure = result
                    continue
                results[i] = result
                failures -= 1
                self.failed -= 1
                self.done += 1
                return

        try:
            await asyncio.gather(*(retry_one(i) for i in again))
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._retrying.discard(task)
        self._deliver(ticket, tags, Outcome(results, failures))

    async def _execute(self, items: list[Any]) -> Outcome:
        if Failure not in map(type, items):
            outcome = await self._run(items)
            self._count(len(items), outcome)
            return outcome
        # Failures from an earlier stage pass through in place; the rest runs.
        results: list[Any] = []
        failures = 0
        run: list[Any] = []
        for item in [*items, None]:
            if item is None or type(item) is Failure:
                if run:
                    part = await self._execute(run)
                    results.extend(part.results)
                    failures += part.failures
                    run = []
                if item is not None:
                    results.append([item] if self.flat else item)
                    failures += 1
            else:
                run.append(item)
        return Outcome(results, failures)

    def _deliver(self, ticket: int, tags: list[Any] | None, outcome: Outcome) -> None:
        results, failures = outcome.results, outcome.failures
        if failures:
            self._note_failures(results)
        outs, out_tags = results, tags
        if self.flat:
            outs = []
            for r in results:
                if type(r) is Failure:
                    outs.append(r)
                else:
                    outs.extend(r)
            if tags is not None:  # each output keeps the tag of the input it came from
                out_tags = []
                for tag, r in zip(tags, results, strict=True):
                    if type(r) is Failure:
                        out_tags.append(tag)
                    else:
                        out_tags += repeat(tag, len(r))
        if self.ordered:
            self._ready[ticket] = (outs, out_tags, failures)
            if ticket == self._emitted:
                self._wake_emitter()
        else:
            self._ready_fifo.append((outs, out_tags, failures))
            self._wake_emitter()

    # -- emitter -------------------------------------------------------------------

    def _wake_emitter(self) -> None:
        fut = self._emitter_wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _collect(self) -> tuple[list[_Ready], int]:
        """Result lists ready to leave, in order, and how many have failures."""
        chunks: list[_Ready] = []
        failures = 0
        if self.ordered:
            ready, nxt = self._ready, self._emitted
            while nxt in ready:
                entry = ready.pop(nxt)
                chunks.append(entry)
                failures += entry[2]
                nxt += 1
        else:
            fifo = self._ready_fifo
            while fifo:
                entry = fifo.popleft()
                chunks.append(entry)
                failures += entry[2]
        return chunks, failures

    async def _emit(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunks, failures = self._collect()
            if chunks:
                if failures and self.stop_at_failure is not None:
                    await self._emit_until_failure(chunks)
                    return
                for chunk, tags, _ in chunks:
                    await self.out.put(chunk, tags)
                    # Counted as emitted only once out: until then the emitter holds
                    # it, and the window must not let new work in on its account.
                    self._emitted += 1
                    waiters, self._room_waiters = self._room_waiters, []
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
                del chunks, chunk, tags  # not held while waiting for the next
                continue
            if (
                self._slots_left == 0
                and not self._retrying
                and not self._ready
                and not self._ready_fifo
            ):
                return
            self._emitter_wake = loop.create_future()
            await self._emitter_wake
            self._emitter_wake = None

    async def _emit_until_failure(self, chunks: list[_Ready]) -> None:
        assert self.stop_at_failure is not None
        items = [x for c, _, _ in chunks for x in c]
        tags = [t for _, c_tags, _ in chunks for t in (c_tags or ())] if self.tagged else None
        for i, value in enumerate(items):
            if type(value) is Failure:
                if i:
                    await self.out.put(items[:i], tags[:i] if tags is not None else None)
                self.out.close(value.to_exception())
                self.stop_at_failure(value)
                return
