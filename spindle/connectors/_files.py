"""Append-only file outputs: JSON lines, CSV, and the failures file.

Crash safety rests on one number, the committed byte offset::

    records ──encode──▶ bytes ──os.write──▶ file (O_APPEND)      commit(): fsync, point = offset
                                             │
      on open(point): ftruncate(point) ◀─────┘  (drops a torn tail and every record
                                                 written after the journal's last commit)

A record is a whole line (CSV rows may span lines inside quotes, which does not matter:
truncation works on bytes, not lines). The file is written with ``os.write`` on a raw
descriptor, not through a buffered file object, so when :meth:`write` returns the bytes
are in the operating system and a killed process cannot lose them; ``fsync`` at commit
time makes them survive a power failure too.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson

from .._failure import short_repr
from ._errors import OutputCorrupt, OutputError, OutputExists, UnwritableRecord
from ._json import JSON_OPTIONS
from ._output import (
    Output,
    RowT,
    as_mapping,
    fsync_dir,
    json_text,
    os_error,
    parse_point,
)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class AppendFileOutput(Output[RowT]):
    """Shared machinery of the line-oriented file writers (see the module docstring)."""

    #: Every committed point of these formats ends just after this byte.
    terminator: ClassVar[bytes] = b"\n"

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        super().__init__(path, fsync=fsync)
        self._fd: int | None = None
        self._committed = 0
        self._written = 0

    @property
    def committed(self) -> int:
        """Byte offset of the last commit point."""
        return self._committed

    def open(self, point: str | None, *, force: bool = False) -> str:
        if self._fd is not None:
            raise OutputError(f"output {self.path} is already open")
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _O_CLOEXEC, 0o666)
        except OSError as exc:
            raise os_error("open output", self.path, exc) from exc
        try:
            target = self._recover(fd, point, force)
            if not existed and self.fsync:
                fsync_dir(self.path.parent)
        except OSError as exc:
            os.close(fd)
            raise os_error("open output", self.path, exc) from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._committed = self._written = target
        return str(target)

    def _recover(self, fd: int, point: str | None, force: bool) -> int:
        size = os.fstat(fd).st_size
        if point is None:
            if size and not force:
                raise OutputExists(
                    f"output {self.path} already exists and holds {size} bytes that this "
                    "journal did not write; remove it, choose another output path, or pass "
                    "--force (force=True) to overwrite it"
                )
            target = 0
        else:
            target = parse_point(point, self.path)
            if size < target:
                raise OutputCorrupt(
                    f"output {self.path} holds {size} bytes but the journal recorded {target}: "
                    "it was truncated or replaced outside spindle (or lost in a power failure "
                    "while written without fsync). Results recorded as done are missing; run "
                    "again with --force or with a new journal and output"
                )
        if size != target:
            os.ftruncate(fd, target)
            if self.fsync:
                os.fsync(fd)
        if target and os.pread(fd, 1, target - 1) != self.terminator:
            raise OutputCorrupt(
                f"output {self.path} does not end with a complete record at byte {target}, "
                "where the journal recorded its last commit: it was changed outside spindle"
            )
        self._recovered(target)
        return target

    def _recovered(self, point: int) -> None:
        """Hook for subclasses that keep state in the file itself (the CSV header)."""

    def write(self, rows: Sequence[RowT]) -> None:
        if self._fd is None:
            raise OutputError(f"output {self.path} is not open")
        if not rows:
            return
        data = self._join(rows)
        try:
            self._write_all(self._fd, data)
        except OSError as exc:
            raise os_error("write to", self.path, exc) from exc
        self._written += len(data)
        self._wrote(rows)

    def _join(self, rows: Sequence[RowT]) -> bytes:
        raise NotImplementedError

    def _wrote(self, rows: Sequence[RowT]) -> None:
        """Hook called once ``rows`` are in the file."""

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write every byte: ``os.write`` may write less than asked (signals, pipes, quotas)."""
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def commit(self, *, final: bool = False) -> str:
        if self._fd is None:
            raise OutputError(f"output {self.path} is not open")
        if self._written != self._committed and self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise os_error("flush", self.path, exc) from exc
        self._committed = self._written
        return str(self._committed)

    def rollback(self, point: str) -> None:
        if self._fd is None:
            return
        offset = parse_point(point, self.path)
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise os_error("roll back", self.path, exc) from exc
        self._committed = self._written = offset
        self._rolled_back()

    def _rolled_back(self) -> None:
        """Hook for subclasses whose state depends on what is in the file."""

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class JsonlOutput(AppendFileOutput[bytes]):
    """JSON lines with orjson: one record per line, any JSON-serializable value.

    ``default`` is passed to :func:`orjson.dumps` for types it does not know (for
    example ``default=str``); without it such a record is an :class:`UnwritableRecord`.
    """

    format = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = True,
        default: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(path, fsync=fsync)
        self._default = default

    def encode(self, record: Any) -> bytes:
        """The record's line, newline included: the lines of a batch are then written
        with one join, not a join and a copy to end it."""
        try:
            return orjson.dumps(record, default=self._default, option=_LINE)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise UnwritableRecord(
                f"a result of type {type(record).__name__} cannot be written as JSON: {exc}"
            ) from exc

    def encode_many(self, records: Sequence[Any]) -> list[bytes]:
        dumps, default = orjson.dumps, self._default
        try:
            return [dumps(r, default=default, option=_LINE) for r in records]
        except TypeError:  # say which one, and why
            return list(map(self.encode, records))

    def _join(self, rows: Sequence[bytes]) -> bytes:
        return b"".join(rows)


_LINE = JSON_OPTIONS | orjson.OPT_APPEND_NEWLINE


def _lenient(value: Any) -> str:
    return short_repr(value)


class FailuresOutput(JsonlOutput):
    """The failures file: JSON lines that never refuse a record.

    A failure must not be lost because its input is not JSON-serializable, so unknown
    values are written as their (shortened) ``repr``.
    """

    format = "failures-jsonl"

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        super().__init__(path, fsync=fsync, default=_lenient)

    def encode(self, record: Any) -> bytes:
        try:
            return super().encode(record)
        except UnwritableRecord:  # for example an int beyond 64 bits, which default cannot fix
            return orjson.dumps({"record": short_repr(record)}, option=_LINE)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return value
    return json_text(value)


class CsvOutput(AppendFileOutput[list[Any]]):
    """CSV with a header row. Columns come from ``fields`` or from the first record.

    A record that is not a mapping is written as one column, ``result``. Nested values
    are written as JSON text. A record with a field that is not a column is refused
    (:class:`UnwritableRecord`, so the item becomes a failure) rather than silently cut.
    """

    format = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fields: Sequence[str] | None = None,
        fsync: bool = True,
    ) -> None:
        super().__init__(path, fsync=fsync)
        self._explicit = list(fields) if fields is not None else None
        self._fields: list[str] | None = self._explicit
        self._fieldset: set[str] = set(self._fields or ())
        self._header_written = False

    @property
    def fields(self) -> list[str] | None:
        """The columns, once known."""
        return None if self._fields is None else list(self._fields)

    def _recovered(self, point: int) -> None:
        if point == 0:
            self._header_written = False
            return
        with open(self.path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        if self._explicit is not None and header != self._explicit:
            raise OutputError(
                f"output {self.path} has the columns {header} but the run asks for "
                f"{self._explicit}; use the same fields or a new output"
            )
        self._set_fields(header)
        self._header_written = True

    def _set_fields(self, fields: list[str]) -> None:
        self._fields = fields
        self._fieldset = set(fields)

    def encode(self, record: Any) -> list[Any]:
        mapping = as_mapping(record)
        if self._fields is None:
            self._set_fields([str(k) for k in mapping])
        fields = self._fields
        assert fields is not None
        extra = [k for k in mapping if k not in self._fieldset and str(k) not in self._fieldset]
        if extra:
            raise UnwritableRecord(
                f"a result has the fields {extra} that are not columns of {self.path} "
                f"(columns: {fields}); list every column with fields=... or write JSON lines"
            )
        if len(mapping) == len(fields) and all(isinstance(k, str) for k in mapping):
            return [_cell(mapping.get(f)) for f in fields]
        by_name = {str(k): v for k, v in mapping.items()}
        return [_cell(by_name.get(f)) for f in fields]

    def _join(self, rows: Sequence[list[Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if not self._header_written:
            writer.writerow(self._fields or [])
        writer.writerows(rows)
        return buf.getvalue().encode("utf-8")

    def _wrote(self, rows: Sequence[list[Any]]) -> None:
        self._header_written = True

    def _rolled_back(self) -> None:
        if self._committed == 0:
            self._header_written = False
            if self._explicit is None:
                self._fields, self._fieldset = None, set()
