"""Where policies read the time and wait: a clock that a test can replace.

Backoff, per-host spacing, robots.txt's Crawl-delay and a server's Retry-After are all
decisions of the form "not before then". Code that makes them reads ``clock.now()`` and
awaits ``clock.sleep(seconds)`` rather than ``loop.time()`` and ``asyncio.sleep``, so
that a test can run it on :class:`FakeClock`: virtual time, which leaps to the next
sleeper's deadline as soon as the event loop has nothing else to run. A test of a
thirty-second backoff then takes microseconds, and asserts exact instants instead of
"at least 0.3 s, give or take the machine's load".

- :class:`SystemClock` is the event loop's clock (``loop.time``, the clock of the
  loop's own timers) and ``asyncio.sleep``. Its ``now`` *is* the loop's bound
  ``time`` method, so code that keeps ``clock.now`` in an attribute pays what a
  direct ``loop.time()`` costs, and nothing more.
- :class:`FakeClock` keeps its sleepers in a heap; with ``autojump`` (the default) a
  watcher runs once per loop turn while anyone sleeps, and moves the time to the
  earliest deadline when no other callback is ready::

      clock.sleep(s) ──▶ heap of (now + s, order, future)
                                  │
      watcher, once per loop turn ┘ ── other callbacks ready? ── yes ──▶ look again next turn
                                           │ no: every task waits
                                           ▼
                              now = earliest deadline; wake the sleepers due

  Like trio's ``MockClock(autojump_threshold=0)``, "nothing else to run" includes a
  task waiting for real I/O or a thread: fake time does not wait for them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What a policy needs of time: the current instant, and a wait."""

    def now(self) -> float:
        """Seconds on a monotonic clock (only differences between two readings mean
        anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return ``seconds`` from now (at once, after letting others run, if
        ``seconds <= 0``)."""
        ...


class SystemClock:
    """The clock of an event loop (``loop.time()``) and ``asyncio.sleep``.

    Bound to one loop (the running one by default), since the loop's timers, which
    every other deadline of the same code uses, run on that loop's clock.
    """

    __slots__ = ("now",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        #: The loop's own bound ``time`` method: no call of ours in between.
        self.now: Callable[[], float] = (loop or asyncio.get_running_loop()).time

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return f"<SystemClock at {self.now():.3f}>"


class FakeClock:
    """Virtual time for tests: a sleep returns when the clock reaches its deadline.

    The time moves only when a test calls :meth:`advance` or, with ``autojump``,
    when every task is waiting (the loop has no callback ready): it then leaps to the
    earliest deadline, so sleepers wake in deadline order and no test waits for real
    time. Sleepers with the same deadline wake in the order they went to sleep.

    Autojump reads whether the event loop has callbacks ready, which asyncio's own
    loops show and uvloop's do not: on another loop, use ``autojump=False`` and
    :meth:`advance`.
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = True) -> None:
        self._now = float(start)
        self.autojump = autojump
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        #: The loop the autojump watcher is scheduled on, while anyone sleeps.
        self._watching: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        return self._now

    @property
    def sleeping(self) -> int:
        """Tasks sleeping on this clock now."""
        return sum(1 for _, _, waiter in self._sleepers if not waiter.done())

    @property
    def next_deadline(self) -> float | None:
        """When the next sleeper is due, if any sleeps."""
        deadlines = [when for when, _, waiter in self._sleepers if not waiter.done()]
        return min(deadlines, default=None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        if self.autojump and self._watching is not loop:
            ready = _ready_callbacks(loop)
            self._watching = loop
            loop.call_soon(self._watch, loop, ready)
        waiter: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), waiter))
        # A cancelled sleep cancels its future; the heap drops it when it comes up.
        await waiter

    def advance(self, seconds: float) -> None:
        """Move the time ``seconds`` on and wake every sleeper due by then."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds!r})")
        self._move_to(self._now + seconds)

    def _move_to(self, when: float) -> None:
        self._now = max(self._now, when)
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._now:
            _, _, waiter = heapq.heappop(sleepers)
            if not waiter.done():
                waiter.set_result(None)

    def _watch(self, loop: asyncio.AbstractEventLoop, ready: _Ready) -> None:
        """Once per loop turn while anyone sleeps: leap ahead if nothing else can run."""
        sleepers = self._sleepers
        while sleepers and sleepers[0][2].done():
            heapq.heappop(sleepers)
        if not sleepers or not self.autojump:
            self._watching = None
            return
        if not ready and not _timer_due(loop):
            self._move_to(sleepers[0][0])
        loop.call_soon(self._watch, loop, ready)

    def __repr__(self) -> str:
        return f"<FakeClock at {self._now:g}: {self.sleeping} sleeping>"


class _Ready(Protocol):
    def __len__(self) -> int: ...


def _ready_callbacks(loop: asyncio.AbstractEventLoop) -> _Ready:
    """The loop's queue of callbacks ready to run (asyncio's loops only)."""
    ready: _Ready | None = getattr(loop, "_ready", None)
    if ready is None:
        raise RuntimeError(
            f"FakeClock's autojump cannot see whether {type(loop).__name__} has callbacks "
            "ready (only asyncio's own event loops show it): use FakeClock(autojump=False) "
            "and advance() the time from the test"
        )
    return ready


def _timer_due(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether one of the loop's real timers is due: it runs next turn, so the loop is
    not idle even though no callback is ready yet."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return bool(scheduled) and scheduled[0].when() <= loop.time()
