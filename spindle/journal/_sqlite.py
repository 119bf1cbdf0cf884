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
(:data:`._commit._REPORT_INTERVAL`) whatever the commit interval: a run killed at any
moment keeps its report as of one of its last commits. Journals made before the table
existed get it when they are next opened for writing.

Where each part is. :class:`SqliteJournal` (here) owns the files, the lock and the
connections, serialises calls, and records batches; the parts it owns do the rest:

* :mod:`._schema`: the tables, every SQL statement, opening, checking and upgrading the
  file, and opening the outputs at their committed points;
* :mod:`._gate`: which keys of a batch run (:class:`~._gate.KeyGate`: the filter, the
  keys in flight, the exact check), over :mod:`._index` (lookups in the index, scans of
  the run's log, merging logs into the index);
* :mod:`._commit`: the records waiting for a commit, when one is due, and its
  transaction (:class:`~._commit.Commits`), with the run's report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ..connectors import Output, UnwritableRecord
from ._base import (
    DONE,
    FAILED,
    Journal,
    JournalStats,
    Key,
    Record,
    ReportSource,
    key_text,
    unwritable_failure,
)
from ._commit import Commits
from ._errors import JournalError
from ._gate import KeyGate
from ._index import KeyIndex, merge_logs
from ._lock import JournalLock
from ._schema import (
    FAILURES,
    RESULTS,
    SMALL_CACHE_MB,
    begin_run,
    connect,
    journal_error,
    open_outputs,
    open_reader,
    prepare,
    set_cache,
)
from ._status import collect_status, read_status
from ._summary import JournalStatus

__all__ = ["SqliteJournal"]


def _encode_failure(
    failures: Output[Any], key: Key, error: str | None, message: str | None, payload: Any
) -> Any:
    """Encode a failure record; one the writer refuses is replaced by its bare reason."""
    try:
        return failures.encode(payload)
    except UnwritableRecord:
        return failures.encode({"key": key_text(key), "error": error, "message": message})


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
        opening = time.monotonic()  # the first commit is due one interval after this
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
        self._mutex = threading.Lock()
        self._stats = JournalStats()
        self._broken: BaseException | None = None
        self._closed = False

        parent = self.path.parent
        if not parent.is_dir():
            what = "does not exist" if not parent.exists() else "is not a directory"
            raise JournalError(f"cannot create journal {self.path}: {parent} {what}")
        self._lock = JournalLock(self.path)
        self._lock.acquire()
        conn: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        opened: list[Output[Any]] = []
        try:
            conn = connect(self.path)
            self.key_scheme = prepare(conn, self.path, fingerprint, force=force, cache_mb=cache_mb)
            merge_logs(conn, self.path, cache_mb, None)
            points = open_outputs(conn, self.path, self._outputs, force=force, opened=opened)
            run, _ = begin_run(conn)
            reader = open_reader(self.path, cache_mb)
            empty = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM items)").fetchone()
            # Resuming: every key is looked up in the index of earlier runs. Either way
            # the filter rules out, for nearly every key, that this run has claimed it.
            resumed = not empty[0]
            # Past the merge, the writer only appends: a small cache is enough, and the
            # reader needs a large one only to look every key up (resuming).
            set_cache(conn, SMALL_CACHE_MB)
            set_cache(reader, cache_mb if resumed else SMALL_CACHE_MB)
        except BaseException:
            for out in opened:
                with contextlib.suppress(Exception):
                    out.close()
            for c in (reader, conn):
                if c is not None:
                    c.close()
            self._lock.release()
            raise
        self._conn = conn
        # Lookups read through their own connection: in WAL mode it sees the last commit
        # while a commit is being written through the other one in a background thread.
        self._reader = reader
        self._run = run
        index = KeyIndex(
            conn, reader, self.path, run=run, retry_failed=retry_failed, cache_mb=cache_mb
        )
        self._commits = Commits(
            conn,
            self.path,
            run=run,
            outputs=self._outputs,
            points=points,
            index=index,
            stats=self._stats,
            interval=commit_interval,
            items=commit_items,
            opened=opening,
        )
        self._gate = KeyGate(index, self._commits, self._stats, resumed=resumed)

    @property
    def keeps_payloads(self) -> bool:
        return RESULTS in self._outputs

    # -- claiming ----------------------------------------------------------------------

    def filter_new(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            try:
                return self._gate.decide(keys, claim=False)
            except BaseException as exc:
                self._break(exc)
                raise

    def mark_started(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            self._check_usable()
            try:
                return self._gate.decide(keys, claim=True)
            except BaseException as exc:
                self._break(exc)
                raise

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
        if self._commits.due():
            self._commit(final=False, background=self.commit_interval > 0)

    def _record(self, batch: Sequence[Record]) -> None:
        if batch and all(rec[1] == DONE and rec[2] == 1 for rec in batch):
            keys, _, _, _, _, payloads = zip(*batch, strict=True)
            if self._record_columns(keys, payloads):
                return
        # Records in claim order (an ordered run's) take their keys from the front;
        # any others are checked one by one against the keys in flight, as a set.
        gate = self._gate
        batch_keys = [rec[0] for rec in batch]
        in_order = gate.inflight.take_in_order(batch_keys)
        live: set[Key] = set(batch_keys) if in_order else gate.inflight.as_set()
        strays = [] if in_order else [k for k in batch_keys if k not in live]
        if strays:  # recorded without mark_started: claim them now, or drop them as known
            gate.decide(strays, claim=True)
        results = self._outputs.get(RESULTS)
        failures = self._outputs.get(FAILURES)
        out_rows: list[Any] = []
        fail_rows: list[Any] = []
        waiting = self._commits.waiting
        done_wait = waiting[RESULTS if results is not None else ""]
        fail_wait = waiting[FAILURES if failures is not None else ""]
        db_states = gate.db_states
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
        self._commits.queued += recorded

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
        gate = self._gate
        if not gate.inflight.take_in_order(keys):  # not in claim order: as a set
            live = gate.inflight.as_set()
            if not live.issuperset(keys):
                return False
            before = len(live)
            live.difference_update(keys)
            if before - len(live) != n:  # a key twice in the batch: undo, the long way
                live.update(keys)
                return False
        if results is not None:
            results.write(rows)
        commits = self._commits
        wait = commits.waiting[RESULTS if results is not None else ""]
        wait.keys += keys
        wait.done += n
        db_states = gate.db_states
        if db_states:
            leaving = [s for s in map(db_states.pop, keys, repeat(None)) if s is not None]
            wait.leaving += leaving
        self._stats.recorded_done += n
        commits.queued += n
        return True

    def set_report_source(self, source: ReportSource | None) -> None:
        with self._mutex:
            self._commits.report_source = source

    def flush(self) -> None:
        with self._mutex:
            self._check_usable()
            try:
                self._commit(final=False)
            except BaseException as exc:
                self._break(exc)
                raise

    def _commit(self, *, final: bool, end_run: bool = False, background: bool = False) -> None:
        """Commit what is recorded (see :meth:`Commits.commit`), with the keys in flight."""
        gate = self._gate
        self._commits.commit(
            gate.inflight,
            gate.db_states,
            digests=gate.digests_only,
            final=final,
            end_run=end_run,
            background=background,
        )

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
        self._commits.forget()  # the connection is free once its transaction has ended
        conn = self._conn
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
            if self._closed:
                return read_status(self.path)
            if self._broken is None:
                try:
                    self._commits.settle()  # what a commit in flight writes is in the status
                except BaseException as exc:
                    self._break(exc)
                    raise
            try:
                return collect_status(
                    self._conn,
                    self.path,
                    running=not self._closed,
                    live_run=self._run,
                    in_flight=len(self._gate.inflight),
                )
            except sqlite3.Error as exc:
                raise journal_error("read", self.path, exc) from exc

    def stats(self) -> JournalStats:
        with self._mutex:
            return dataclasses.replace(self._stats, in_flight=len(self._gate.inflight))

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if self._broken is None:
                    try:
                        self._commit(final=True, end_run=True)
                    except BaseException as exc:
                        self._break(exc)
                        raise
            finally:
                self._commits.report_source = None
                self._commits.forget()  # interrupted while waiting for it: let it end
                for out in self._outputs.values():
                    with contextlib.suppress(Exception):
                        out.close()
                for conn in (self._reader, self._conn):
                    conn.close()
                self._lock.release()

    def __repr__(self) -> str:
        s = self._stats
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return (
            f"<SqliteJournal {self.path} {state}: {len(self._gate.inflight)} in flight, "
            f"{s.recorded_done} done, {s.recorded_failed} failed, "
            f"{s.skipped_done} skipped as done>"
        )
