"""What the journal's database knows about keys: lookups in the index, scans of this
run's log, and merging logs into the index.

A run does not index the keys it settles: each commit appends them to the ``log`` as
one blob (see :mod:`._sqlite` for why). The index (``items``, one row per key) is
brought up to date when a question needs it: when a journal is opened for writing, every
earlier run's log goes in (:func:`merge_logs`); during a run, this run's log goes in
once its input turns out to repeat itself (:meth:`KeyIndex.merge_own_log`). Until then a
key that may repeat one this run committed is looked for in the log itself, by SQLite
scanning its blobs (:meth:`KeyIndex.scan_own_log`).

Lookups read through their own read-only connection, so that they see the last commit
while the next one is written through the other connection in a background thread.
Merges write through the journal's connection: the caller makes sure no commit is in
flight (:meth:`._commit.Commits.settle`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import cast

from ._base import FAILED, PENDING, Key, State
from ._log import DIGESTS, digest_blob, needle, unpack_keys
from ._schema import (
    DIGEST_ROWS,
    EACH_DIGEST,
    LEFT_TO_DO,
    LOOKUP_SQL,
    MERGE_DONE,
    MERGE_PENDING,
    PARAM_ROWS,
    SCAN_LOG,
    SMALL_CACHE_MB,
    STAGE_DIGESTS,
    STAGE_ONE,
    STAGING,
    abandon,
    journal_error,
    lookup_chunks,
    set_cache,
    sorted_rows,
)

__all__ = ["KeyIndex", "merge_logs"]

#: Keys merged into the index per statement (sorted together: fewer pages touched).
_MERGE_BATCH = 1 << 18


@dataclass(slots=True, eq=False)
class KeyIndex:
    """The database's view of keys, for one run of an open journal.

    Attributes:
        logged: this run has log rows not merged into the index (set by each commit
            that writes one, cleared by :meth:`merge_own_log`).
    """

    writer: sqlite3.Connection
    reader: sqlite3.Connection
    path: Path
    run: int = field(kw_only=True)
    retry_failed: bool = field(kw_only=True)
    cache_mb: int = field(kw_only=True)
    logged: bool = field(default=False, init=False)

    def left_to_do(self, keys: Sequence[Key]) -> dict[int, tuple[State | None, int | None]]:
        """By index into ``keys``: those earlier runs did not finish, with the state and
        run of their row (None, None without one), and those of this run. Left out: keys
        done (or, without ``retry_failed``, failed) in an earlier run, to be skipped."""
        blob = digest_blob(keys)
        if blob is not None:  # one statement, no Python per key
            try:
                rows = self.reader.execute(
                    LEFT_TO_DO, (blob, len(keys), self.run, int(self.retry_failed))
                ).fetchall()
            except sqlite3.Error as exc:
                raise journal_error("read", self.path, exc) from exc
            return {i: (state, run) for i, state, run in rows}
        found = self.query(list(keys))
        left: dict[int, tuple[State | None, int | None]] = {}
        for i, key in enumerate(keys):
            row = found.get(key)
            if row is None:
                left[i] = (None, None)
                continue
            state, run = cast(tuple[State, int], row)
            if state == PENDING or run == self.run or (state == FAILED and self.retry_failed):
                left[i] = (state, run)
        return left

    def query(self, keys: list[Key]) -> dict[Key, tuple[str, int]]:
        """The index's ``(state, run)`` of each of ``keys`` it has."""
        conn = self.reader
        found: dict[Key, tuple[str, int]] = {}
        try:
            for chunk in lookup_chunks(keys):
                for key, state, run in conn.execute(LOOKUP_SQL[len(chunk)], chunk):
                    found[key] = (state, run)
        except sqlite3.Error as exc:
            raise journal_error("read", self.path, exc) from exc
        return found

    def scan_own_log(self, keys: set[Key]) -> set[Key]:
        """Which of ``keys`` this run's log holds, found by SQLite scanning its blobs
        (``instr``) and confirmed by decoding the rows it points at. A scan reads the
        whole log, about a quarter of a second per ten million keys here: fine for the
        filter's rare false positives, not for an input full of repeats."""
        conn = self.reader
        found: set[Key] = set()
        try:
            for key in keys:
                rows = conn.execute(SCAN_LOG, (needle(key), self.run)).fetchall()
                for fmt, blob in rows:
                    if key in unpack_keys(fmt, blob):
                        found.add(key)
                        break
        except sqlite3.Error as exc:
            raise journal_error("read", self.path, exc) from exc
        return found

    def merge_own_log(self) -> None:
        """This run's log into the index, so that each later check is a lookup. No
        commit may be in flight."""
        merge_logs(self.writer, self.path, self.cache_mb, self.run)
        self.logged = False
        set_cache(self.writer, SMALL_CACHE_MB)


def merge_logs(conn: sqlite3.Connection, path: Path, cache_mb: int, run: int | None) -> None:
    """Bring the index (``items``) up to date with the log: of every earlier run when
    opening (``run`` None; with the keys each one had in flight, as pending), or of
    ``run``.

    The digests of every row are first cut into a temporary table (each blob read
    once, as a parameter), then go into the index by one statement, sorted as a
    whole (SQLite's sorter, spilling to a temporary file): the index is written in
    key order, each of its pages once. Merged row by row, each row's keys would touch
    nearly every page of a large index again (minutes for ten million keys, against
    about twenty seconds). One transaction: a crash leaves the log as it was.
    """
    where, args = ("AND run = ?", (run,)) if run is not None else ("", ())
    try:
        set_cache(conn, cache_mb)
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute(f"SELECT id FROM log WHERE true {where}", args)]
        if ids:
            conn.execute("DROP TABLE IF EXISTS temp.merging")
            conn.execute(STAGING)
        for log_id in ids:
            log_run, committed, n, fmt, blob = conn.execute(
                "SELECT run, committed, n, fmt, keys FROM log WHERE id = ?", (log_id,)
            ).fetchone()
            if fmt == DIGESTS:
                conn.execute(STAGE_DIGESTS, (blob, n, log_run, committed))
            else:
                keys = unpack_keys(fmt, blob)
                conn.executemany(STAGE_ONE, zip(keys, repeat(log_run), repeat(committed)))
        if ids:
            conn.execute(MERGE_DONE.format(keys="SELECT k, r, t FROM temp.merging"))
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
                _merge_keys(conn, MERGE_PENDING, fmt, blob, n, rid, None)
            added = conn.total_changes - before
            conn.execute(
                "UPDATE runs SET inflight = NULL, inflight_fmt = NULL, inflight_n = NULL"
                " WHERE inflight IS NOT NULL"
            )
            conn.execute("UPDATE totals SET n = n + ? WHERE state = 'pending'", (added,))
            conn.execute("COMMIT")
    except BaseException as exc:
        raise abandon(conn, path, "update", exc)  # noqa: B904 - its cause is set


def _merge_keys(
    conn: sqlite3.Connection, sql: str, fmt: str, blob: bytes, n: int, run: int, when: float | None
) -> None:
    """One blob of keys into the index: digests cut up and sorted by SQLite itself."""
    if fmt == DIGESTS:
        conn.execute(EACH_DIGEST + sql.format(keys=DIGEST_ROWS), (blob, n, run, when))
        return
    keys = unpack_keys(fmt, blob)
    for start in range(0, len(keys), _MERGE_BATCH):
        rows = sorted_rows([(key, run, when) for key in keys[start : start + _MERGE_BATCH]])
        conn.executemany(sql.format(keys=PARAM_ROWS), rows)
