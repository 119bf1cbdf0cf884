"""Fixtures for the journal and output tests: a check that no file is left open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _support import open_fds


def _open_files() -> dict[str, str]:
    """This process's descriptors that point at regular files (fd -> path)."""
    return {
        fd: target
        for fd, target in open_fds().items()
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/"))
    }


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
