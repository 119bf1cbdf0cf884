"""The default journal: one SQLite database in WAL mode, written as a log of group commits.

Data flow of one item, and where a crash can land::

    mark_started(keys)  filter of this run's keys (and, resuming, one SELECT per
          |             chunk of keys): claim -> in memory (_inflight)
    record(batch)       encode payloads, os.write to the output       (not yet committed)
          |             ... more batches, until commit_interval or commit_items ...
    commit              1. output.commit(): fsync, returns its point (byte offset, row, part)
                        2. one SQLite transaction: one ``log`` row holding every key done
                           since the last commit (digests end to end, or msgpack),
                           failures as ``items`` rows,
                           outputs.point = the point, totals, the run's counters and the
                           keys still in flight, and the run's report (at most once a second)
          |
    crash anywhere  ->  on open: output.open(journal's point) cuts the output back, so
                        records past the point (a torn line, rows of items never marked
                        done) vanish and those items, not done, run again.

Why this order is safe: the journal's point is written only after the output is durable
up to it (step 1 before 2), so the point never runs ahead of the output; and items are
marked done only in the transaction that moves the point past their records. The journal
itself runs with ``synchronous=NORMAL``: a power failure may lose its last transactions,
which only moves its point back, and the output is cut back to match.

Why a log. Keys are hashes, spread over the whole key space: inserting each one into an
indexed table costs a random B-tree update and its Python parameters, several
microseconds per item, more than a tiny job. So a run does not index its keys: each
commit appends the keys it settles as one blob (``log``), and the keys in flight as one
blob on the run's row. The index (``items``, one row per key) is brought up to date
when it is needed: when the journal is next opened for writing (a resume merges every
earlier run's log, sorted, then looks keys up in ``items``), or during a run when a key
may repeat one this run already committed (below). A run that is never resumed never
pays for the index. Failures, and results that needed more than one attempt, go
straight to ``items``: they carry a reason and are few.

Duplicates within a run. A filter of the keys this run claimed (:mod:`._filter`: hash
tables of fingerprints, in numpy) rules out nearly every key at once. A key it cannot
rule out is checked exactly: against the keys in flight and the records waiting for a
commit (in memory), then against this run's log, scanned by SQLite without an index (a
quarter of a second per ten million keys here: fine for the filter's rare false
positives). Once a scan finds a real repeat, the input repeats itself, and the run's log
is merged into the index instead, so that each later check is a lookup: that costs what
indexing each key would have cost, but only for runs whose input repeats itself.

Group commit: records are queued and committed every ``commit_interval`` seconds or
``commit_items`` items, whichever comes first; a commit is stretched so that commits take
at most a tenth of the time. A crash loses at most one interval of finished work, which
runs again. :meth:`SqliteJournal.flush` commits at once. A periodic commit makes the
outputs durable and gathers its rows under the lock, then a short-lived thread writes
the transaction (:class:`_CommitJob`) while records keep coming; lookups use a second,
read-only connection.

``status`` needs no index: totals are kept by every commit, failures are ``items`` rows,
and the keys a dead run had in flight are counted from its row.

The run's report. With a report source set (:meth:`SqliteJournal.set_report_source`),
a commit asks it for the run's report and upserts it into ``reports`` (one row per run)
in the same transaction; the final commit of ``close()`` stores the last one, marked
final. The source is called while the commit is prepared, under the journal's lock,
never in the background thread that writes the transaction, and at most once a second
(:data:`_REPORT_INTERVAL`) whatever the commit interval: a run killed at any moment
keeps its report as of one of its last commits. Journals made before the table existed
get it when they are next opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import orjson

from .._errors import ConfigError
from .._failure import short_repr
from ..outputs import Output, UnwritableRecord
from ._base import (
    DEFAULT_KEY_SCHEME,
    DONE,
    FAILED,
    PENDING,
    Journal,
    JournalStats,
    Key,
    Record,
    ReportSource,
    State,
    key_text,
    unwritable_failure,
)
from ._errors import JournalCorrupt, JournalError, JournalMismatch
from ._filter import KeyFilter
from ._inflight import InFlight
from ._lock import JournalLock
from ._log import DIGESTS, digest_blob, needle, pack_keys, unpack_keys
from ._status import JournalStatus, collect_status, read_status

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
_UPSERT_REPORT = """
INSERT INTO reports (run, stored, final, report) VALUES (?, ?, ?, ?)
ON CONFLICT (run) DO UPDATE SET
    stored = excluded.stored, final = excluded.final, report = excluded.report
"""

#: Least seconds between two reports stored by commits (the final one is always stored).
_REPORT_INTERVAL = 1.0

#: Largest share of the time that group commits may take (see SqliteJournal._commit).
_COMMIT_SHARE = 0.1

#: Keys per lookup query, largest first. A batch is cut into chunks of these sizes and
#: the last one padded (repeating a key), so there are only a few SQL texts and the
#: statement cache of sqlite3 always hits.
_LOOKUP_SIZES = (256, 64, 16)
_LOOKUP_SQL = {
    n: "SELECT key, state, run FROM items WHERE key IN (" + ",".join("?" * n) + ")"
    for n in _LOOKUP_SIZES
}


def _chunks(keys: list[Key]) -> Iterator[list[Key]]:
    start, left = 0, len(keys)
    for size in _LOOKUP_SIZES:
        while left >= size:
            yield keys[start : start + size]
            start, left = start + size, left - size
    if left:
        chunk = keys[start:]
        yield chunk + [chunk[-1]] * (_LOOKUP_SIZES[-1] - left)


_UPSERT_ITEM = """
INSERT INTO items (key, state, attempts, error, message, run, started, finished)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    state = excluded.state, attempts = excluded.attempts, error = excluded.error,
    message = excluded.message, run = excluded.run, started = excluded.started,
    finished = excluded.finished
"""
#: Keys of the log into the index: done at the first attempt, in run ``r``, at time ``t``.
#: ``{keys}`` selects the rows ``(k, r, t)``: one of parameters, or every digest of a blob.
_MERGE_DONE = """
INSERT INTO items (key, state, attempts, run, finished)
SELECT k, 'done', 1, r, t FROM ({keys}) ORDER BY k
ON CONFLICT (key) DO UPDATE SET
    state = 'done', attempts = 1, error = NULL, message = NULL, run = excluded.run,
    started = NULL, finished = excluded.finished
"""
#: Where the keys of the log wait to go into the index together, sorted.
_STAGING = "CREATE TEMP TABLE merging (k, r INTEGER, t REAL)"
_STAGE_ONE = "INSERT INTO temp.merging VALUES (?, ?, ?)"
#: Keys a dead run ``r`` had in flight: pending, unless the index knows better.
_MERGE_PENDING = """
INSERT INTO items (key, state, run) SELECT k, 'pending', r FROM ({keys}) ORDER BY k
ON CONFLICT (key) DO NOTHING
"""
#: The keys of a blob of digests (?1) of ?2 keys, sorted, as rows (k, r=?3, t=?4).
_EACH_DIGEST = """
WITH RECURSIVE i(n) AS (SELECT 0 WHERE ?2 > 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?2)
"""
_DIGEST_ROWS = "SELECT substr(?1, n * 16 + 1, 16) AS k, ?3 AS r, ?4 AS t FROM i"
#: Every digest of a blob (?1, ?2 keys) into the staging table, with run ?3 and time ?4.
_STAGE_DIGESTS = (
    _EACH_DIGEST + "INSERT INTO temp.merging SELECT substr(?1, n * 16 + 1, 16), ?3, ?4 FROM i"
)
_PARAM_ROWS = "SELECT ? AS k, ? AS r, ? AS t"

#: Of a batch of digests (?1, ?2 keys): the index of each one earlier runs left to do,
#: with the state and run of its row (NULL without one), or that this run (?3) recorded;
#: failures count as left to do with ``retry_failed`` (?4).
_LEFT_TO_DO = (
    _EACH_DIGEST
    + """SELECT n, items.state, items.run FROM i
LEFT JOIN items ON items.key = substr(?1, n * 16 + 1, 16)
WHERE items.state IS NULL OR items.state = 'pending' OR items.run = ?3
    OR (items.state = 'failed' AND ?4)
"""
)

#: The log rows of run ?2 whose blob holds the bytes ?1 (a digest, or a key as msgpack
#: packs it): candidates only, a match may straddle two keys.
_SCAN_LOG = "SELECT fmt, keys FROM log WHERE run = ?2 AND instr(keys, ?1) > 0"

#: Keys merged into the index per statement (sorted together: fewer pages touched).
_MERGE_BATCH = 1 << 18

#: False positives of the Bloom filters of keys other than digests: a positive costs an
#: exact check, which may scan the log.
_FALSE_POSITIVES = 1e-7


#: Page cache of a connection that only appends (MB); ``cache_mb`` is for lookups and merges.
_SMALL_CACHE_MB = 4


def _cache(conn: sqlite3.Connection | None, mb: int) -> None:
    if conn is not None:
        conn.execute(f"PRAGMA cache_size={-1024 * mb}")


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    with contextlib.suppress(TypeError):  # mixed str and bytes keys cannot be sorted
        rows.sort(key=itemgetter(0))
    return rows


class _Waiting:
    """Records waiting for one output's next commit point before they can be committed."""

    __slots__ = ("done", "keys", "leaving", "rows", "slot")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.keys: list[Key] = []  # done at the first attempt: one blob of the log
        self.rows: list[tuple[Any, ...]] = []  # parameters of _UPSERT_ITEM: the others
        self.leaving: list[State] = []  # the database states these records replace
        self.done = 0  # records with state done (keys, and rows of state done)

    def clear(self) -> None:
        self.keys = []
        self.rows = []
        self.leaving = []
        self.done = 0


def _journal_error(action: str, path: Path, exc: BaseException) -> JournalError:
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return JournalError(
            f"could not {action} journal {path}: no space left on the device. The journal "
            "and output are consistent up to the last commit; free some space and run the "
            "same command again to resume."
        )
    return JournalError(f"could not {action} journal {path}: {exc}")


def _abandon(
    conn: sqlite3.Connection, path: Path, action: str, exc: BaseException
) -> BaseException:
    """Roll back the transaction ``exc`` interrupted; return what to raise (an SQLite
    error as a :class:`JournalError` saying what could not be done, the rest as is)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
    if isinstance(exc, sqlite3.Error):
        wrapped = _journal_error(action, path, exc)
        wrapped.__cause__ = exc
        return wrapped
    return exc


def _encode_failure(
    failures: Output[Any], key: Key, error: str | None, message: str | None, payload: Any
) -> Any:
    """Encode a failure record; one the writer refuses is replaced by its bare reason."""
    try:
        return failures.encode(payload)
    except UnwritableRecord:
        return failures.encode({"key": key_text(key), "error": error, "message": message})


class _CommitJob:
    """One group commit's transaction, run by the caller or by a background thread.

    The SQLite work runs with the GIL released, so in a thread it overlaps the Python
    work of claiming and recording the next items instead of stalling them.
    """

    __slots__ = (
        "conn",
        "digests",
        "error",
        "inflight",
        "keys",
        "log",
        "path",
        "points",
        "rows",
        "seconds",
        "started",
        "statements",
        "thread",
    )

    def __init__(self, conn: sqlite3.Connection, path: Path, started: float) -> None:
        self.conn = conn
        self.path = path
        self.started = started
        self.keys: list[Key] = []  # done keys for the log
        self.digests = False  # every key is a 16-byte digest, checked when claimed
        self.log: tuple[int, float] | None = None  # (run, time) of the log row
        self.rows: list[tuple[Any, ...]] = []  # items upserts
        self.inflight: list[Key] = []  # the run's keys in flight, stored on its row
        self.points: dict[str, str] = {}
        self.statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        conn = self.conn
        try:
            digests = self.digests
            fmt, blob = pack_keys(self.keys, digests=digests) if self.keys else (None, None)
            in_fmt, inflight = (
                pack_keys(self.inflight, digests=digests) if self.inflight else (None, None)
            )
            conn.execute("BEGIN IMMEDIATE")
            if blob is not None and self.log is not None:
                run, when = self.log
                conn.execute(
                    "INSERT INTO log (run, committed, n, fmt, keys) VALUES (?, ?, ?, ?, ?)",
                    (run, when, len(self.keys), fmt, blob),
                )
            if self.rows:
                conn.executemany(_UPSERT_ITEM, _sorted(self.rows))
            for sql, rows in self.statements:
                if rows:
                    conn.executemany(sql, rows)
            if self.log is not None:
                conn.execute(
                    "UPDATE runs SET inflight = ?, inflight_fmt = ?, inflight_n = ? WHERE id = ?",
                    (inflight, in_fmt, len(self.inflight) if inflight else None, self.log[0]),
                )
            conn.execute("COMMIT")
        except BaseException as exc:
            self.error = _abandon(conn, self.path, "write", exc)
            if self.thread is None:  # run in the caller: raise there
                raise self.error  # noqa: B904 - its cause is set
        finally:
            self.seconds = time.monotonic() - self.started


class SqliteJournal(Journal):
    """A journal in an SQLite database file, shared by the runs of one command.

    Args:
        path: the journal file. Created if missing. A file that is not a spindle
            journal raises :class:`JournalCorrupt` and is left untouched.
        fingerprint: identifies the command (function and input identity). A journal
            made for another fingerprint raises :class:`JournalMismatch`.
        output: where results go; opened by the journal at its committed point.
        failures: where failure records go (JSON lines), likewise.
        force: start over: forget every item and empty the outputs.
        retry_failed: run again the items that failed in earlier runs.
        commit_interval: least seconds between group commits while records arrive;
            stretched so that commits take at most a tenth of the time (they get slower
            as the journal grows). 0 commits on every ``record()``.
        commit_items: records that trigger a commit before the interval is up; also
            bounds the memory the queue of uncommitted records takes (about 250 bytes
            per record).
        cache_mb: SQLite page cache; lookups stay fast while the key index fits in it.

    The journal owns ``output`` and ``failures``: it opens them, commits them and closes
    them. Methods may be called from any thread, one call at a time (a lock serialises them).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fingerprint: str,
        *,
        output: Output[Any] | None = None,
        failures: Output[Any] | None = None,
        force: bool = False,
        retry_failed: bool = False,
        commit_interval: float = 1.0,
        commit_items: int = 100_000,
        cache_mb: int = 64,
    ) -> None:
        if commit_interval < 0 or commit_items < 1 or cache_mb < 1:
            raise ConfigError("commit_interval must be >= 0, commit_items and cache_mb at least 1")
        self.path = Path(path).absolute()
        self.fingerprint = fingerprint
        self.retry_failed = retry_failed
        self.commit_interval = commit_interval
        self.commit_items = commit_items
        self.cache_mb = cache_mb
        self._outputs: dict[str, Output[Any]] = {}
        if output is not None:
            self._outputs[RESULTS] = output
        if failures is not None:
            self._outputs[FAILURES] = failures
        self._points: dict[str, str] = {}  # the points the journal has committed
        self._mutex = threading.Lock()
        self._stats = JournalStats()
        self._inflight = InFlight()  # claimed, not recorded
        # Claimed keys the database has a row for (pending or failed in an earlier run),
        # with that state: their record replaces it. Empty unless resuming.
        self._db_states: dict[Key, State] = {}
        self._logged = False  # this run has log rows not merged into the index
        self._repeats = False  # this run's input repeated a key it had committed
        # Records waiting for a commit, by the output they need to be durable in first
        # ("" for records that need none).
        self._waiting = {slot: _Waiting(slot) for slot in ("", *self._outputs)}
        self._queued = 0
        self._job: _CommitJob | None = None  # the commit in flight, if any
        self._broken: BaseException | None = None
        self._closed = False
        self._run = 0
        self._run_started = time.time()
        self._report_source: ReportSource | None = None
        self._next_report = 0.0  # time.monotonic() from which a commit stores a report
        self._next_commit = time.monotonic() + commit_interval if commit_interval else 0.0

        parent = self.path.parent
        if not parent.is_dir():
            what = "does not exist" if not parent.exists() else "is not a directory"
            raise JournalError(f"cannot create journal {self.path}: {parent} {what}")
        self._lock = JournalLock(self.path)
        self._lock.acquire()
        self._conn: sqlite3.Connection | None = None
        # Lookups read through their own connection: in WAL mode it sees the last commit
        # while a commit is being written through the other one in a background thread.
        self._reader: sqlite3.Connection | None = None
        self._filter = KeyFilter(false_positives=_FALSE_POSITIVES)
        # Every key claimed so far was a 16-byte digest (checked once, at its claim): a
        # commit then writes keys end to end without checking each length again.
        self._digests_only = True
        self._resumed = False
        opened: list[Output[Any]] = []
        try:
            self._conn = self._connect()
            self._prepare(force)
            self._merge_logs(None)
            self._open_outputs(force, opened)
            self._begin_run()
            self._reader = self._open_reader()
            assert self._conn is not None
            empty = self._conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()
            # Resuming: every key is looked up in the index of earlier runs. Either way
            # the filter rules out, for nearly every key, that this run has claimed it.
            self._resumed = not empty[0]
            # Past the merge, the writer only appends: a small cache is enough, and the
            # reader needs a large one only to look every key up (resuming).
            _cache(self._conn, _SMALL_CACHE_MB)
            _cache(self._reader, self.cache_mb if self._resumed else _SMALL_CACHE_MB)
        except BaseException:
            for out in opened:
                with contextlib.suppress(Exception):
                    out.close()
            for conn in (self._reader, self._conn):
                if conn is not None:
                    conn.close()
            self._lock.release()
            raise

    # -- opening -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        # Nothing is written before the file is known to be a journal, or empty: switching
        # to WAL mode alone would rewrite the header of somebody else's database.
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            ours = tables >= _TABLES and conn.execute(
                "SELECT value FROM meta WHERE name = 'format'"
            ).fetchone() == (FORMAT,)
        except sqlite3.OperationalError as exc:  # I/O, permissions, locking: not the file
            conn.close()
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalCorrupt(
                f"{self.path} is not a spindle journal ({exc}); it was left untouched. "
                "Choose another journal path."
            ) from exc
        if tables and not ours:
            conn.close()
            raise JournalCorrupt(
                f"{self.path} is an SQLite database but not a spindle journal; it was left "
                "untouched. Choose another journal path."
            )
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        try:
            reader = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            reader.execute("PRAGMA query_only=1")
            reader.execute(f"PRAGMA cache_size={-1024 * self.cache_mb}")
        except sqlite3.Error as exc:
            raise _journal_error("open", self.path, exc) from exc
        return reader

    def _prepare(self, force: bool) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size={-1024 * self.cache_mb}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                conn.execute("BEGIN IMMEDIATE")
                self._create_schema(conn)
                conn.execute("COMMIT")
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            raise _journal_error("open", self.path, exc) from exc
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(
                f"journal {self.path} is damaged ({exc}); it was left untouched. Move it "
                "away and run again to start over."
            ) from exc
        if meta.get("format") != FORMAT:
            raise JournalCorrupt(
                f"{self.path} is an SQLite database but not a spindle journal; it was left "
                "untouched. Choose another journal path."
            )
        try:
            version = int(meta.get("version", 0))
        except (TypeError, ValueError):
            version = 0
        if version > VERSION:
            raise JournalError(
                f"journal {self.path} was written by a newer spindle (format {version}); "
                "upgrade spindle to resume it"
            )
        if version < 1:
            raise JournalCorrupt(f"journal {self.path} has no valid format version")
        try:
            conn.execute(_REPORTS_TABLE)
            if version == 1:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _UPGRADE_1:
                    conn.execute(statement)
                self._set_meta("version", VERSION)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _abandon(conn, self.path, "open", exc)  # noqa: B904 - its cause is set
        # Journals made before schemes were stored digested keys with BLAKE2b.
        self.key_scheme = str(meta.get("keys", "blake2b-128"))
        recorded = meta.get("fingerprint")
        if force:
            self._reset()
        elif recorded is None:
            self._set_meta("fingerprint", self.fingerprint)
        elif recorded != self.fingerprint:
            raise JournalMismatch(
                f"journal {self.path} was made by another command (function or input): it "
                f"records {short_repr(recorded, 120)}, this run is "
                f"{short_repr(self.fingerprint, 120)}. Use a new journal path to start a "
                "separate run, or pass --force to discard this journal and start over."
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
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

    def _set_meta(self, name: str, value: object) -> None:
        assert self._conn is not None
        self._conn.execute(
            "INSERT INTO meta VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _reset(self) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in ("items", "runs", "outputs", "reports", "log"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("UPDATE totals SET n = 0")
            self._set_meta("fingerprint", self.fingerprint)
            self._set_meta("created", time.time())
            self._set_meta("keys", DEFAULT_KEY_SCHEME)
            conn.execute("COMMIT")
            self.key_scheme = DEFAULT_KEY_SCHEME
        except BaseException as exc:
            raise _abandon(conn, self.path, "reset", exc)  # noqa: B904 - its cause is set

    def _open_outputs(self, force: bool, opened: list[Output[Any]]) -> None:
        conn = self._conn
        assert conn is not None
        recorded = {
            slot: (identity, point)
            for slot, identity, point in conn.execute("SELECT slot, identity, point FROM outputs")
        }
        has_items = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM totals WHERE state != 'pending'"
        ).fetchone()[0]
        wanted = {slot: out.identity for slot, out in self._outputs.items()}
        if has_items and {s: i for s, (i, _) in recorded.items()} != wanted:
            raise JournalMismatch(self._output_mismatch(recorded, wanted))
        for slot, out in self._outputs.items():
            identity, point = recorded.get(slot, (None, None))
            if identity != out.identity:
                point = None
            new_point = out.open(point, force=force)
            opened.append(out)
            self._points[slot] = new_point
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM outputs")
        conn.executemany(
            "INSERT INTO outputs VALUES (?, ?, ?)",
            [(slot, out.identity, self._points[slot]) for slot, out in self._outputs.items()],
        )
        conn.execute("COMMIT")

    def _output_mismatch(self, recorded: dict[str, tuple[str, str]], wanted: dict[str, str]) -> str:
        def show(identities: Iterable[tuple[str, str]]) -> str:
            text = ", ".join(f"{slot} to {identity}" for slot, identity in sorted(identities))
            return text or "no output"

        before = show((s, i) for s, (i, _) in recorded.items())
        return (
            f"journal {self.path} recorded its items with {before}, but this run writes "
            f"{show(wanted.items())}; records of the items already done are not there. Use "
            "the same outputs, a new journal path, or --force to start over."
        )

    def _begin_run(self) -> None:
        conn = self._conn
        assert conn is not None
        self._run_started = time.time()
        cur = conn.execute(
            "INSERT INTO runs (started, pid) VALUES (?, ?)", (self._run_started, os.getpid())
        )
        assert cur.lastrowid is not None
        self._run = cur.lastrowid

    @property
    def keeps_payloads(self) -> bool:
        return RESULTS in self._outputs

    # -- claiming ----------------------------------------------------------------------

    def filter_new(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            try:
                return self._decide(keys, claim=False)
            except BaseException as exc:
                self._break(exc)
                raise

    def mark_started(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            try:
                return self._decide(keys, claim=True)
            except BaseException as exc:
                self._break(exc)
                raise

    def _decide(self, keys: Sequence[Key], *, claim: bool) -> list[bool]:
        inflight = self._inflight
        n = len(keys)
        # Claiming puts every key in the filter at once (one pass over it): a key that is
        # then not claimed is a repeat, one the run has seen anyway. Not when resuming:
        # most keys are then skipped as done, and the filter holds only those that run.
        add_all = claim and not self._resumed
        blob = digest_blob(keys)
        if claim and blob is None:
            self._digests_only = False
        filter_ = self._filter
        maybe = filter_.maybe_add(keys, blob) if add_all else filter_.maybe(keys, blob)
        # The usual case, decided with no Python per key: new to this run (the filter
        # has every key claimed, so none is in flight), to the journal, and to the batch
        # (maybe_add names repeats within it; without it, a set tells).
        if not maybe and not self._resumed and (add_all or len(set(keys)) == n):
            if claim:
                inflight.add_new(list(keys))  # a copy: the caller's list may change
                self._stats.started += n
            return [True] * n
        # Keys this run has already claimed or recorded (exactly: the filter may be wrong).
        seen = self._seen_this_run({keys[i] for i in maybe}) if maybe else set()
        # Resuming: which keys earlier runs left to do (None: the index has no row).
        left = self._left_to_do(keys) if self._resumed else None
        result = [False] * n
        duplicates = skipped_done = 0
        run = self._run
        db_states = self._db_states
        if left is not None and not seen and len(set(keys)) == n:
            # A batch of distinct keys: only those earlier runs left need a look.
            skipped_done = n - len(left)
            for i, (state, row_run) in left.items():
                if state is not None:
                    if row_run == run:  # recorded by this run, then found in the index
                        duplicates += 1
                        continue
                    if claim:
                        db_states[keys[i]] = state
                result[i] = True
        else:
            # Every occurrence of a key done in an earlier run counts as skipped done, a
            # repeat of a key this run claimed as a duplicate, however the input is cut.
            batch: set[Key] = set()
            done_before: set[Key] = set()
            for i, key in enumerate(keys):
                if key in done_before:
                    skipped_done += 1
                    continue
                if key in seen or key in batch:
                    duplicates += 1
                    continue
                batch.add(key)
                if left is not None:
                    row = left.get(i)
                    if row is None:
                        skipped_done += 1
                        done_before.add(key)
                        continue
                    state, row_run = row
                    if state is not None:
                        if row_run == run:
                            duplicates += 1
                            continue
                        if claim:
                            db_states[key] = state
                result[i] = True
        if claim:
            go = list(compress(keys, result))
            if not add_all:
                self._filter.add(go)
            inflight.add_new(go)
            stats = self._stats
            stats.started += len(go)
            stats.skipped_done += skipped_done
            stats.skipped_duplicate += duplicates
        return result

    def _left_to_do(self, keys: Sequence[Key]) -> dict[int, tuple[State | None, int | None]]:
        """By index into ``keys``: those earlier runs did not finish, with the state and
        run of their row (None, None without one), and those of this run. Left out: keys
        done (or, without ``retry_failed``, failed) in an earlier run, to be skipped."""
        blob = digest_blob(keys)
        if blob is not None:  # one statement, no Python per key
            conn = self._reader
            assert conn is not None
            try:
                rows = conn.execute(
                    _LEFT_TO_DO, (blob, len(keys), self._run, int(self.retry_failed))
                ).fetchall()
            except sqlite3.Error as exc:
                raise _journal_error("read", self.path, exc) from exc
            return {i: (state, run) for i, state, run in rows}
        found = self._query(list(keys))
        left: dict[int, tuple[State | None, int | None]] = {}
        for i, key in enumerate(keys):
            row = found.get(key)
            if row is None:
                left[i] = (None, None)
                continue
            state, run = cast(tuple[State, int], row)
            if state == PENDING or run == self._run or (state == FAILED and self.retry_failed):
                left[i] = (state, run)
        return left

    def _seen_this_run(self, candidates: set[Key]) -> set[Key]:
        """Which of ``candidates`` this run has claimed: in flight, recorded and waiting
        for a commit, or committed (for those, the run's log is merged into the index)."""
        seen = self._inflight.intersection(candidates)
        rest = candidates - seen
        job = self._job
        for keys, rows in [
            *((w.keys, w.rows) for w in self._waiting.values()),
            *([(job.keys, job.rows)] if job is not None else []),
        ]:
            if not rest:
                break
            found = rest.intersection(keys)
            found.update(rest.intersection(map(itemgetter(0), rows)))
            seen |= found
            rest -= found
        if rest and self._logged:
            if self._repeats:  # the input repeats itself: index the log once and for all
                self._settle()
                self._merge_logs(self._run)
            else:  # most likely a false positive of the filter: look, without an index
                found = self._scan_own_log(rest)
                self._repeats = bool(found)
                seen |= found
                rest -= found
        if rest:  # this run's failures, and its log once merged, are in the index
            run = self._run
            seen.update(k for k, (_, row_run) in self._query(list(rest)).items() if row_run == run)
        return seen

    def _scan_own_log(self, keys: set[Key]) -> set[Key]:
        """Which of ``keys`` this run's log holds, found by SQLite scanning its blobs
        (``instr``) and confirmed by decoding the rows it points at. A scan reads the
        whole log, about a quarter of a second per ten million keys here: fine for the
        filter's rare false positives, not for an input full of repeats."""
        conn = self._reader
        assert conn is not None
        found: set[Key] = set()
        try:
            for key in keys:
                rows = conn.execute(_SCAN_LOG, (needle(key), self._run)).fetchall()
                for fmt, blob in rows:
                    if key in unpack_keys(fmt, blob):
                        found.add(key)
                        break
        except sqlite3.Error as exc:
            raise _journal_error("read", self.path, exc) from exc
        return found

    def _query(self, keys: list[Key]) -> dict[Key, tuple[str, int]]:
        """The index's ``(state, run)`` of each of ``keys`` it has."""
        conn = self._reader
        assert conn is not None
        found: dict[Key, tuple[str, int]] = {}
        try:
            for chunk in _chunks(keys):
                for key, state, run in conn.execute(_LOOKUP_SQL[len(chunk)], chunk):
                    found[key] = (state, run)
        except sqlite3.Error as exc:
            raise _journal_error("read", self.path, exc) from exc
        return found

    def _merge_logs(self, run: int | None) -> None:
        """Bring the index (``items``) up to date with the log: of every earlier run when
        opening (with the keys each one had in flight, as pending), or of this run.

        The digests of every row are first cut into a temporary table (each blob read
        once, as a parameter), then go into the index by one statement, sorted as a
        whole (SQLite's sorter, spilling to a temporary file): the index is written in
        key order, each of its pages once. Merged row by row, each row's keys would touch
        nearly every page of a large index again (minutes for ten million keys, against
        about twenty seconds). One transaction: a crash leaves the log as it was.
        """
        conn = self._conn
        assert conn is not None
        where, args = ("AND run = ?", (run,)) if run is not None else ("", ())
        try:
            _cache(conn, self.cache_mb)
            conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in conn.execute(f"SELECT id FROM log WHERE true {where}", args)]
            if ids:
                conn.execute("DROP TABLE IF EXISTS temp.merging")
                conn.execute(_STAGING)
            for log_id in ids:
                log_run, committed, n, fmt, blob = conn.execute(
                    "SELECT run, committed, n, fmt, keys FROM log WHERE id = ?", (log_id,)
                ).fetchone()
                if fmt == DIGESTS:
                    conn.execute(_STAGE_DIGESTS, (blob, n, log_run, committed))
                else:
                    keys = unpack_keys(fmt, blob)
                    conn.executemany(_STAGE_ONE, zip(keys, repeat(log_run), repeat(committed)))
            if ids:
                conn.execute(_MERGE_DONE.format(keys="SELECT k, r, t FROM temp.merging"))
                conn.execute("DROP TABLE temp.merging")
                conn.execute(f"DELETE FROM log WHERE true {where}", args)
            conn.execute("COMMIT")
            if run is None:
                conn.execute("BEGIN IMMEDIATE")
                before = conn.total_changes
                dead = conn.execute(
                    "SELECT id, inflight_fmt, inflight, inflight_n FROM runs"
                    " WHERE inflight IS NOT NULL ORDER BY id"
                ).fetchall()
                for rid, fmt, blob, n in dead:
                    self._merge_keys(_MERGE_PENDING, fmt, blob, n, rid, None)
                added = conn.total_changes - before
                conn.execute(
                    "UPDATE runs SET inflight = NULL, inflight_fmt = NULL, inflight_n = NULL"
                    " WHERE inflight IS NOT NULL"
                )
                conn.execute("UPDATE totals SET n = n + ? WHERE state = 'pending'", (added,))
                conn.execute("COMMIT")
        except BaseException as exc:
            raise _abandon(conn, self.path, "update", exc)  # noqa: B904 - its cause is set
        if run is not None:
            self._logged = False
            _cache(conn, _SMALL_CACHE_MB)

    def _merge_keys(
        self, sql: str, fmt: str, blob: bytes, n: int, run: int, when: float | None
    ) -> None:
        """One blob of keys into the index: digests cut up and sorted by SQLite itself."""
        conn = self._conn
        assert conn is not None
        if fmt == DIGESTS:
            conn.execute(_EACH_DIGEST + sql.format(keys=_DIGEST_ROWS), (blob, n, run, when))
            return
        keys = unpack_keys(fmt, blob)
        for start in range(0, len(keys), _MERGE_BATCH):
            rows = _sorted([(key, run, when) for key in keys[start : start + _MERGE_BATCH]])
            conn.executemany(sql.format(keys=_PARAM_ROWS), rows)

    # -- recording ---------------------------------------------------------------------

    def record(self, batch: Sequence[Record]) -> None:
        with self._mutex:
            self._check_usable()
            try:
                self._record(batch)
                self._maybe_commit()
            except BaseException as exc:
                self._break(exc)
                raise

    def record_done(self, keys: Sequence[Key], payloads: Sequence[Any]) -> None:
        with self._mutex:
            self._check_usable()
            try:
                if not self._record_columns(keys, payloads):
                    pairs = zip(keys, payloads, strict=True)
                    self._record([Record(k, DONE, 1, None, None, p) for k, p in pairs])
                self._maybe_commit()
            except BaseException as exc:
                self._break(exc)
                raise

    def _maybe_commit(self) -> None:
        job = self._job
        if job is not None and job.error is not None:  # the commit thread failed: stop now
            self._settle()
        queued = self._queued
        if queued >= self.commit_items or time.monotonic() >= self._next_commit:
            if not self._commit_running():
                self._commit(final=False, background=self.commit_interval > 0)
            elif queued >= 2 * self.commit_items:  # bound the queue: wait for it
                self._commit(final=False, background=True)

    def _record(self, batch: Sequence[Record]) -> None:
        if batch and all(rec[1] == DONE and rec[2] == 1 for rec in batch):
            keys, _, _, _, _, payloads = zip(*batch, strict=True)
            if self._record_columns(keys, payloads):
                return
        # Records in claim order (an ordered run's) take their keys from the front;
        # any others are checked one by one against the keys in flight, as a set.
        batch_keys = [rec[0] for rec in batch]
        in_order = self._inflight.take_in_order(batch_keys)
        live: set[Key] = set(batch_keys) if in_order else self._inflight.as_set()
        strays = [] if in_order else [k for k in batch_keys if k not in live]
        if strays:  # recorded without mark_started: claim them now, or drop them as known
            self._decide(strays, claim=True)
        results = self._outputs.get(RESULTS)
        failures = self._outputs.get(FAILURES)
        out_rows: list[Any] = []
        fail_rows: list[Any] = []
        done_wait = self._waiting[RESULTS if results is not None else ""]
        fail_wait = self._waiting[FAILURES if failures is not None else ""]
        db_states = self._db_states
        now = time.time()
        run = self._run
        stats = self._stats
        ignored = n_failed = 0
        for rec in batch:
            key, state, attempts, error, message, payload = rec
            if key not in live:  # not claimed, or recorded already
                ignored += 1
                continue
            if state == DONE:
                if results is not None:
                    try:
                        out_rows.append(results.encode(payload))
                    except UnwritableRecord as exc:
                        state, error, message = FAILED, type(exc).__name__, str(exc)
                        payload = unwritable_failure(key, exc, payload, attempts)
                        stats.unwritable += 1
            elif state != FAILED:
                raise JournalError(f"invalid state {state!r} in a record for key {key!r}")
            live.discard(key)
            leaving = db_states.pop(key, None)
            wait = done_wait if state == DONE else fail_wait
            if leaving is not None:
                wait.leaving.append(leaving)
            if state == DONE:
                wait.done += 1
                if attempts == 1:
                    wait.keys.append(key)
                else:
                    wait.rows.append((key, DONE, attempts, None, None, run, None, now))
                continue
            if failures is not None:
                fail_rows.append(_encode_failure(failures, key, error, message, payload))
            wait.rows.append((key, FAILED, attempts, error, message, run, None, now))
            n_failed += 1
        if out_rows:
            assert results is not None
            results.write(out_rows)
        if fail_rows:
            assert failures is not None
            failures.write(fail_rows)
        recorded = len(batch) - ignored
        stats.ignored += ignored
        stats.recorded_failed += n_failed
        stats.recorded_done += recorded - n_failed
        self._queued += recorded

    def _record_columns(self, keys: Sequence[Key], payloads: Sequence[Any]) -> bool:
        """The usual batch, recorded column by column: every item done at its first
        attempt, claimed, not recorded before, and writable (or no output to write).
        Returns False, having changed nothing, otherwise (the general path in
        :meth:`_record` handles it)."""
        results = self._outputs.get(RESULTS)
        if not keys:
            return False
        rows: list[Any] = []
        if results is not None:
            try:
                rows = results.encode_many(payloads)
            except UnwritableRecord:
                return False
        n = len(keys)
        if not self._inflight.take_in_order(keys):  # not in claim order: as a set
            live = self._inflight.as_set()
            if not live.issuperset(keys):
                return False
            before = len(live)
            live.difference_update(keys)
            if before - len(live) != n:  # a key twice in the batch: undo, the long way
                live.update(keys)
                return False
        if results is not None:
            results.write(rows)
        wait = self._waiting[RESULTS if results is not None else ""]
        wait.keys += keys
        wait.done += n
        if self._db_states:
            leaving = [s for s in map(self._db_states.pop, keys, repeat(None)) if s is not None]
            wait.leaving += leaving
        self._stats.recorded_done += n
        self._queued += n
        return True

    def set_report_source(self, source: ReportSource | None) -> None:
        with self._mutex:
            self._report_source = source

    def flush(self) -> None:
        with self._mutex:
            self._check_usable()
            try:
                self._commit(final=False)
            except BaseException as exc:
                self._break(exc)
                raise

    def _commit(self, *, final: bool, end_run: bool = False, background: bool = False) -> None:
        """Commit what is recorded: outputs made durable here, the transaction written
        here or, with ``background``, by a thread while records keep coming.

        One commit is in flight at a time: a new one first waits for (and settles) the
        last. Until a commit has settled, its keys stay in ``_inflight``, so a duplicate
        input is still caught while the database does not show it yet.
        """
        self._settle()
        if self.commit_interval:  # settling sets it too, but the first commit has none to settle
            self._next_commit = max(self._next_commit, time.monotonic() + self.commit_interval)
        job = self._prepare_commit(final=final, end_run=end_run)
        self._job = job
        if background:
            job.thread = threading.Thread(
                target=job.run, name="spindle-journal-commit", daemon=True
            )
            job.thread.start()
        else:
            job.run()
            self._settle()

    def _commit_running(self) -> bool:
        job = self._job
        return job is not None and job.thread is not None and job.thread.is_alive()

    def _settle(self) -> None:
        """Wait for the commit in flight; apply what it changed, or raise its error."""
        job = self._job
        if job is None:
            return
        if job.thread is not None:
            job.thread.join()
        self._job = None
        if job.error is not None:
            raise job.error
        if job.keys:
            self._logged = True
        self._points.update(job.points)
        # A commit's cost grows with what it carries while the interval stays the same:
        # space commits so that they take at most _COMMIT_SHARE of the time (a
        # commit_interval of 0 commits every record()).
        now = time.monotonic()
        spacing = job.seconds * (1 / _COMMIT_SHARE - 1)
        self._next_commit = now + max(self.commit_interval, spacing) if self.commit_interval else 0

    def _prepare_commit(self, *, final: bool, end_run: bool) -> _CommitJob:
        """Make the outputs durable and gather the transaction that records it."""
        conn = self._conn
        assert conn is not None
        began = time.monotonic()
        points: dict[str, str] = {}
        for slot, out in self._outputs.items():
            point = out.commit(final=final)
            if point is not None:
                points[slot] = point
        # Before anything below changes what is queued: an interrupt in the report's
        # code leaves the journal as it was, to be cut back by _break.
        report = self._report_row(final=end_run)
        settling = [self._waiting[""], *(self._waiting[slot] for slot in points)]
        keys: list[Key] = []
        rows: list[tuple[Any, ...]] = []
        deltas = {PENDING: 0, DONE: 0, FAILED: 0}
        done = failed = 0
        for wait in settling:
            for state in wait.leaving:
                deltas[state] -= 1
            done += wait.done
            failed += len(wait.keys) + len(wait.rows) - wait.done
            keys += wait.keys
            rows += wait.rows
            wait.clear()
        deltas[DONE] += done
        deltas[FAILED] += failed
        # The run's keys in flight, stored on its row so that status shows what was
        # running if this process dies: claimed and not recorded, or recorded and
        # waiting for an output's commit; not those the index already has a row for.
        inflight = list(self._inflight)
        for wait in self._waiting.values():
            inflight += wait.keys
            inflight += map(itemgetter(0), wait.rows)
        if self._db_states:
            inflight = [k for k in inflight if k not in self._db_states]
        self._queued = 0
        self._stats.commits += 1
        wall = time.time()
        job = _CommitJob(conn, self.path, began)
        job.keys = keys
        job.log = (self._run, wall)
        job.rows = rows
        job.inflight = inflight
        job.points = points
        job.digests = self._digests_only
        job.statements = [
            (
                "UPDATE outputs SET point = ? WHERE slot = ?",
                [(pt, slot) for slot, pt in points.items() if pt != self._points[slot]],
            ),
            (
                "UPDATE totals SET n = n + ? WHERE state = ?",
                [(n, state) for state, n in deltas.items() if n],
            ),
            (
                "UPDATE runs SET done = done + ?, failed = failed + ?, last_commit = ?,"
                " ended = ? WHERE id = ?",
                [(done, failed, wall, wall if end_run else None, self._run)],
            ),
            (_UPSERT_REPORT, report),
        ]
        return job

    def _report_row(self, *, final: bool) -> list[tuple[Any, ...]]:
        """The run's report, as the parameters of one upsert into ``reports``; none when
        there is no source or the last one is less than a second old (unless final)."""
        source = self._report_source
        if source is None:
            return []
        now = time.monotonic()
        if not final and now < self._next_report:
            return []
        self._next_report = now + _REPORT_INTERVAL
        try:
            text = orjson.dumps(source()).decode()
        except Exception:
            # A bug in the report's code, or figures JSON cannot hold: the run matters
            # more than its report, so it goes on without storing reports.
            self._report_source = None
            with contextlib.suppress(OSError, ValueError):  # stderr may be closed
                print(
                    f"spindle: the run's report could not be stored in journal {self.path}; "
                    "the run goes on without it:",
                    file=sys.stderr,
                )
                traceback.print_exc()
            return []
        return [(self._run, time.time(), int(final), text)]

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self.path} is closed")
        if self._broken is not None:
            raise JournalError(
                f"journal {self.path} stopped after an error ({self._broken}); run the same "
                "command again to resume from the last commit"
            ) from self._broken

    def _break(self, exc: BaseException) -> None:
        """After a failed write or commit: nothing more is committed by this object.

        Outputs are cut back at once to the points the database holds (best effort), so
        they are consistent even before the next open does it for sure. The points are
        read back rather than taken from memory: an interrupt (Ctrl-C) landing just after
        a COMMIT leaves memory one commit behind the database, and cutting an output back
        behind the journal's point would lose records of done items.
        """
        self._broken = exc
        job, self._job = self._job, None
        if job is not None and job.thread is not None:
            job.thread.join()  # the connection is free once its transaction has ended
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            points = dict(conn.execute("SELECT slot, point FROM outputs").fetchall())
        except sqlite3.Error:
            return  # the next open cuts the outputs back
        for slot, out in self._outputs.items():
            if slot in points:
                with contextlib.suppress(Exception):
                    out.rollback(points[slot])

    # -- reading -----------------------------------------------------------------------

    def summary(self) -> JournalStatus:
        with self._mutex:
            if self._closed or self._conn is None:
                return read_status(self.path)
            if self._broken is None:
                try:
                    self._settle()  # what a commit in flight writes is part of the status
                except BaseException as exc:
                    self._break(exc)
                    raise
            try:
                return collect_status(
                    self._conn,
                    self.path,
                    running=not self._closed,
                    live_run=self._run,
                    in_flight=len(self._inflight),
                )
            except sqlite3.Error as exc:
                raise _journal_error("read", self.path, exc) from exc

    def stats(self) -> JournalStats:
        with self._mutex:
            s = self._stats
            return JournalStats(
                started=s.started,
                skipped_done=s.skipped_done,
                skipped_duplicate=s.skipped_duplicate,
                recorded_done=s.recorded_done,
                recorded_failed=s.recorded_failed,
                unwritable=s.unwritable,
                ignored=s.ignored,
                commits=s.commits,
                in_flight=len(self._inflight),
            )

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if self._broken is None and self._conn is not None:
                    try:
                        self._commit(final=True, end_run=True)
                    except BaseException as exc:
                        self._break(exc)
                        raise
            finally:
                self._report_source = None
                job, self._job = self._job, None
                if job is not None and job.thread is not None:
                    job.thread.join()  # interrupted while waiting for it: let it end
                for out in self._outputs.values():
                    with contextlib.suppress(Exception):
                        out.close()
                for conn in (self._reader, self._conn):
                    if conn is not None:
                        conn.close()
                self._lock.release()

    def __repr__(self) -> str:
        s = self._stats
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return (
            f"<SqliteJournal {self.path} {state}: {len(self._inflight)} in flight, "
            f"{s.recorded_done} done, {s.recorded_failed} failed, "
            f"{s.skipped_done} skipped as done>"
        )
