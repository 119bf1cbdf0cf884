"""The default journal: one SQLite database in WAL mode, written in batched transactions.

Data flow of one item, and where a crash can land::

    mark_started(keys)  SELECT ... WHERE key IN (...)      claim -> in memory (_inflight)
          |
    record(batch)       encode payloads, os.write to the output       (not yet committed)
          |             ... more batches, until commit_interval or commit_items ...
    commit              1. output.commit(): fsync, returns its point (byte offset, row, part)
                        2. one SQLite transaction: items -> done/failed,
                           outputs.point = the point, totals, runs counters,
                           and the run's report (at most once a second)
          |
    crash anywhere  ->  on open: output.open(journal's point) cuts the output back, so
                        records past the point (a torn line, rows of items never marked
                        done) vanish and those items, not done, run again.

Why this order is safe: the journal's point is written only after the output is durable
up to it (step 1 before 2), so the point never runs ahead of the output; and items are
marked done only in the transaction that moves the point past their records. The journal
itself runs with ``synchronous=NORMAL``: a power failure may lose its last transactions,
which only moves its point back, and the output is cut back to match.

Group commit: a transaction per ``record()`` call would cost a random B-tree page write
per item (default keys are hashes, spread over the whole table), so records are queued
and committed every ``commit_interval`` seconds or ``commit_items`` items, whichever
comes first, with the keys sorted. A commit rewrites about every index page it touches,
so it gets slower as the journal grows; the interval is stretched to keep commits under a
tenth of the time. A crash loses at most one interval of finished work, which runs again.
:meth:`SqliteJournal.flush` commits at once. A periodic commit makes the outputs
durable and gathers its rows under the lock, then a short-lived thread writes the
transaction (:class:`_CommitJob`) while records keep coming; lookups use a second,
read-only connection, and a journal empty at the start skips them through a Bloom
filter of the keys it claimed (:mod:`._filter`).

Keys in flight (claimed, not yet committed) live in memory only, bounded by what the
engine has in flight plus one commit's worth. Each commit also writes ``pending`` rows
for keys still in flight, so ``status`` shows what was running when a run died.

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
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from .._errors import ConfigError
from .._failure import short_repr
from ..outputs import Output, UnwritableRecord
from ._base import (
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
from ._lock import JournalLock
from ._status import JournalStatus, collect_status, read_status

#: Marks a database as a spindle journal, so that no other SQLite file is ever taken for one.
FORMAT = "spindle-journal"
VERSION = 1

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
    pid INTEGER
);
CREATE TABLE outputs (slot TEXT PRIMARY KEY, identity TEXT NOT NULL, point TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE totals (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO totals VALUES ('pending', 0), ('done', 0), ('failed', 0);
"""

_TABLES = {"meta", "items", "runs", "outputs", "totals"}

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
_UPSERT_PENDING = """
INSERT INTO items (key, state, run, started) VALUES (?, 'pending', ?, ?)
ON CONFLICT (key) DO UPDATE SET run = excluded.run, started = excluded.started
WHERE state = 'pending'
"""

# An in-flight entry: [claimed at (time.time()), state in the database, recorded: False,
# or the slot of the output its record waits for]
_STARTED, _DB_STATE, _RECORDED = 0, 1, 2


class _Waiting:
    """Records waiting for one output's next commit point before they can be committed."""

    __slots__ = ("done", "leaving", "rows", "slot")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.rows: list[tuple[Any, ...]] = []  # parameters of _UPSERT_ITEM
        self.leaving: list[str] = []  # the database states these rows replace
        self.done = 0  # rows with state done (the others are failed)

    def clear(self) -> None:
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
        "error",
        "new_pending",
        "path",
        "pending",
        "points",
        "seconds",
        "settled",
        "started",
        "statements",
        "thread",
    )

    def __init__(self, conn: sqlite3.Connection, path: Path, started: float) -> None:
        self.conn = conn
        self.path = path
        self.started = started
        self.pending: list[tuple[Any, ...]] = []
        self.settled: list[tuple[Any, ...]] = []
        self.new_pending: list[list[Any]] = []
        self.points: dict[str, str] = {}
        self.statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        conn = self.conn
        try:
            with contextlib.suppress(TypeError):  # mixed str and bytes keys cannot be sorted
                self.settled.sort(key=itemgetter(0))  # fewer B-tree pages touched, in order
            conn.execute("BEGIN IMMEDIATE")
            if self.pending:
                conn.executemany(_UPSERT_PENDING, self.pending)
            if self.settled:
                conn.executemany(_UPSERT_ITEM, self.settled)
            for sql, rows in self.statements:
                if rows:
                    conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                wrapped = _journal_error("write", self.path, exc)
                wrapped.__cause__ = exc
                self.error = wrapped
            else:
                self.error = exc
            if self.thread is None:  # run in the caller: raise there
                raise self.error from exc
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
        self._inflight: dict[Key, list[Any]] = {}
        self._fresh: list[Key] = []  # claimed since the last commit
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
        self._filter: KeyFilter | None = None
        opened: list[Output[Any]] = []
        try:
            self._conn = self._connect()
            self._prepare(force)
            self._open_outputs(force, opened)
            self._begin_run()
            self._reader = self._open_reader()
            assert self._conn is not None
            empty = self._conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()
            # Empty at the start: the database can only hold keys this run claims, which
            # the filter remembers, so most keys need no lookup at all.
            self._filter = KeyFilter() if empty[0] else None
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
            conn.execute("PRAGMA temp_store=MEMORY")
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
        except sqlite3.Error as exc:
            raise _journal_error("open", self.path, exc) from exc
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
            [("format", FORMAT), ("version", VERSION), ("created", now)],
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
            for table in ("items", "runs", "outputs", "reports"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("UPDATE totals SET n = 0")
            self._set_meta("fingerprint", self.fingerprint)
            self._set_meta("created", time.time())
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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

    # -- claiming ----------------------------------------------------------------------

    def filter_new(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            return self._decide(keys, claim=False)

    def mark_started(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            return self._decide(keys, claim=True)

    def _decide(self, keys: Sequence[Key], *, claim: bool) -> list[bool]:
        inflight = self._inflight
        unknown: Sequence[int]
        duplicates = 0
        if len(set(keys)) == len(keys) and inflight.keys().isdisjoint(keys):
            unknown = range(len(keys))  # the usual case, checked in C: no duplicates
            rows = self._lookup(list(keys))
        else:
            seen: set[Key] = set()
            unknown = []
            for i, key in enumerate(keys):
                if key in inflight or key in seen:
                    duplicates += 1
                else:
                    seen.add(key)
                    unknown.append(i)
            rows = self._lookup([keys[i] for i in unknown]) if unknown else {}
        now = time.time()
        if not rows and claim and len(unknown) == len(keys):  # all new: no per-key branches
            if self._filter is not None:
                self._filter.add(keys)
            inflight.update({key: [now, None, False] for key in keys})
            self._fresh += keys
            self._stats.started += len(keys)
            return [True] * len(keys)
        result = [False] * len(keys)
        skipped_done = 0
        run, retry = self._run, self.retry_failed
        fresh = self._fresh
        for i in unknown:
            key = keys[i]
            row = rows.get(key)
            db_state: State | None = None
            if row is not None:
                state, row_run = row
                if state == PENDING:
                    db_state = PENDING
                elif state == FAILED and retry and row_run != run:
                    db_state = FAILED
                else:
                    if row_run == run:
                        duplicates += 1
                    else:
                        skipped_done += 1
                    continue
            result[i] = True
            if claim:
                inflight[key] = [now, db_state, False]
                fresh.append(key)
        if claim:
            if self._filter is not None:
                self._filter.add([key for key, go in zip(keys, result, strict=True) if go])
            stats = self._stats
            stats.started += result.count(True)
            stats.skipped_done += skipped_done
            stats.skipped_duplicate += duplicates
        return result

    def _lookup(self, keys: list[Key]) -> dict[Key, tuple[str, int]]:
        conn = self._reader
        assert conn is not None
        if self._filter is not None:
            keys = [keys[i] for i in self._filter.maybe(keys)]
        found: dict[Key, tuple[str, int]] = {}
        try:
            for chunk in _chunks(keys):
                for key, state, run in conn.execute(_LOOKUP_SQL[len(chunk)], chunk):
                    found[key] = (state, run)
        except sqlite3.Error as exc:
            raise _journal_error("read", self.path, exc) from exc
        return found

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
        inflight = self._inflight
        strays = [rec[0] for rec in batch if rec[0] not in inflight]
        if strays:  # recorded without mark_started: claim them now, or drop them as known
            self._decide(strays, claim=True)
        results = self._outputs.get(RESULTS)
        failures = self._outputs.get(FAILURES)
        out_rows: list[Any] = []
        fail_rows: list[Any] = []
        done_wait = self._waiting[RESULTS if results is not None else ""]
        fail_wait = self._waiting[FAILURES if failures is not None else ""]
        done_rows, fail_rows_db = done_wait.rows, fail_wait.rows
        now = time.time()
        run = self._run
        stats = self._stats
        ignored = n_failed = 0
        for rec in batch:
            key, state, attempts, error, message, payload = rec
            entry = inflight.get(key)
            if entry is None or entry[_RECORDED]:
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
                if state == DONE:
                    done_rows.append((key, DONE, attempts, None, None, run, entry[_STARTED], now))
                    entry[_RECORDED] = done_wait.slot
                    if entry[_DB_STATE] is not None:
                        done_wait.leaving.append(entry[_DB_STATE])
                    continue
            elif state != FAILED:
                raise JournalError(f"invalid state {state!r} in a record for key {key!r}")
            if failures is not None:
                fail_rows.append(_encode_failure(failures, key, error, message, payload))
            fail_rows_db.append((key, FAILED, attempts, error, message, run, entry[_STARTED], now))
            n_failed += 1
            entry[_RECORDED] = fail_wait.slot
            if entry[_DB_STATE] is not None:
                fail_wait.leaving.append(entry[_DB_STATE])
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
        done_wait.done += recorded - n_failed
        self._queued += recorded

    def _record_columns(self, keys: Sequence[Key], payloads: Sequence[Any]) -> bool:
        """The usual batch, recorded column by column: every item done at its first
        attempt, claimed, not recorded before, and writable. Returns False, having
        changed nothing, otherwise (the general path in :meth:`_record` handles it)."""
        results = self._outputs.get(RESULTS)
        if results is None or not keys or len(set(keys)) != len(keys):
            return False
        entries = list(map(self._inflight.get, keys))
        if None in entries or any(e[_RECORDED] is not False for e in entries):  # type: ignore[index]
            return False
        try:
            rows = list(map(results.encode, payloads))
        except UnwritableRecord:
            return False
        results.write(rows)
        wait = self._waiting[RESULTS]
        now = time.time()
        wait.rows.extend(
            zip(
                keys,
                repeat(DONE),
                repeat(1),
                repeat(None),
                repeat(None),
                repeat(self._run),
                map(itemgetter(_STARTED), entries),  # type: ignore[arg-type]
                repeat(now),
            )
        )
        leaving = wait.leaving
        for entry in entries:
            assert entry is not None
            entry[_RECORDED] = RESULTS
            if entry[_DB_STATE] is not None:
                leaving.append(entry[_DB_STATE])
        n = len(keys)
        wait.done += n
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
        # Committed: only now forget what the database holds.
        inflight = self._inflight
        for entry in job.new_pending:
            entry[_DB_STATE] = PENDING
            if entry[_RECORDED] is not False:  # recorded, waiting for its output: when
                self._waiting[entry[_RECORDED]].leaving.append(PENDING)  # it settles
        deque(map(inflight.__delitem__, map(itemgetter(0), job.settled)), maxlen=0)
        self._points.update(job.points)
        # A commit rewrites about every index page it touches, so its cost grows with the
        # journal while the interval stays the same: space commits so that they take at
        # most _COMMIT_SHARE of the time (a commit_interval of 0 commits every record()).
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
        settled: list[tuple[Any, ...]] = []
        deltas = {PENDING: 0, DONE: 0, FAILED: 0}
        done = failed = 0
        for wait in settling:
            for state in wait.leaving:
                deltas[state] -= 1
            done += wait.done
            failed += len(wait.rows) - wait.done
            settled += wait.rows
        deltas[DONE] += done
        deltas[FAILED] += failed
        # Keys claimed since the last commit and still not settled: written as pending, so
        # that status shows what was running if this process dies.
        inflight = self._inflight
        settling_slots = {wait.slot for wait in settling}
        pending: list[tuple[Any, ...]] = []
        new_pending: list[list[Any]] = []
        for key in self._fresh:
            entry = inflight[key]
            if entry[_RECORDED] not in settling_slots and entry[_DB_STATE] in (None, PENDING):
                pending.append((key, self._run, entry[_STARTED]))
                if entry[_DB_STATE] is None:
                    new_pending.append(entry)
        deltas[PENDING] += len(new_pending)
        for wait in settling:
            wait.clear()
        self._fresh = []
        self._queued = 0
        self._stats.commits += 1
        wall = time.time()
        job = _CommitJob(conn, self.path, began)
        job.pending = pending
        job.settled = settled
        job.new_pending = new_pending
        job.points = points
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
