"""Jobs the serve tests run in worker processes (importable, so any start method works)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


def echo(x: Any) -> Any:
    return x


def double(x: int) -> int:
    return x * 2


def behave(x: Any) -> Any:
    """A job that does what its item says: raise, kill its worker, sleep, or echo."""
    if x == "raise":
        raise ValueError("asked to fail")
    if x == "die":
        os._exit(3)
    if isinstance(x, dict) and "sleep" in x:
        time.sleep(x["sleep"])
        return x.get("then", "slept")
    if x == "unjson":
        return object()
    return x


def wait_for_file(x: dict[str, Any]) -> Any:
    """Block until the file ``x["path"]`` exists (a test releases it), then echo."""
    path = x["path"]
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return x.get("n")


def whoami(x: Any) -> int:
    return os.getpid()


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def counted(x: dict[str, Any]) -> Any:
    """Append the item's ``n`` to the file ``x["log"]`` (one line per run of the job),
    wait for ``x["gate"]`` when given, then return ``n * 10``."""
    with open(x["log"], "a") as f:
        f.write(f"{x['n']}\n")
    gate = x.get("gate")
    if gate:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.005)
    return x["n"] * 10
