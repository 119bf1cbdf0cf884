"""Functions the tests run in workers (module level, so worker processes import them)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any


def square(x: int) -> int:
    return x * x


def tiny(x: int) -> int:
    return sum(i * i for i in range(50)) + x


def fail_on_multiples_of_7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"no multiples of 7, got {x}")
    return x * 2


async def async_square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


async def async_fail_on_3(x: int) -> int:
    await asyncio.sleep(0)
    if x == 3:
        raise KeyError(x)
    return x


def repeat(x: int) -> Iterator[int]:
    """A flat map: x copies of x."""
    yield from [x] * (x % 4)


async def arepeat(x: int) -> AsyncIterator[int]:
    for _ in range(x % 4):
        await asyncio.sleep(0)
        yield x


def pid_of(_: Any) -> int:
    return os.getpid()


def kill_self_on_5(x: int) -> int:
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def return_lock(x: int) -> Any:
    if x == 2:
        return threading.Lock()  # cannot be pickled back to the parent
    return x


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


class Unbuildable(Exception):
    """Pickles, but cannot be rebuilt: __init__ takes two arguments."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def raise_unbuildable(x: int) -> int:
    raise Unbuildable(x, x)
