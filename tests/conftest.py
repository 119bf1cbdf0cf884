"""Shared fixtures: every test is checked for leaked threads, child processes and sockets."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psutil
import pytest
from _support import open_fds


def _open_sockets() -> set[str]:
    """This process's open sockets and pidfds (as /proc shows them)."""
    return {
        f"{fd}->{target}"
        for fd, target in open_fds().items()
        if target.startswith("socket:") or "pidfd" in target
    }


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread, a child process or a socket behind.

    Threads and processes get a bounded grace period to finish (joined, not slept
    on), since a test may legitimately end while a stopped worker is being reaped.
    """
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    threads_before = set(threading.enumerate())
    sockets_before = _open_sockets()
    me = psutil.Process()
    yield
    leaked_threads = []
    for t in set(threading.enumerate()) - threads_before:
        t.join(timeout=5)
        if t.is_alive():
            leaked_threads.append(t.name)
    children = me.children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=5)
    for p in alive:
        p.kill()
    leaked_sockets = _open_sockets() - sockets_before
    problems = []
    if leaked_threads:
        problems.append(f"threads left running: {sorted(leaked_threads)}")
    if alive:
        problems.append(f"child processes left running: {[p.pid for p in alive]}")
    if leaked_sockets:
        problems.append(f"sockets or pidfds left open: {sorted(leaked_sockets)}")
    if problems:
        pytest.fail("; ".join(problems))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: skip the leak check (fixtures own it)")
