"""Thread and child-process checks for tests that run spindle's worker processes.

The leak check of ``conftest.py`` here (sockets and tasks) stands in for the root
one, so tests that start processes or threads add this one as well.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import psutil
import pytest_asyncio


def assert_joined(before: set[threading.Thread], within: float = 5.0) -> None:
    """Every thread started since ``before`` ends, and every child process exits,
    within ``within`` seconds each (joined, not slept on)."""
    for t in set(threading.enumerate()) - before:
        t.join(timeout=within)
        assert not t.is_alive(), f"thread left running: {t.name}"
    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=within)
    for p in alive:
        p.kill()
    assert not alive, f"child processes left running: {[p.pid for p in alive]}"


@pytest_asyncio.fixture
async def no_stray_threads_or_children() -> AsyncIterator[None]:
    """Fail a test that leaves a thread or a child process behind. The loop's own
    ``to_thread`` workers are shut down first: the loop owns and joins them."""
    before = set(threading.enumerate())
    yield
    await asyncio.get_running_loop().shutdown_default_executor()
    assert_joined(before)
