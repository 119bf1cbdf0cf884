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


def tens(x: int) -> Iterator[int]:
    """A flat map: two outputs per input, each of which tells its input (// 10)."""
    yield x * 10
    yield x * 10 + 1


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


class Flaky(Exception):
    """A failure that goes away when tried again."""


def chaos(x: int, *, marks: str, big: int = 0) -> int:
    """A job with a fault injected at a few items (see test_faults)."""
    import ctypes

    if x == 100:
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 200:
        ctypes.string_at(0)  # segmentation fault
    if x == 300:
        while True:
            pass
    if x == 400:
        path = os.path.join(marks, "400")
        with open(path, "a") as f:
            f.write("x")
        with open(path) as f:
            if len(f.read()) < 3:
                raise Flaky("not yet")
    if x == 500 and big:
        _HOARD.append(bytearray(b"\x01") * big)  # written, so resident; kept alive
    return x * 3


_HOARD: list[bytearray] = []


def always_fails(x: int) -> int:
    raise Flaky(f"item {x} always fails")


async def async_always_fails(x: int) -> int:
    await asyncio.sleep(0)
    raise Flaky(f"item {x} always fails")


def permanent_failure(x: int) -> int:
    import spindle

    raise spindle.Permanent(f"item {x} is hopeless")


def spin_on_3(x: int) -> int:
    if x == 3:
        while True:
            pass
    return x


async def async_hang_on_3(x: int) -> int:
    if x == 3:
        await asyncio.sleep(3600)
    return x


def make_model() -> dict[str, int]:
    return {"pid": os.getpid(), "scale": 10}


def use_model(x: int) -> tuple[int, int]:
    import spindle

    model = spindle.worker_state()
    return model["pid"], x * model["scale"]


async def async_use_model(x: int) -> int:
    import spindle

    await asyncio.sleep(0)
    return x * spindle.worker_state()["scale"]  # type: ignore[no-any-return]


def broken_init() -> None:
    raise RuntimeError("model file missing")


def key_of(x: int) -> int:
    return x % 5


def pid_and_key(x: int) -> tuple[int, int]:
    return key_of(x), os.getpid()


def init_with_teardown() -> Iterator[dict[str, str]]:
    marks = os.environ["SPINDLE_TEST_MARKS"]
    yield {"marks": marks}
    with open(os.path.join(marks, f"closed-{os.getpid()}-{threading.get_ident()}"), "w"):
        pass


async def async_init_with_teardown() -> AsyncIterator[dict[str, str]]:
    marks = os.environ["SPINDLE_TEST_MARKS"]
    await asyncio.sleep(0)
    yield {"marks": marks}
    os.close(os.open(os.path.join(marks, f"aclosed-{os.getpid()}"), os.O_CREAT | os.O_WRONLY))


def marks_dir(_: int) -> str:
    import spindle

    return spindle.worker_state()["marks"]  # type: ignore[no-any-return]


async def async_marks_dir(_: int) -> str:
    import spindle

    await asyncio.sleep(0)
    return spindle.worker_state()["marks"]  # type: ignore[no-any-return]


def job_counter() -> dict[str, int]:
    """A worker's state for the report tests: how many jobs it ran."""
    return {"jobs": 0}


def count_job(x: int) -> int:
    import spindle

    spindle.worker_state()["jobs"] += 1
    return x


async def async_count_job(x: int) -> int:
    import spindle

    await asyncio.sleep(0)
    spindle.worker_state()["jobs"] += 1
    return x


def report_jobs(state: dict[str, int]) -> dict[str, Any]:
    """A reporter: jobs in all, and per worker (process and thread)."""
    worker = f"{os.getpid()}-{threading.get_ident()}"
    return {"jobs": state["jobs"], "by_worker": {worker: state["jobs"]}}


def broken_reporter(state: Any) -> dict[str, Any]:
    raise RuntimeError("the reporter has a bug")


def slow_after_two_inits() -> None:
    """Quick in the first two workers, a minute long in any later one (a replacement)."""
    counter = os.path.join(os.environ["SPINDLE_TEST_MARKS"], "inits")
    with open(counter, "a") as f:
        f.write("x")
    if os.path.getsize(counter) > 2:
        time.sleep(60)


# -- Jobs of the executor behaviour suite (tests/executors) ------------------------------
# Each comes as a plain function (thread workers, sync cpu workers) and an ``async def``
# twin (io stages, async cpu workers) that behave alike.

#: What the blocking jobs below wait for. A worker process never sees it set (it is
#: killed); the suite's ``gate`` fixture sets it when a test ends, so that a thread job
#: left running (a thread cannot be stopped) returns and its thread can be joined.
GATE = threading.Event()
#: Longest wait on GATE: a job that nobody stops still ends.
GATE_LIMIT = 30.0


def block_on_3(x: int) -> int:
    if x == 3:
        GATE.wait(GATE_LIMIT)
    return x


def block_from_4(x: int) -> int:
    if x >= 4:
        GATE.wait(GATE_LIMIT)
    return x


async def async_block_from_4(x: int) -> int:
    if x >= 4:
        await asyncio.sleep(GATE_LIMIT)
    return x


def _unevenness(x: int) -> float:
    """0 to 8 ms, spread so that neighbouring items differ."""
    return (x * 7 % 5) * 0.002


def uneven_square(x: int) -> int:
    time.sleep(_unevenness(x))
    return x * x


async def async_uneven_square(x: int) -> int:
    await asyncio.sleep(_unevenness(x))
    return x * x


async def async_fail_on_multiples_of_7(x: int) -> int:
    await asyncio.sleep(0)
    if x % 7 == 0:
        raise ValueError(f"no multiples of 7, got {x}")
    return x * 2


async def atens(x: int) -> AsyncIterator[int]:
    yield x * 10
    await asyncio.sleep(0)
    yield x * 10 + 1


def tens_but_3_fails(x: int) -> Iterator[int]:
    """A flat map whose input 3 fails after its first output."""
    yield x * 10
    if x == 3:
        raise ValueError("3 broke after one output")
    yield x * 10 + 1


async def atens_but_3_fails(x: int) -> AsyncIterator[int]:
    yield x * 10
    await asyncio.sleep(0)
    if x == 3:
        raise ValueError("3 broke after one output")
    yield x * 10 + 1


def _count_attempt(marks: str, x: int) -> int:
    """Record one more attempt at item ``x`` in a file; return the attempts so far."""
    path = os.path.join(marks, f"attempts-{x}")
    with open(path, "a") as f:
        f.write("x")
    return os.path.getsize(path)


def flaky(item: tuple[str, int, int]) -> int:
    """``(marks, x, fails)``: fails the first ``fails`` attempts at ``x``, then gives x."""
    marks, x, fails = item
    if _count_attempt(marks, x) <= fails:
        raise Flaky(f"attempt at {x} failed")
    return x


async def async_flaky(item: tuple[str, int, int]) -> int:
    await asyncio.sleep(0)
    return flaky(item)


async def async_permanent_failure(x: int) -> int:
    await asyncio.sleep(0)
    return permanent_failure(x)


def exit_on_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


async def async_exit_on_5(x: int) -> int:
    await asyncio.sleep(0)
    return exit_on_5(x)


async def async_kill_self_on_5(x: int) -> int:
    await asyncio.sleep(0)
    return kill_self_on_5(x)


async def async_return_lock(x: int) -> Any:
    await asyncio.sleep(0)
    return return_lock(x)


async def async_raise_unbuildable(x: int) -> int:
    await asyncio.sleep(0)
    raise Unbuildable(x, x)


def model_scale(x: int) -> int:
    """``x`` times the scale of the worker's model (what ``make_model`` returned)."""
    import spindle

    return x * spindle.worker_state()["scale"]  # type: ignore[no-any-return]


def exit_on_3(x: int) -> int:
    if x == 3:
        raise SystemExit(f"exit at {x}")
    return x


async def async_exit_on_3(x: int) -> int:
    if x == 3:
        raise SystemExit(f"exit at {x}")
    return x
