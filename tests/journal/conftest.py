"""Fixtures for the journal and output tests: a check that no file is left open."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def _open_files() -> dict[str, str]:
    """This process's descriptors that point at regular files (fd -> path)."""
    found: dict[str, str] = {}
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):  # pragma: no cover - not Linux
        return found
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            found[fd] = target
    return found


@pytest.fixture(autouse=True)
def no_open_files() -> Iterator[None]:
    """Fail a test that leaves a file open (an output, a journal, a lock file)."""
    before = _open_files()
    yield
    leaked = {fd: path for fd, path in _open_files().items() if before.get(fd) != path}
    # Only files the test made itself count: pytest and hypothesis keep their own open.
    leaked = {fd: p for fd, p in leaked.items() if "pytest-of-" in p or "/spindle-" in p}
    if leaked:
        pytest.fail(f"files left open: {sorted(leaked.values())}")
