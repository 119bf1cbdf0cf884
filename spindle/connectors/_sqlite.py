"""An SQLite table as output.

Rows go to a table in their own database file (not the journal's: a user's results do not
belong in spindle's bookkeeping, and WAL mode cannot make one transaction atomic across two
attached databases anyway). Each row gets ``_seq INTEGER PRIMARY KEY``, numbered 1, 2, 3...
in commit order; the commit point is the last ``_seq`` committed::

    write(rows): BEGIN; INSERT ... (_seq = n+1, n+2, ...)      (transaction left open)
    commit():    COMMIT (synchronous=FULL)  ->  point = last _seq
    open(point): DELETE FROM table WHERE _seq > point         (rows of uncommitted items)

The output's transaction commits before the journal's, so the journal's point never runs
ahead of the table. Columns are created from the records' fields as they appear
(``ALTER TABLE ADD COLUMN``); values without an SQLite type are stored as JSON text.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._errors import OutputCorrupt, OutputError, OutputExists, UnwritableRecord
from ._output import Output, as_mapping, check_parent, json_text, os_error, parse_point

_SEQ = "_seq"
_INT64 = (-(2**63), 2**63 - 1)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(value: Any) -> Any:
    if value is None or isinstance(value, str | float | bytes):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    return json_text(value)


def _sqlite_error(action: str, path: Path, exc: sqlite3.Error) -> OutputError:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return os_error(action, path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return OutputError(f"could not {action} {path}: {exc}")


class SqliteOutput(Output[dict[str, Any]]):
    """Results as rows of ``table`` in the SQLite database at ``path``."""

    format = "sqlite"

    def __init__(
        self, path: str | os.PathLike[str], *, table: str = "results", fsync: bool = True
    ) -> None:
        super().__init__(path, fsync=fsync)
        if not table or "\x00" in table:
            raise ConfigError(f"invalid table name {table!r} for {self.path}")
        self.table = table
        self._conn: sqlite3.Connection | None = None
        self._columns: dict[str, str] = {}  # lower-case name -> name as created
        self._committed = 0
        self._seq = 0

    @property
    def identity(self) -> str:
        return f"{self.format}:{self.path}::{self.table}"

    def open(self, point: str | None, *, force: bool = False) -> str:
        if self._conn is not None:
            raise OutputError(f"output {self.path} is already open")
        check_parent(self.path)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OutputError(f"could not open output {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            self._seq = self._committed = self._recover(conn, point, force)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise OutputError(
                f"could not open output {self.path}: {exc} (is it an SQLite database?)"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return str(self._committed)

    def _recover(self, conn: sqlite3.Connection, point: str | None, force: bool) -> int:
        table = _quote(self.table)
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        names = [row[1] for row in info]
        if info and _SEQ not in names:
            if not force:
                raise OutputExists(
                    f"table {self.table!r} in {self.path} exists and was not written by "
                    "spindle; choose another table or output, or pass --force to replace it"
                )
            conn.execute(f"DROP TABLE {table}")
            info, names = [], []
        if point is None:
            if info and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                if not force:
                    raise OutputExists(
                        f"table {self.table!r} in {self.path} already holds rows that this "
                        "journal did not write; choose another table or output, or pass "
                        "--force to overwrite it"
                    )
                conn.execute(f"DELETE FROM {table}")
            target = 0
        else:
            target = parse_point(point, self.path)
            last = conn.execute(f"SELECT max({_SEQ}) FROM {table}").fetchone()[0] if info else 0
            if (last or 0) < target:
                raise OutputCorrupt(
                    f"table {self.table!r} in {self.path} ends at row {last or 0} but the "
                    f"journal recorded {target} committed rows: rows were deleted outside "
                    "spindle; run again with --force or with a new journal and output"
                )
            if last != target:
                conn.execute(f"DELETE FROM {table} WHERE {_SEQ} > ?", (target,))
        if not info:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({_SEQ} INTEGER PRIMARY KEY)")
            names = [_SEQ]
        self._columns = {n.lower(): n for n in names if n != _SEQ}
        return target

    def encode(self, record: Any) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for k, v in as_mapping(record).items():
            name = str(k)
            if name.lower() == _SEQ:
                raise UnwritableRecord(f"the field name {_SEQ!r} is reserved in SQLite outputs")
            if name in row:
                raise UnwritableRecord(f"a result has the field {name!r} twice")
            row[name] = _value(v)
        return row

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        conn = self._conn
        if conn is None:
            raise OutputError(f"output {self.path} is not open")
        if not rows:
            return
        table = _quote(self.table)
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            for row in rows:
                for name in row:
                    if name.lower() not in self._columns:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)}")
                        self._columns[name.lower()] = name
            # One statement per distinct column set (usually one for a whole batch).
            groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            seq = self._seq
            for row in rows:
                seq += 1
                groups.setdefault(tuple(row), []).append((seq, *row.values()))
            for names, values in groups.items():
                cols = ", ".join([_SEQ, *(_quote(n) for n in names)])
                marks = ", ".join("?" * (len(names) + 1))
                conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", values)
        except sqlite3.Error as exc:
            raise _sqlite_error("write to", self.path, exc) from exc
        self._seq = seq

    def commit(self, *, final: bool = False) -> str:
        conn = self._conn
        if conn is None:
            raise OutputError(f"output {self.path} is not open")
        if conn.in_transaction:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _sqlite_error("commit to", self.path, exc) from exc
        self._committed = self._seq
        return str(self._committed)

    def rollback(self, point: str) -> None:
        conn = self._conn
        if conn is None:
            return
        target = parse_point(point, self.path)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if target < self._committed:
                conn.execute(f"DELETE FROM {_quote(self.table)} WHERE {_SEQ} > ?", (target,))
            # Columns added in the rolled-back transaction are gone too.
            info = conn.execute(f"PRAGMA table_info({_quote(self.table)})").fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error("roll back", self.path, exc) from exc
        self._columns = {r[1].lower(): r[1] for r in info if r[1] != _SEQ}
        self._seq = self._committed = target

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # an open transaction is rolled back: close does not commit
