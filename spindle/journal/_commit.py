"""Group commits: the records waiting for one, when it is due, and its transaction.

::

    record()  ──▶ Waiting[slot]   (keys, rows, states replaced; per output)
                      │  due(): commit_items queued, or commit_interval passed
                      ▼
    commit()  ──▶ outputs made durable (their commit points), report row, run's keys
                  in flight ──▶ CommitJob ──▶ one SQLite transaction, in this thread or
                                              a short-lived one (background)
    settle()  ◀── the job joined: its points adopted, its error raised, the next one due

Records wait by output, because a record may only be marked done in the transaction that
moves its output's point past it: a commit settles the records of each output it got a
point from (and those that need none), and leaves the others waiting.

A commit is stretched so that commits take at most a tenth of the time (they get slower
as the journal grows). One commit is in flight at a time: a new one first waits for (and
settles) the last. The report source is called while the commit is prepared, under the
journal's lock, never in the background thread, and at most once a second
(:data:`_REPORT_INTERVAL`) unless the commit is the final one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Collection, Iterable
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from ..connectors import Output
from ._base import DONE, FAILED, PENDING, JournalStats, Key, ReportSource, State
from ._index import KeyIndex
from ._log import pack_keys
from ._schema import UPSERT_ITEM, UPSERT_REPORT, abandon, sorted_rows

__all__ = ["CommitJob", "Commits", "Waiting"]

#: Least seconds between two reports stored by commits (the final one is always stored).
_REPORT_INTERVAL = 1.0

#: Largest share of the time that group commits may take (see Commits.settle).
_COMMIT_SHARE = 0.1


class Waiting:
    """Records waiting for one output's next commit point before they can be committed."""

    __slots__ = ("done", "keys", "leaving", "rows", "slot")

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self.keys: list[Key] = []  # done at the first attempt: one blob of the log
        self.rows: list[tuple[Any, ...]] = []  # parameters of UPSERT_ITEM: the others
        self.leaving: list[State] = []  # the database states these records replace
        self.done = 0  # records with state done (keys, and rows of state done)

    def clear(self) -> None:
        self.keys = []
        self.rows = []
        self.leaving = []
        self.done = 0


class CommitJob:
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
                conn.executemany(UPSERT_ITEM, sorted_rows(self.rows))
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
            self.error = abandon(conn, self.path, "write", exc)
            if self.thread is None:  # run in the caller: raise there
                raise self.error  # noqa: B904 - its cause is set
        finally:
            self.seconds = time.monotonic() - self.started


class Commits:
    """The group commits of one run of an open journal.

    Args:
        conn: the journal's writing connection (a background commit uses it alone).
        path: the journal file, for messages.
        run: this run's id.
        outputs: the journal's outputs by slot, made durable by each commit.
        points: the point each output opened at, which the database holds.
        index: told when a commit has put keys in this run's log.
        stats: the journal's counters (``commits``).
        interval, items: ``commit_interval`` and ``commit_items`` of the journal.
        opened: ``time.monotonic()`` when the journal began to open: the first commit is
            due one interval after it.

    Attributes:
        waiting: by slot of the output they wait for ("" for none), the records to commit.
        queued: records in ``waiting``.
        job: the commit in flight, if any, until it is settled.
        report_source: what to ask for the run's report, if anything.
    """

    __slots__ = (
        "_next_commit",
        "_next_report",
        "conn",
        "index",
        "interval",
        "items",
        "job",
        "outputs",
        "path",
        "points",
        "queued",
        "report_source",
        "run",
        "stats",
        "waiting",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        run: int,
        outputs: dict[str, Output[Any]],
        points: dict[str, str],
        index: KeyIndex,
        stats: JournalStats,
        interval: float,
        items: int,
        opened: float,
    ) -> None:
        self.conn = conn
        self.path = path
        self.run = run
        self.outputs = outputs
        self.points = points  # the points the journal has committed
        self.index = index
        self.stats = stats
        self.interval = interval
        self.items = items
        # Records waiting for a commit, by the output they need to be durable in first
        # ("" for records that need none).
        self.waiting = {slot: Waiting(slot) for slot in ("", *outputs)}
        self.queued = 0
        self.job: CommitJob | None = None
        self.report_source: ReportSource | None = None
        self._next_report = 0.0  # time.monotonic() from which a commit stores a report
        self._next_commit = opened + interval if interval else 0.0

    def due(self) -> bool:
        """Whether a commit is to start now: ``items`` records are queued or the interval
        is up, and no commit is in flight (or the queue is twice ``items``: then the new
        one waits for it, which bounds the queue). A failed background commit raises."""
        job = self.job
        if job is not None and job.error is not None:  # the commit thread failed: stop now
            self.settle()
        queued = self.queued
        if queued < self.items and time.monotonic() < self._next_commit:
            return False
        return not self._running() or queued >= 2 * self.items

    def _running(self) -> bool:
        job = self.job
        return job is not None and job.thread is not None and job.thread.is_alive()

    def holding(self, keys: set[Key]) -> set[Key]:
        """Which of ``keys`` are recorded and waiting for a commit, or in the commit in
        flight (the database may not show them yet)."""
        found: set[Key] = set()
        rest = keys
        job = self.job
        for waiting_keys, rows in [
            *((w.keys, w.rows) for w in self.waiting.values()),
            *([(job.keys, job.rows)] if job is not None else []),
        ]:
            if not rest:
                break
            here = rest.intersection(waiting_keys)
            here.update(rest.intersection(map(itemgetter(0), rows)))
            found |= here
            rest = rest - here
        return found

    def commit(
        self,
        claimed: Iterable[Key],
        known: Collection[Key],
        *,
        digests: bool,
        final: bool,
        end_run: bool = False,
        background: bool = False,
    ) -> None:
        """Commit what is recorded: outputs made durable here, the transaction written
        here or, with ``background``, by a thread while records keep coming.

        ``claimed``: the run's keys claimed and not recorded, stored on its row with
        those waiting, except the ``known`` ones (the index has a row for them);
        ``digests``: every key the run claimed is a 16-byte digest.

        One commit is in flight at a time: a new one first waits for (and settles) the
        last. Until a commit has settled, its keys are in :meth:`holding`, so a duplicate
        input is still caught while the database does not show them yet.
        """
        self.settle()
        if self.interval:  # settling sets it too, but the first commit has none to settle
            self._next_commit = max(self._next_commit, time.monotonic() + self.interval)
        job = self._prepare(claimed, known, digests=digests, final=final, end_run=end_run)
        self.job = job
        if background:
            job.thread = threading.Thread(
                target=job.run, name="spindle-journal-commit", daemon=True
            )
            job.thread.start()
        else:
            job.run()
            self.settle()

    def settle(self) -> None:
        """Wait for the commit in flight; apply what it changed, or raise its error."""
        job = self.job
        if job is None:
            return
        if job.thread is not None:
            job.thread.join()
        self.job = None
        if job.error is not None:
            raise job.error
        if job.keys:
            self.index.logged = True
        self.points.update(job.points)
        # A commit's cost grows with what it carries while the interval stays the same:
        # space commits so that they take at most _COMMIT_SHARE of the time (a
        # commit_interval of 0 commits every record()).
        now = time.monotonic()
        spacing = job.seconds * (1 / _COMMIT_SHARE - 1)
        self._next_commit = now + max(self.interval, spacing) if self.interval else 0

    def forget(self) -> None:
        """Drop the commit in flight without settling it, once its thread has ended
        (after an error, or closing): the connection is then free."""
        job, self.job = self.job, None
        if job is not None and job.thread is not None:
            job.thread.join()

    def _prepare(
        self,
        claimed: Iterable[Key],
        known: Collection[Key],
        *,
        digests: bool,
        final: bool,
        end_run: bool,
    ) -> CommitJob:
        """Make the outputs durable and gather the transaction that records it."""
        began = time.monotonic()
        points: dict[str, str] = {}
        for slot, out in self.outputs.items():
            point = out.commit(final=final)
            if point is not None:
                points[slot] = point
        # Before anything below changes what is queued: an interrupt in the report's
        # code leaves the journal as it was, to be cut back by the journal.
        report = self._report_row(final=end_run)
        settling = [self.waiting[""], *(self.waiting[slot] for slot in points)]
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
        inflight = list(claimed)
        for wait in self.waiting.values():
            inflight += wait.keys
            inflight += map(itemgetter(0), wait.rows)
        if known:
            inflight = [k for k in inflight if k not in known]
        self.queued = 0
        self.stats.commits += 1
        wall = time.time()
        job = CommitJob(self.conn, self.path, began)
        job.keys = keys
        job.log = (self.run, wall)
        job.rows = rows
        job.inflight = inflight
        job.points = points
        job.digests = digests
        job.statements = [
            (
                "UPDATE outputs SET point = ? WHERE slot = ?",
                [(pt, slot) for slot, pt in points.items() if pt != self.points[slot]],
            ),
            (
                "UPDATE totals SET n = n + ? WHERE state = ?",
                [(n, state) for state, n in deltas.items() if n],
            ),
            (
                "UPDATE runs SET done = done + ?, failed = failed + ?, last_commit = ?,"
                " ended = ? WHERE id = ?",
                [(done, failed, wall, wall if end_run else None, self.run)],
            ),
            (UPSERT_REPORT, report),
        ]
        return job

    def _report_row(self, *, final: bool) -> list[tuple[Any, ...]]:
        """The run's report, as the parameters of one upsert into ``reports``; none when
        there is no source or the last one is less than a second old (unless final)."""
        source = self.report_source
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
            self.report_source = None
            with contextlib.suppress(OSError, ValueError):  # stderr may be closed
                print(
                    f"spindle: the run's report could not be stored in journal {self.path}; "
                    "the run goes on without it:",
                    file=sys.stderr,
                )
                traceback.print_exc()
            return []
        return [(self.run, time.time(), int(final), text)]
