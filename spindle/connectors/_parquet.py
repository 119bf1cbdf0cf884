"""Parquet output: a directory of part files, each committed by an atomic rename.

A Parquet file cannot be appended to, so ``out.parquet`` is a directory (the layout
Spark, pyarrow, pandas, DuckDB and Polars all read as one dataset)::

    out.parquet/
        part-000000.parquet     committed parts: 0 .. point-1
        part-000001.parquet
        .part-000002.parquet.tmp    being written (hidden: readers skip dot files)

Rows are kept in memory until there are ``min_rows`` of them (or ``max_bytes``, or the
oldest is ``max_delay`` seconds old, or the run ends), so parts hold real row groups
rather than one batch each. A part is written to a hidden temporary file, fsynced,
renamed into place and the directory fsynced; only then is the point (the number of
parts) returned to the journal, which marks the part's items done in its next
transaction. Until then :meth:`commit` returns ``None`` and those items stay unrecorded:
after a crash they simply run again. On open, parts numbered at or after the journal's
point (renamed but never recorded) and temporary files are deleted.

Columns are inferred per part by pyarrow. A column whose values pyarrow cannot put in
one array (mixed types, unknown objects) is written as JSON text for that part. Later
parts are cast to the first part's schema when they can be, so most datasets have one
schema; readers that unify schemas (``duckdb: union_by_name``) handle the rest.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from .._errors import ConfigError
from .._failure import short_repr
from ._errors import OutputCorrupt, OutputError, OutputExists, UnwritableRecord
from ._json import JSON_OPTIONS
from ._output import (
    Output,
    as_mapping,
    check_parent,
    fsync_dir,
    os_error,
    parse_point,
)

_PART = re.compile(r"part-(\d{6,})\.parquet")
_TMP = re.compile(r"\.part-\d{6,}\.parquet\.tmp")


def _pyarrow() -> tuple[Any, Any]:
    """Import pyarrow on first use: it is an optional dependency (``spindle[parquet]``)."""
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise OutputError(
            "writing Parquet needs pyarrow, which is not installed: "
            "install spindle[parquet] (pip install 'spindle[parquet]') or write .jsonl/.csv"
        ) from exc
    return pa, pq


def _part_name(n: int) -> str:
    return f"part-{n:06d}.parquet"


def _json_cell(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, default=short_repr, option=JSON_OPTIONS).decode()
    except TypeError:
        return short_repr(value)


class ParquetOutput(Output[dict[str, Any]]):
    """Results as a Parquet dataset directory (see the module docstring)."""

    format = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        min_rows: int = 50_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_delay: float = 30.0,
        compression: str = "zstd",
        fsync: bool = True,
    ) -> None:
        super().__init__(path, fsync=fsync)
        self._pa, self._pq = _pyarrow()
        if min_rows < 1 or max_bytes < 1 or max_delay < 0:
            raise ConfigError("min_rows and max_bytes must be positive, max_delay not negative")
        self.min_rows = min_rows
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.compression = compression
        self._open = False
        self._parts = 0
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self._buffer_since = 0.0
        self._schema: Any = None

    @property
    def buffered(self) -> int:
        """Rows written but not yet in a committed part."""
        return len(self._buffer)

    def open(self, point: str | None, *, force: bool = False) -> str:
        if self._open:
            raise OutputError(f"output {self.path} is already open")
        check_parent(self.path)
        try:
            self._parts = self._recover(point, force)
            self._schema = self._read_schema()
        except OSError as exc:
            raise os_error("open output", self.path, exc) from exc
        self._open = True
        return str(self._parts)

    def _recover(self, point: str | None, force: bool) -> int:
        path = self.path
        if path.exists() and not path.is_dir():
            if not force:
                raise OutputExists(
                    f"output {path} is a file, not a Parquet directory written by spindle; "
                    "choose another output path or pass --force to replace it"
                )
            path.unlink()
        path.mkdir(exist_ok=True)
        parts: dict[int, str] = {}
        temps: list[str] = []
        for name in os.listdir(path):
            if m := _PART.fullmatch(name):
                parts[int(m.group(1))] = name
            elif _TMP.fullmatch(name):
                temps.append(name)
        if point is None:
            if parts and not force:
                raise OutputExists(
                    f"output {path} already holds {len(parts)} Parquet parts that this journal "
                    "did not write; remove them, choose another output, or pass --force"
                )
            target = 0
        else:
            target = parse_point(point, path)
            missing = [n for n in range(target) if n not in parts]
            if missing:
                raise OutputCorrupt(
                    f"output {path} lacks the committed part {_part_name(missing[0])}: it was "
                    "removed outside spindle; run again with --force or a new journal and output"
                )
        stale = [name for n, name in parts.items() if n >= target] + temps
        for name in stale:
            os.unlink(path / name)
        if stale:
            fsync_dir(path)
        return target

    def _read_schema(self) -> Any:
        if not self._parts:
            return None
        # A file object we close ourselves: pyarrow may otherwise close its own handle
        # later, from one of its I/O threads.
        with open(self.path / _part_name(0), "rb") as f:
            return self._pq.read_schema(f)

    def encode(self, record: Any) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for k, v in as_mapping(record).items():
            name = str(k)
            if name in row:
                raise UnwritableRecord(f"a result has the field {name!r} twice")
            row[name] = v
        return row

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if not self._open:
            raise OutputError(f"output {self.path} is not open")
        if not rows:
            return
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.extend(rows)
        size = 0
        for row in rows:
            for v in row.values():
                size += len(v) if isinstance(v, str | bytes) else 8
        self._buffer_bytes += size

    def commit(self, *, final: bool = False) -> str | None:
        if not self._open:
            raise OutputError(f"output {self.path} is not open")
        if not self._buffer:
            return str(self._parts)
        if not (
            final
            or len(self._buffer) >= self.min_rows
            or self._buffer_bytes >= self.max_bytes
            or time.monotonic() - self._buffer_since >= self.max_delay
        ):
            return None
        table = self._table(self._buffer)
        n = self._parts
        tmp = self.path / f".{_part_name(n)}.tmp"
        try:
            with open(tmp, "wb") as f:  # our file object: closed here, fsynced before
                self._pq.write_table(table, f, compression=self.compression)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path / _part_name(n))
            if self.fsync:
                fsync_dir(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise os_error("write to", self.path, exc) from exc
        if self._schema is None:
            self._schema = table.schema
        self._parts = n + 1
        self._buffer, self._buffer_bytes = [], 0
        return str(self._parts)

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        pa = self._pa
        names: dict[str, None] = {}
        for row in rows:
            for name in row:
                names.setdefault(name)
        arrays = []
        for name in names:
            values = [row.get(name) for row in rows]
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                arrays.append(pa.array([_json_cell(v) for v in values], type=pa.string()))
        table = pa.Table.from_arrays(arrays, names=list(names))
        schema = self._schema
        if (
            schema is not None
            and not table.schema.equals(schema)
            and set(table.schema.names) <= set(schema.names)
        ):
            for name in schema.names:
                if name not in names:
                    field = schema.field(name)
                    table = table.append_column(field, pa.nulls(len(rows), field.type))
            with contextlib.suppress(pa.ArrowException, TypeError, ValueError):
                table = table.select(schema.names).cast(schema)
        return table

    def rollback(self, point: str) -> None:
        if not self._open:
            return
        self._buffer, self._buffer_bytes = [], 0
        target = parse_point(point, self.path)
        try:
            for n in range(target, self._parts):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / _part_name(n))
            for name in os.listdir(self.path):
                if _TMP.fullmatch(name):
                    os.unlink(self.path / name)
        except OSError as exc:
            raise os_error("roll back", self.path, exc) from exc
        self._parts = min(self._parts, target)
        if self._parts == 0:
            self._schema = None

    def close(self) -> None:
        self._open = False
        self._buffer, self._buffer_bytes = [], 0
