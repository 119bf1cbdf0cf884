"""The committed outputs of a journaled run: the interface they implement, and helpers.

A writer is driven by the journal in a fixed cycle, so that the journal can record the
writer's *commit point* in the same SQLite transaction that marks the items done::

    open(point)            come back to the journal's last committed point (truncate,
                           delete rows or part files written after it)
    encode(record) ...     turn each record into the writer's row form; a record that
                           cannot be written raises UnwritableRecord (the item becomes a failure)
    write(rows)            hand the rows to the operating system (not yet durable)
    commit() -> point      make everything written so far durable and return the point
                           that covers it, or None if the writer keeps rows back
                           (Parquet builds whole row groups)
    rollback(point)        after an error: come back to ``point``, the journal's last
                           recorded point (drops rows written or committed after it)
    close()

A point is an opaque string to the journal (a byte offset, a row number, a count of part
files). The invariant the protocol rests on: the point the journal holds never goes past
what the output holds durably, so on resume everything after it can be thrown away.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import orjson

from ._errors import OutputCorrupt, OutputError, UnwritableRecord
from ._json import JSON_OPTIONS

#: The encoded form of one record, specific to each writer.
RowT = TypeVar("RowT")


class Output(ABC, Generic[RowT]):
    """Base class of the output writers: append records and commit them to a durable point.

    Writers are not thread-safe: the journal that owns one calls it under its own lock.
    """

    #: Short format name used by :func:`spindle.connectors.open_output` and shown in status.
    format: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path).resolve()
        #: ``fsync`` on every commit makes the output survive a power failure, not only a
        #: crash of the process; without it the journal cannot prove the data reached disk.
        self.fsync = fsync

    @property
    def identity(self) -> str:
        """What the journal stores to notice a run pointed at another output."""
        return f"{self.format}:{self.path}"

    @abstractmethod
    def open(self, point: str | None, *, force: bool = False) -> str:
        """Open the output and bring it back to ``point``; return the point it is at.

        ``point=None`` means the journal has never committed anything to this output: it
        must then be absent or empty, unless ``force`` allows overwriting it.
        """

    @abstractmethod
    def encode(self, record: Any) -> RowT:
        """Encode one record, or raise :class:`UnwritableRecord` saying why it cannot be."""

    def encode_many(self, records: Sequence[Any]) -> list[RowT]:
        """Encode a batch of records (the usual call: a writer may do it in one pass);
        raises :class:`UnwritableRecord` if any of them cannot be."""
        return list(map(self.encode, records))

    @abstractmethod
    def write(self, rows: Sequence[RowT]) -> None:
        """Append encoded rows. They count only once a later :meth:`commit` covers them."""

    @abstractmethod
    def commit(self, *, final: bool = False) -> str | None:
        """Make what was written durable; return the new point, or ``None`` if held back.

        ``final=True`` (at close) must flush everything and never return ``None``.
        """

    @abstractmethod
    def rollback(self, point: str) -> None:
        """Come back to ``point`` after an error, dropping everything written after it.

        ``point`` is the journal's last recorded point, which may be older than the last
        :meth:`commit` when the journal's own transaction failed.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the file or connection. Does not commit: the journal decides that."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


def as_mapping(record: Any) -> Mapping[Any, Any]:
    """Column-oriented formats take mappings; any other value becomes ``{"result": value}``."""
    if isinstance(record, Mapping):
        return record
    return {"result": record}


def json_text(value: Any) -> str:
    """A nested value stored in one cell (CSV, SQLite), as compact JSON text."""
    try:
        return orjson.dumps(value, option=JSON_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise UnwritableRecord(
            f"a value of type {type(value).__name__} cannot be written as JSON: {exc}"
        ) from exc


def parse_point(point: str, path: Path) -> int:
    """The integer a file, table or directory writer keeps as its point."""
    try:
        value = int(point)
    except ValueError:
        value = -1
    if value < 0:
        raise OutputCorrupt(f"the journal holds an invalid commit point {point!r} for {path}")
    return value


def os_error(action: str, path: Path, exc: OSError) -> OutputError:
    """Translate an ``OSError`` into an :class:`OutputError` that says what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"could not {action} {path}: no space left on the device ({exc.strerror}). "
            "The output and the journal are left consistent up to the last commit; free some "
            "space and run the same command again to resume."
        )
    reason = exc.strerror or str(exc)
    return OutputError(f"could not {action} {path}: {reason}")


def fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (a created or renamed file), where supported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # not supported on this platform or file system: nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_parent(path: Path) -> None:
    """Fail early, naming the path, when the output's directory is missing or not one.

    SQLite only says "unable to open database file"; this says which and why.
    """
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"cannot create output {path}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot create output {path}: {parent} is not a directory")
