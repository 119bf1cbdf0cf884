"""A concurrency limit that shrinks and grows while tasks wait on it (AIMD).

``asyncio.Semaphore`` cannot change its size, and adapting to a server that says "slow
down" needs exactly that. :class:`AdaptiveLimit` does additive increase, multiplicative
decrease, the rule TCP uses for its congestion window:

- ``decrease()`` (the other side is overloaded: an HTTP 429 or 503) halves the limit,
  never below one;
- ``increase()`` (a success) adds ``1 / limit``, so the limit grows by one slot after
  ``limit`` successes in a row, and never above its ``ceiling``.

So a limit drops fast when pressed and comes back slowly, probing for the rate the other
side can bear. Whole slots are admitted (``limit`` is the integer part)::

    limit 8 ──429──▶ 4 ──429──▶ 2 ──ok──▶ 2.5 ──ok──▶ 3 ──ok, ok, ok──▶ 4 ...

Waiters are served first come, first served: a released slot is handed straight to the
oldest waiter, and ``try_acquire`` never takes a slot while anyone waits, so nobody is
overtaken. A limit that shrank below the holders in flight admits nobody until enough of
them have left. The fetch job keeps one per host, and one that never adapts as its global
request limit (a fair FIFO semaphore).
"""

from __future__ import annotations

import asyncio
from collections import deque


class AdaptiveLimit:
    """An async context manager admitting at most ``limit`` holders at once.

    ``limit`` starts at ``ceiling``; :meth:`decrease` and :meth:`increase` move it
    between 1 and ``ceiling`` while holders and waiters come and go.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self._limit = float(ceiling)
        #: Holders now (it may exceed ``limit`` just after a decrease).
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Holders admitted at once now (between 1 and ``ceiling``)."""
        return int(self._limit)

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return sum(1 for w in self._waiters if not w.done())

    def decrease(self) -> None:
        """Multiplicative decrease: halve the limit, never below one."""
        self._limit = max(1.0, float(self.limit // 2))

    def increase(self) -> None:
        """Additive increase: one more slot after ``limit`` successes in a row."""
        if self._limit < self.ceiling:
            self._limit = min(float(self.ceiling), self._limit + 1.0 / self.limit)
            self._wake()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one; never waits."""
        if not self._waiters and self.in_flight < self._limit:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting behind the earlier waiters if none is free."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the oldest waiter, if any and if the limit allows, gets it."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"<AdaptiveLimit {self.limit} of {self.ceiling}: {self.in_flight} in flight, "
            f"{self.waiting} waiting>"
        )
