"""Fixtures of the pool tests: a gate a worker process waits behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


class Gate:
    """A named pipe: a worker that opens it to read waits until the test opens it to
    write (:meth:`open`), which works across processes with nothing to pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)

    def open(self, text: str = "go") -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def open_if_waited(self) -> None:
        """Release a worker that is waiting, if any (clean-up after a failed test)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.open_if_waited()
