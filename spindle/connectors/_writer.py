"""The sink of a run without a journal: JSON lines written as results arrive.

Each result becomes ``{"input": ..., "result": ...}`` in OUTPUT (a file, or ``-`` for
standard output) and each failure a line of ``OUTPUT.failures.jsonl``. Nothing is
committed: without a journal a crashed run starts again from the beginning, so lines are
handed to the operating system in large buffered writes and never fsynced. A journaled
run writes through :class:`~spindle.journal.JournalSink` instead, whose outputs
(:mod:`._output`) can be cut back to the journal's last commit.

Fetch workers may append their own lines (:class:`AppendLines`), in which case the parent
only counts them (:data:`WRITTEN`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any

import orjson

from .._failure import Failure, short_repr
from ._base import Sink
from ._errors import OutputError
from ._json import LINE_OPTIONS, JsonLine, json_default


class _Written:
    """What a job that wrote its record itself returns (see :class:`AppendLines`)."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "WRITTEN"  # one instance, in every process

    def __repr__(self) -> str:
        return "WRITTEN"


#: The result of a job whose worker appended its record to the output itself.
WRITTEN = _Written()


@dataclasses.dataclass(frozen=True, slots=True)
class WriteFailed:
    """A worker could not append to the output: the run stops with this message."""

    message: str


class AppendLines:
    """Wraps an async job whose result is a :class:`JsonLine`: the worker process
    appends the line to the output file itself and returns :data:`WRITTEN`.

    Why: with records of fetched pages, sending every line to the parent to be written
    moves each byte through a pipe and four more copies; appending where the line was
    made moves it once. The file is opened with ``O_APPEND`` in each worker, and one
    ``write`` per line on a local file is never interleaved with another process's
    (the kernel holds the file's lock for the whole write), so lines stay whole. Only
    for regular files on a local file system; the order of lines is the order the
    records were made in. A result that is not a line (a record that cannot
    be written as JSON) goes back to the parent, which fails it with its usual message;
    a failed write (a full disk) comes back as :class:`WriteFailed` and stops the run.

    The one window: a worker killed after appending a line and before its result
    reaches the parent (a frame is sent at once, so this takes a crash within
    microseconds, or a parent too slow to read) leaves a line for an item the parent
    counts as in flight, which then fails or runs again. A journaled run has no such
    window: its records are written by the parent and committed with the journal.
    """

    def __init__(self, path: str, job: Callable[[Any], Awaitable[Any]]) -> None:
        self.path = path
        self.job = job
        self._fd: int | None = None

    def __getstate__(self) -> tuple[str, Any]:
        return self.path, self.job

    def __setstate__(self, state: tuple[str, Any]) -> None:
        self.path, self.job = state
        self._fd = None

    async def __call__(self, item: Any) -> Any:
        value = await self.job(item)
        if type(value) is not JsonLine:
            return value
        try:
            fd = self._fd
            if fd is None:
                fd = self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            return WriteFailed(f"cannot write to {self.path!r}: {exc.strerror or exc}")
        return WRITTEN

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class RecordWriter(Sink):
    """Writes ``{"input", "result"}`` lines to OUTPUT and failures to OUTPUT.failures.jsonl."""

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        if Failure not in map(type, values):
            self.results(inputs, values)
            return
        for item, value in zip(inputs, values, strict=True):
            if type(value) is Failure:
                self.failure(value, item)
            else:
                self.result(item, value)

    def __init__(self, path: str) -> None:
        self.path = path
        self.failures_path = "spindle.failures.jsonl" if path == "-" else f"{path}.failures.jsonl"
        self._out: IO[bytes]
        if path == "-":
            self._out = sys.stdout.buffer
            self._owned = False
        else:
            try:
                # Appending, after cutting the file: lines that workers append
                # (:class:`AppendLines`) and lines written here never overwrite each other.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666)
                self._out = os.fdopen(fd, "ab", buffering=1 << 20)
            except OSError as exc:
                raise OutputError(f"cannot write output {path!r}: {exc.strerror or exc}") from exc
            self._owned = True
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.failures_path)  # a stale file from an earlier run would mislead
        self._failures: IO[bytes] | None = None
        self.written = 0
        self.failed = 0

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, f: IO[bytes], data: bytes | list[bytes], path: str) -> None:
        try:
            if isinstance(data, bytes):
                f.write(data)
            else:
                f.writelines(data)
        except OSError as exc:
            raise OutputError(f"cannot write to {path!r}: {exc.strerror or exc}") from exc

    #: What a result that cannot be written as JSON should be instead.
    unwritable_hint = "return str, numbers, lists, dicts or dataclasses"

    def record(self, item: Any, value: Any) -> Any:
        """The JSON object written for one result."""
        return {"input": item, "result": value}

    def result(self, item: Any, value: Any) -> None:
        if type(value) is JsonLine:
            self._write(self._out, value, self.path)
            self.written += 1
            return
        try:
            data = orjson.dumps(self.record(item, value), default=json_default, option=LINE_OPTIONS)
        except TypeError as exc:
            msg = (
                f"the result for input {short_repr(item)} cannot be written as JSON ({exc}); "
                f"{self.unwritable_hint}"
            )
            self.failure(Failure(item, "Unserializable", msg, "", 1, "output"), item)
            return
        self._write(self._out, data, self.path)
        self.written += 1

    def results(self, inputs: list[Any], values: list[Any]) -> None:
        """Write the results ``values`` of ``inputs``, none of them a failure: one write
        for all."""
        record = self.record
        try:
            lines = [
                v
                if type(v) is JsonLine
                else orjson.dumps(record(i, v), default=json_default, option=LINE_OPTIONS)
                for i, v in zip(inputs, values, strict=True)
            ]
        except TypeError:  # one of them cannot be written: each on its own
            for i, v in zip(inputs, values, strict=True):
                self.result(i, v)
            return
        # No joined copy: with large records (fetched pages) it would double the bytes
        # moved; the buffered file gathers small lines by itself.
        self._write(self._out, lines, self.path)
        self.written += len(values)

    def failure(self, failure: Failure, item: Any) -> None:
        if self._failures is None:
            try:
                self._failures = open(self.failures_path, "wb")  # noqa: SIM115
            except OSError as exc:
                raise OutputError(
                    f"cannot write failures to {self.failures_path!r}: {exc.strerror or exc}"
                ) from exc
        record = failure.to_dict()
        record["input"] = item
        try:
            data = orjson.dumps(record, default=json_default, option=LINE_OPTIONS)
        except TypeError:
            record["input"] = short_repr(item, 10_000)
            data = orjson.dumps(record, default=repr, option=LINE_OPTIONS)
        self._write(self._failures, data, self.failures_path)
        self.failed += 1

    def close(self) -> None:
        try:
            self._out.flush()
            if self._failures is not None:
                self._failures.flush()
        except OSError as exc:
            raise OutputError(f"cannot write to {self.path!r}: {exc.strerror or exc}") from exc
        finally:
            if self._owned:
                with contextlib.suppress(OSError):
                    self._out.close()
            if self._failures is not None:
                with contextlib.suppress(OSError):
                    self._failures.close()
