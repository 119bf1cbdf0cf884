"""JSON lines that a stream run may acknowledge: appended, and synced at each commit.

A broker's messages are acknowledged once their records are durable, so a file that takes
them must be made durable before that: :meth:`DurableLines.commit` flushes the output and
the failures file and ``fsync``\\ s them (a pipe or a terminal is only flushed). The file
is appended to, never cut: what earlier runs wrote was acknowledged, and stays. A torn last
line (the process died in the middle of a write) was never committed, so never
acknowledged: it is cut off at open, and its message comes again.

A file has no keys: a message delivered again after a crash between a commit and its
acknowledgement is written again (at least once). A keyed sink (PostgreSQL) writes each
key once.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from typing import IO, Any

from .._failure import Failure
from ._errors import OutputError
from ._writer import RecordWriter

__all__ = ["DurableLines"]


def _cut_torn_line(path: str) -> None:
    """Cut ``path`` back to the end of its last whole line."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            block = 1 << 16
            end = size
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start)
                at = data.rfind(b"\n")
                if at >= 0:
                    f.truncate(start + at + 1)
                    return
                end = start
            f.truncate(0)
    except FileNotFoundError:
        return


class DurableLines(RecordWriter):
    """:class:`~spindle.connectors.RecordWriter`'s records (``{"input", "result"}`` lines,
    failures in ``OUTPUT.failures.jsonl``), appended, and durable at each :meth:`commit`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path
        self.failures_path = "spindle.failures.jsonl" if path == "-" else f"{path}.failures.jsonl"
        self._out: IO[bytes]
        self._failures: IO[bytes] | None = None
        self.written = 0
        self.failed = 0
        if path == "-":
            self._out = sys.stdout.buffer
            self._owned = False
            return
        try:
            _cut_torn_line(path)
            _cut_torn_line(self.failures_path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            self._out = os.fdopen(fd, "ab", buffering=1 << 20)
        except OSError as exc:
            raise OutputError(f"cannot write output {path!r}: {exc.strerror or exc}") from exc
        self._owned = True

    def failure(self, failure: Failure, item: Any) -> None:
        if self._failures is None:
            try:
                self._failures = open(self.failures_path, "ab")  # noqa: SIM115
            except OSError as exc:
                raise OutputError(
                    f"cannot write failures to {self.failures_path!r}: {exc.strerror or exc}"
                ) from exc
        super().failure(failure, item)

    def commit(self) -> None:
        for f, path in ((self._out, self.path), (self._failures, self.failures_path)):
            if f is None:
                continue
            try:
                f.flush()
                fd = f.fileno()
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            except OSError as exc:
                raise OutputError(f"cannot write to {path!r}: {exc.strerror or exc}") from exc
            except ValueError:  # stdout replaced by an object without a descriptor
                with contextlib.suppress(OSError):
                    f.flush()
