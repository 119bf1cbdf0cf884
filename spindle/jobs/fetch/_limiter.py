"""A concurrency limit that can shrink and grow while requests wait on it.

``asyncio.Semaphore`` cannot change its size, and AIMD needs exactly that: halve on
"slow down", grow by one after a window of successes. Slots are handed straight to
the oldest waiter on release, so waiters are served in order and a shrunken limit
simply lets the requests above it drain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class AdaptiveLimit:
    """An async context manager admitting at most ``limit`` holders at once."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self._limit = float(ceiling)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Holders admitted at once now (between 1 and ``ceiling``)."""
        return int(self._limit)

    @property
    def waiting(self) -> int:
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
