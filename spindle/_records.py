"""Reading input records and writing output records for the command line."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from typing import IO, Any

import orjson

from ._errors import SpindleError
from ._failure import Failure, short_repr


class InputError(SpindleError):
    """The input cannot be read."""


class OutputError(SpindleError):
    """The output cannot be written (permissions, full disk...)."""


class Items(Iterator[Any]):
    """Records read lazily from a file or stdin; a bad line becomes a Failure."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.total: int | None = None
        if path == "-":
            self._file: IO[bytes] = sys.stdin.buffer
            self._owned = False
        else:
            try:
                self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise InputError(f"cannot read input {path!r}: {exc.strerror or exc}") from exc
            self._owned = True
        self._gen = self._read()

    def count_lines(self) -> int | None:
        """Count the lines of a regular file quickly (for a progress bar's total)."""
        if not self._owned or not os.path.isfile(self.path):
            return None
        n = 0
        last = b"\n"
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
        self.total = n + (last != b"\n")
        return self.total

    def __iter__(self) -> Items:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def _read(self) -> Generator[Any, None, None]:
        for n, raw in enumerate(self._file, 1):
            yield from self._parse(raw, n)

    def _parse(self, raw: bytes, n: int) -> Iterator[Any]:
        """The record of line ``n``: nothing for a blank JSON line, a Failure if bad."""
        line = raw.rstrip(b"\r\n")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _malformed(line.decode("utf-8", "replace"), n, f"not valid UTF-8 ({exc})")
            return
        if self.fmt != "jsonl":
            yield text
            return
        if not text.strip():
            return
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield _malformed(text, n, f"not valid JSON ({exc})")

    def chunkable(self) -> bool:
        """Whether :meth:`chunks` may be used: a regular file, which never blocks.

        A pipe or a terminal is read line by line instead, so that each line runs as
        soon as it arrives rather than when a block of them has filled.
        """
        try:
            return stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        except (OSError, ValueError, io.UnsupportedOperation):
            return False

    def chunks(self, size_hint: int = 1 << 16, *, keep_bytes: bool = False) -> Iterator[list[Any]]:
        """The records in lists, a block of lines at a time (see :meth:`chunkable`).

        A block whose lines are all well-formed is parsed in one pass, and comes as
        :class:`Lines` marked ``clean``; one with a bad line is parsed line by line, so
        that each bad line becomes its own Failure. With ``keep_bytes``, a clean block of
        text lines also carries their bytes (``Lines.raw``).
        """
        jsonl = self.fmt == "jsonl"
        n = 0
        while lines := self._file.readlines(size_hint):
            try:
                if not jsonl and keep_bytes:
                    stripped = [line.rstrip(b"\r\n") for line in lines]
                    block = Lines(map(bytes.decode, stripped))
                    block.clean, block.raw = True, stripped
                    n += len(lines)
                    yield block
                    continue
                texts = [line.rstrip(b"\r\n").decode("utf-8") for line in lines]
                if not jsonl:
                    n += len(lines)
                    yield texts
                    continue
                if "" not in texts:
                    values = Lines(map(orjson.loads, texts))
                    values.clean = True
                    n += len(lines)
                    yield values
                    continue
            except (UnicodeDecodeError, orjson.JSONDecodeError):
                pass
            chunk: list[Any] = []
            for raw in lines:
                n += 1
                chunk.extend(self._parse(raw, n))
            yield chunk

    def close(self) -> None:
        self._gen.close()
        if self._owned:
            self._file.close()


class Lines(list[Any]):
    """A block of records from :meth:`Items.chunks`.

    ``clean``: every line parsed (no Failure among them), so a consumer need not look.
    ``raw``: with ``chunks(keep_bytes=True)``, the bytes of each text line, which a keyer may
    digest as they are rather than encode each line back (the same bytes: the lines
    were decoded from valid UTF-8).
    """

    __slots__ = ("clean", "raw")

    def __init__(self, records: Iterable[Any] = ()) -> None:
        super().__init__(records)
        self.clean = False
        self.raw: list[bytes] | None = None


def _malformed(text: str, n: int, why: str) -> Failure:
    return Failure(text, "MalformedInput", f"line {n}: {why}", "", 0, "input")


def read_items(path: str, fmt: str) -> Items:
    return Items(path, fmt)


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_OPTS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class JsonLine(bytes):
    """A whole output line, already encoded, written as it is.

    A job whose result is the record itself (``spindle fetch``'s) can encode it where
    it runs, in a worker process: the parent, which writes every record, then only
    moves bytes, and the encoding of large records (fetched pages) is spread over
    the workers.
    """

    __slots__ = ()


def encode_line(record: Any) -> Any:
    """``record`` as a :class:`JsonLine`, exactly as :class:`RecordWriter` would write
    it; the record itself when it cannot be written as JSON (the writer then fails it
    with its usual message)."""
    try:
        return JsonLine(orjson.dumps(record, default=_default, option=_OPTS))
    except TypeError:
        return record


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


class RecordWriter:
    """Writes ``{"input", "result"}`` lines to OUTPUT and failures to OUTPUT.failures.jsonl."""

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
            data = orjson.dumps(self.record(item, value), default=_default, option=_OPTS)
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
                else orjson.dumps(record(i, v), default=_default, option=_OPTS)
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
            data = orjson.dumps(record, default=_default, option=_OPTS)
        except TypeError:
            record["input"] = short_repr(item, 10_000)
            data = orjson.dumps(record, default=repr, option=_OPTS)
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
