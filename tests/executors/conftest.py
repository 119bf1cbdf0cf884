"""Fixtures of the executor behaviour suite.

The leak check of ``tests/conftest.py`` (autouse) runs around every test here: a
test fails if its run leaves a thread, a worker process or a socket behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import workfns as jobs


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """The event the blocking jobs wait on, closed during the test and opened at its
    end: a thread job still blocked then (a thread cannot be stopped, only abandoned)
    returns, and the leak check, which runs after this, can join its thread."""
    jobs.GATE.clear()
    yield jobs.GATE
    jobs.GATE.set()


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory where jobs and ``init`` functions leave files to count, named in
    ``SPINDLE_TEST_MARKS`` (forked and spawned workers inherit the environment)."""
    monkeypatch.setenv("SPINDLE_TEST_MARKS", str(tmp_path))
    return tmp_path
