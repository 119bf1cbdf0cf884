"""Functions the pool tests run in workers (module level, so workers can import them)."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

#: Set in each worker by :func:`remember`, the initializer of the tests that use one.
remembered: Any = None
#: Threads of a thread executor that ran :func:`note_thread`.
initialized: list[int] = []


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def square(x: int) -> int:
    return x * x


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed, got {x}")
    return x


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def read_fifo(path: str) -> str:
    """Block until the test opens ``path`` for writing, then return what it wrote."""
    with open(path) as f:
        return f.read()


def wait_event(event: threading.Event) -> str:
    """For thread executors: block until the test sets ``event``."""
    if not event.wait(30):
        raise TimeoutError("the test never set the event")
    return "released"


def identity(x: Any) -> Any:
    return x


def make_lock(_: Any = None) -> Any:
    return threading.Lock()


def remember(value: Any) -> None:
    global remembered
    remembered = value


def recall() -> Any:
    return remembered


def note_thread() -> None:
    initialized.append(threading.get_ident())


def broken_init() -> None:
    raise RuntimeError("initializer failed on purpose")


def exit_with(code: int) -> None:
    raise SystemExit(code)


class ExitWhenUnpickled:
    """A result that raises SystemExit where it is unpickled: in the parent."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return exit_with, (3,)


def exit_in_parent() -> ExitWhenUnpickled:
    return ExitWhenUnpickled()


def authkey() -> bytes:
    """This process's ``multiprocessing`` authkey."""
    import multiprocessing

    return bytes(multiprocessing.current_process().authkey)


def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"{x} is the bad one")
    return x


def sleep_then(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds
