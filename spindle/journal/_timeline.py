"""Throughput over run time, read back from a journal's commits (``spindle status --plot``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3

from ..observe.rates import StagePoint, TimelinePoint
from ._errors import JournalCorrupt
from ._status import open_read_only

__all__ = ["journal_timeline"]


def journal_timeline(path: str | os.PathLike[str], points: int = 120) -> list[TimelinePoint]:
    """Throughput over run time from the journal's commit times, for ``--plot``.

    The x axis is seconds of run time, the runs laid end to end (the time between a crash
    and the resume is left out). The journal knows when each commit recorded its items
    (each failure, and each log row of done keys, or the index row it was merged into),
    not how long their jobs ran: latency is left out of this plot (``NaN``); the run's
    report in ``status`` has its percentiles.
    """
    journal, conn = open_read_only(path)
    try:
        runs = conn.execute(
            "SELECT id, started, coalesce(ended, last_commit, started) FROM runs ORDER BY id"
        ).fetchall()
        offsets: dict[int, float] = {}
        elapsed = 0.0
        for rid, started, ended in runs:
            offsets[rid] = elapsed - started
            elapsed += max(ended - started, 0.0)
        width = max(elapsed / points, 1e-3)
        n = int(elapsed / width) + 1
        done = [0] * n
        failed = [0] * n

        def count(run: int, finished: float | None, state: str, items: int) -> None:
            offset = offsets.get(run)
            if offset is None or finished is None:
                return
            b = min(max(int((finished + offset) / width), 0), n - 1)
            if state == "done":
                done[b] += items
            else:
                failed[b] += items

        rows = conn.execute("SELECT run, finished, state FROM items WHERE state != 'pending'")
        while chunk := rows.fetchmany(4096):
            for run, finished, state in chunk:
                count(run, finished, state, 1)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "log" in tables:
            for run, committed, items in conn.execute("SELECT run, committed, n FROM log"):
                count(run, committed, "done", items)
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(f"{journal} is not a readable spindle journal: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    unknown = float("nan")
    timeline: list[TimelinePoint] = []
    total_done = total_failed = 0
    for b in range(n):
        total_done += done[b]
        total_failed += failed[b]
        stage: StagePoint = {
            "done": total_done,
            "failed": total_failed,
            "rate": (done[b] + failed[b]) / width,
            "p50": unknown,
            "p95": unknown,
            "p99": unknown,
            "in_flight": 0,
            "queued": 0,
        }
        timeline.append({"t": (b + 1) * width, "stages": {"recorded": stage}})
    return timeline
