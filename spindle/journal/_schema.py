"""The journal's file: its format, its tables, its SQL, and opening, checking or upgrading it.

Everything that knows the layout of the database is here, so that a change of format
(a table, a column, a statement) is made and reviewed in one place, beside the
``VERSION`` it must bump. The tables::

    meta     name -> value: format, version, fingerprint, created, key scheme
    items    the index: one row per key (state, attempts, reason, run, times)
    log      one row per commit: the keys it settled done, as one blob (:mod:`._log`)
    runs     one row per run: its counters, and the keys it had in flight (a blob)
    outputs  slot -> identity and committed point of each output
    totals   state -> count, kept up to date by every commit (quick ``status``)
    reports  run -> its report as JSON (added after format 2: created when missing)

Opening is careful about files that are not journals: nothing is written to a file
before it is known to be a journal, or empty (even switching to WAL mode would rewrite
the header of somebody else's database). SQLite errors leave as :class:`JournalError`
saying what could not be done (:func:`journal_error`, :func:`abandon`). The functions
here hold no state: the journal (:mod:`._sqlite`) owns the connections they are given.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

from .._failure import short_repr
from ..connectors import Output
from ._base import DEFAULT_KEY_SCHEME, Key
from ._errors import JournalCorrupt, JournalError, JournalMismatch

#: Marks a database as a spindle journal, so that no other SQLite file is ever taken for one.
FORMAT = "spindle-journal"
#: 2 added the log of commits (``log``) and the keys in flight on ``runs``; a journal of
#: format 1 is upgraded when opened for writing.
VERSION = 2

#: Slots of the outputs a journal coordinates, as stored in the ``outputs`` table.
RESULTS = "results"
FAILURES = "failures"

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE items (
    key PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    message TEXT,
    run INTEGER,
    started REAL,
    finished REAL
) WITHOUT ROWID;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    last_commit REAL,
    ended REAL,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    inflight BLOB,
    inflight_fmt TEXT,
    inflight_n INTEGER
);
CREATE TABLE log (
    id INTEGER PRIMARY KEY,
    run INTEGER NOT NULL,
    committed REAL NOT NULL,
    n INTEGER NOT NULL,
    fmt TEXT NOT NULL,
    keys BLOB NOT NULL
);
CREATE TABLE outputs (slot TEXT PRIMARY KEY, identity TEXT NOT NULL, point TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE totals (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO totals VALUES ('pending', 0), ('done', 0), ('failed', 0);
"""

_TABLES = {"meta", "items", "runs", "outputs", "totals"}

#: What format 2 added to a format 1 journal.
_UPGRADE_1 = (
    "ALTER TABLE runs ADD COLUMN inflight BLOB",
    "ALTER TABLE runs ADD COLUMN inflight_fmt TEXT",
    "ALTER TABLE runs ADD COLUMN inflight_n INTEGER",
    "CREATE TABLE log (id INTEGER PRIMARY KEY, run INTEGER NOT NULL, committed REAL NOT NULL,"
    " n INTEGER NOT NULL, fmt TEXT NOT NULL, keys BLOB NOT NULL)",
)

#: The runs' reports (``report`` is the JSON of ``--stats-json``). Not in _TABLES: journals
#: made before it existed are still journals, and get it when opened for writing.
_REPORTS_TABLE = """
CREATE TABLE IF NOT EXISTS reports (
    run INTEGER PRIMARY KEY,
    stored REAL NOT NULL,
    final INTEGER NOT NULL,
    report TEXT NOT NULL
)
"""
UPSERT_REPORT = """
INSERT INTO reports (run, stored, final, report) VALUES (?, ?, ?, ?)
ON CONFLICT (run) DO UPDATE SET
    stored = excluded.stored, final = excluded.final, report = excluded.report
"""

#: Keys per lookup query, largest first. A batch is cut into chunks of these sizes and
#: the last one padded (repeating a key), so there are only a few SQL texts and the
#: statement cache of sqlite3 always hits.
_LOOKUP_SIZES = (256, 64, 16)
LOOKUP_SQL = {
    n: "SELECT key, state, run FROM items WHERE key IN (" + ",".join("?" * n) + ")"
    for n in _LOOKUP_SIZES
}


def lookup_chunks(keys: list[Key]) -> Iterator[list[Key]]:
    """``keys`` cut into chunks of the sizes of :data:`LOOKUP_SQL`, the last one padded."""
    start, left = 0, len(keys)
    for size in _LOOKUP_SIZES:
        while left >= size:
            yield keys[start : start + size]
            start, left = start + size, left - size
    if left:
        chunk = keys[start:]
        yield chunk + [chunk[-1]] * (_LOOKUP_SIZES[-1] - left)


UPSERT_ITEM = """
INSERT INTO items (key, state, attempts, error, message, run, started, finished)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts, error = excluded.error,
    message = excluded.message, run = excluded.run, started = excluded.started,
    finished = excluded.finished
"""
#: Keys of the log into the index: done at the first attempt, in run ``r``, at time ``t``.
#: ``{keys}`` selects the rows ``(k, r, t)``: one of parameters, or every digest of a blob.
MERGE_DONE = """
INSERT INTO items (key, state, attempts, run, finished)
SELECT k, 'done', 1, r, t FROM ({keys}) ORDER BY k
ON CONFLICT (key) DO UPDATE SET
    state = 'done', attempts = 1, error = NULL, message = NULL, run = excluded.run,
    started = NULL, finished = excluded.finished
"""
#: Where the keys of the log wait to go into the index together, sorted.
STAGING = "CREATE TEMP TABLE merging (k, r INTEGER, t REAL)"
STAGE_ONE = "INSERT INTO temp.merging VALUES (?, ?, ?)"
#: Keys a dead run ``r`` had in flight: pending, unless the index knows better.
MERGE_PENDING = """
INSERT INTO items (key, state, run) SELECT k, 'pending', r FROM ({keys}) ORDER BY k
ON CONFLICT (key) DO NOTHING
"""
#: The keys of a blob of digests (?1) of ?2 keys, sorted, as rows (k, r=?3, t=?4).
EACH_DIGEST = """
WITH RECURSIVE i(n) AS (SELECT 0 WHERE ?2 > 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?2)
"""
DIGEST_ROWS = "SELECT substr(?1, n * 16 + 1, 16) AS k, ?3 AS r, ?4 AS t FROM i"
#: Every digest of a blob (?1, ?2 keys) into the staging table, with run ?3 and time ?4.
STAGE_DIGESTS = (
    EACH_DIGEST + "INSERT INTO temp.merging SELECT substr(?1, n * 16 + 1, 16), ?3, ?4 FROM i"
)
PARAM_ROWS = "SELECT ? AS k, ? AS r, ? AS t"

#: Of a batch of digests (?1, ?2 keys): the index of each one earlier runs left to do,
#: with the state and run of its row (NULL without one), or that this run (?3) recorded;
#: failures count as left to do with ``retry_failed`` (?4).
LEFT_TO_DO = (
    EACH_DIGEST
    + """SELECT n, items.state, items.run FROM i
LEFT JOIN items ON items.key = substr(?1, n * 16 + 1, 16)
WHERE items.state IS NULL OR items.state = 'pending' OR items.run = ?3
    OR (items.state = 'failed' AND ?4)
"""
)

#: The log rows of run ?2 whose blob holds the bytes ?1 (a digest, or a key as msgpack
#: packs it): candidates only, a match may straddle two keys.
SCAN_LOG = "SELECT fmt, keys FROM log WHERE run = ?2 AND instr(keys, ?1) > 0"


#: Page cache of a connection that only appends (MB); ``cache_mb`` is for lookups and merges.
SMALL_CACHE_MB = 4


def set_cache(conn: sqlite3.Connection | None, mb: int) -> None:
    """Set the page cache of ``conn`` (if any) to ``mb`` megabytes."""
    if conn is not None:
        conn.execute(f"PRAGMA cache_size={-1024 * mb}")


def sorted_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` sorted by key in place (fewer pages touched), unless keys of both text
    and bytes make them unsortable."""
    with contextlib.suppress(TypeError):  # mixed str and bytes keys cannot be sorted
        rows.sort(key=itemgetter(0))
    return rows


def journal_error(action: str, path: Path, exc: BaseException) -> JournalError:
    """The :class:`JournalError` for an SQLite error while doing ``action``."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return JournalError(
            f"could not {action} journal {path}: no space left on the device. The journal "
            "and output are consistent up to the last commit; free some space and run the "
            "same command again to resume."
        )
    return JournalError(f"could not {action} journal {path}: {exc}")


def abandon(conn: sqlite3.Connection, path: Path, action: str, exc: BaseException) -> BaseException:
    """Roll back the transaction ``exc`` interrupted; return what to raise (an SQLite
    error as a :class:`JournalError` saying what could not be done, the rest as is)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
    if isinstance(exc, sqlite3.Error):
        wrapped = journal_error(action, path, exc)
        wrapped.__cause__ = exc
        return wrapped
    return exc


def connect(path: Path) -> sqlite3.Connection:
    """The writing connection to the journal at ``path``: a journal, or a new or empty
    file. Anything else raises, the file untouched."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {path}: {exc}") from exc
    # Nothing is written before the file is known to be a journal, or empty: switching
    # to WAL mode alone would rewrite the header of somebody else's database.
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        ours = tables >= _TABLES and conn.execute(
            "SELECT value FROM meta WHERE name = 'format'"
        ).fetchone() == (FORMAT,)
    except sqlite3.OperationalError as exc:  # I/O, permissions, locking: not the file
        conn.close()
        raise JournalError(f"cannot open journal {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise JournalCorrupt(
            f"{path} is not a spindle journal ({exc}); it was left untouched. "
            "Choose another journal path."
        ) from exc
    if tables and not ours:
        conn.close()
        raise JournalCorrupt(
            f"{path} is an SQLite database but not a spindle journal; it was left "
            "untouched. Choose another journal path."
        )
    return conn


def open_reader(path: Path, cache_mb: int) -> sqlite3.Connection:
    """A read-only connection for lookups: in WAL mode it sees the last commit while a
    commit is being written through the other one in a background thread."""
    try:
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        reader.execute("PRAGMA query_only=1")
        reader.execute(f"PRAGMA cache_size={-1024 * cache_mb}")
    except sqlite3.Error as exc:
        raise journal_error("open", path, exc) from exc
    return reader


def prepare(
    conn: sqlite3.Connection, path: Path, fingerprint: str, *, force: bool, cache_mb: int
) -> str:
    """Make the file a journal of ``fingerprint`` ready to write: create it if empty,
    upgrade an older format, check the command, start over with ``force``. Returns the
    key scheme of the journal's items."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size={-1024 * cache_mb}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            _create_schema(conn)
            conn.execute("COMMIT")
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    except sqlite3.OperationalError as exc:
        raise journal_error("open", path, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(
            f"journal {path} is damaged ({exc}); it was left untouched. Move it "
            "away and run again to start over."
        ) from exc
    if meta.get("format") != FORMAT:
        raise JournalCorrupt(
            f"{path} is an SQLite database but not a spindle journal; it was left "
            "untouched. Choose another journal path."
        )
    try:
        version = int(meta.get("version", 0))
    except (TypeError, ValueError):
        version = 0
    if version > VERSION:
        raise JournalError(
            f"journal {path} was written by a newer spindle (format {version}); "
            "upgrade spindle to resume it"
        )
    if version < 1:
        raise JournalCorrupt(f"journal {path} has no valid format version")
    try:
        conn.execute(_REPORTS_TABLE)
        if version == 1:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _UPGRADE_1:
                conn.execute(statement)
            _set_meta(conn, "version", VERSION)
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise abandon(conn, path, "open", exc)  # noqa: B904 - its cause is set
    # Journals made before schemes were stored digested keys with BLAKE2b.
    key_scheme = str(meta.get("keys", "blake2b-128"))
    recorded = meta.get("fingerprint")
    if force:
        _reset(conn, path, fingerprint)
        key_scheme = DEFAULT_KEY_SCHEME
    elif recorded is None:
        _set_meta(conn, "fingerprint", fingerprint)
    elif recorded != fingerprint:
        raise JournalMismatch(
            f"journal {path} was made by another command (function or input): it "
            f"records {short_repr(recorded, 120)}, this run is "
            f"{short_repr(fingerprint, 120)}. Use a new journal path to start a "
            "separate run, or pass --force to discard this journal and start over."
        )
    return key_scheme


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    now = time.time()
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("format", FORMAT),
            ("version", VERSION),
            ("created", now),
            ("keys", DEFAULT_KEY_SCHEME),
        ],
    )


def _set_meta(conn: sqlite3.Connection, name: str, value: object) -> None:
    conn.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def _reset(conn: sqlite3.Connection, path: Path, fingerprint: str) -> None:
    """Forget every item and run: the journal of ``fingerprint``, as if new."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("items", "runs", "outputs", "reports", "log"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute("UPDATE totals SET n = 0")
        _set_meta(conn, "fingerprint", fingerprint)
        _set_meta(conn, "created", time.time())
        _set_meta(conn, "keys", DEFAULT_KEY_SCHEME)
        conn.execute("COMMIT")
    except BaseException as exc:
        raise abandon(conn, path, "reset", exc)  # noqa: B904 - its cause is set


def open_outputs(
    conn: sqlite3.Connection,
    path: Path,
    outputs: dict[str, Output[Any]],
    *,
    force: bool,
    opened: list[Output[Any]],
) -> dict[str, str]:
    """Open each output at the point the journal committed for it (cutting back what
    came after), and record the outputs of this run. Returns the points they opened at.

    Each output opened is appended to ``opened`` at once, so the caller can close them
    if a later one fails. An output other than the one the journal's items were
    recorded with raises :class:`JournalMismatch`: the records of those items are not
    in it."""
    recorded = {
        slot: (identity, point)
        for slot, identity, point in conn.execute("SELECT slot, identity, point FROM outputs")
    }
    has_items = conn.execute(
        "SELECT coalesce(sum(n), 0) FROM totals WHERE state != 'pending'"
    ).fetchone()[0]
    wanted = {slot: out.identity for slot, out in outputs.items()}
    if has_items and {s: i for s, (i, _) in recorded.items()} != wanted:
        raise JournalMismatch(_output_mismatch(path, recorded, wanted))
    points: dict[str, str] = {}
    for slot, out in outputs.items():
        identity, point = recorded.get(slot, (None, None))
        if identity != out.identity:
            point = None
        new_point = out.open(point, force=force)
        opened.append(out)
        points[slot] = new_point
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM outputs")
    conn.executemany(
        "INSERT INTO outputs VALUES (?, ?, ?)",
        [(slot, out.identity, points[slot]) for slot, out in outputs.items()],
    )
    conn.execute("COMMIT")
    return points


def _output_mismatch(
    path: Path, recorded: dict[str, tuple[str, str]], wanted: dict[str, str]
) -> str:
    def show(identities: Iterable[tuple[str, str]]) -> str:
        text = ", ".join(f"{slot} to {identity}" for slot, identity in sorted(identities))
        return text or "no output"

    before = show((s, i) for s, (i, _) in recorded.items())
    return (
        f"journal {path} recorded its items with {before}, but this run writes "
        f"{show(wanted.items())}; records of the items already done are not there. Use "
        "the same outputs, a new journal path, or --force to start over."
    )


def begin_run(conn: sqlite3.Connection) -> tuple[int, float]:
    """Add this run's row; its id and its start (wall-clock time)."""
    started = time.time()
    cur = conn.execute("INSERT INTO runs (started, pid) VALUES (?, ?)", (started, os.getpid()))
    assert cur.lastrowid is not None
    return cur.lastrowid, started
