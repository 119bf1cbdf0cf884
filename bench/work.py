"""The jobs the benchmarks run, and the checksum their results are checked with.

Worker processes import this module to find the functions, so it stays small and
imports nothing beyond the standard library.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable, Iterator

#: Iterations of :func:`spin` per millisecond, measured once by the harness and
#: handed to every run through the environment so every runner does the same work.
LOOPS_ENV = "SPINDLE_BENCH_LOOPS_PER_MS"
LOOPS_PER_MS = int(os.environ.get(LOOPS_ENV, "5000"))

#: The items of the fault workload that kill their worker and that never return.
KILL_AT, HANG_AT = 100, 500

#: How long the async job waits, in seconds.
SLEEP = 0.005

_MASK = (1 << 61) - 1


def tiny(x: int) -> int:
    """A job so small that the cost of shipping it dominates (~3 us)."""
    return sum(i * i for i in range(50))


def tiny_cheap(x: int) -> int:
    """An almost free job: only the cost of moving the item is left."""
    return x + 1


def spin(x: int, loops: int) -> int:
    """Pure-Python CPU work, ``loops`` iterations of integer arithmetic."""
    acc = x
    for i in range(loops):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def medium(x: int) -> int:
    """About 20 ms of pure-Python CPU work."""
    return spin(x, 20 * LOOPS_PER_MS)


def flaky(x: int) -> int:
    """About 1 ms of work returning ``2 * x``; one item kills its worker, one never ends."""
    if x == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == HANG_AT:
        while True:
            pass
    spin(x, LOOPS_PER_MS)
    return 2 * x


def double(x: int) -> int:
    """The answer :func:`flaky` gives for the items it does not fail on."""
    return 2 * x


async def job(x: int) -> int:
    """An I/O-bound job: 5 ms of waiting."""
    await asyncio.sleep(SLEEP)
    return x


def identity(x: int) -> int:
    """The answer :func:`job` gives."""
    return x


def stream(n: int) -> Iterator[int]:
    """``range(n)`` as a generator: no length, read once, front to back."""
    yield from range(n)


def checksum(values: Iterable[int]) -> tuple[int, int]:
    """``(count, order-sensitive checksum)`` of a stream of ints, read once."""
    count = acc = 0
    for value in values:
        count += 1
        acc = (acc * 1_000_003 + value) & _MASK
    return count, acc
