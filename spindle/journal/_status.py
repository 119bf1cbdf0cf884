"""``spindle status``: what a journal says about its runs, as text or as a dict for ``--json``.

Reads the journal read-only, so it can be pointed at a journal a run is writing right now
(WAL mode lets a reader see the last commit without blocking the writer). Totals come from
the ``totals`` table that every commit keeps up to date, so they are quick for any size;
failures grouped by reason take one scan of the items (no index on them, which would
slow down every commit), and only when there are failures.

A journaled run also stores its report (the JSON of ``--stats-json``: per-stage counts,
latency percentiles, retries, worker restarts, failure groups) in the ``reports`` table,
one row per run, rewritten at its commits. Status shows the most recent one after the
journal's own figures; a journal written before that table existed has none, and status
shows the rest as before (it never creates the table: it only reads).

What status holds is plain data (:mod:`._summary`), which the journals build as well.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from ..observe import _format as fmt
from ..observe.report import detail_lines, report_from_json, totals_line
from ._base import Key, key_text
from ._errors import JournalCorrupt, JournalError
from ._lock import is_locked
from ._log import unpack_keys
from ._summary import FailureGroup, JournalStatus, RunInfo, RunReport

#: Failure groups shown; the rest are summed up in one line.
_MAX_GROUPS = 20


def collect_status(
    conn: sqlite3.Connection,
    path: Path,
    *,
    running: bool = False,
    live_run: int | None = None,
    in_flight: int = 0,
) -> JournalStatus:
    """Build the status from an open connection to the journal.

    ``live_run`` is the id of the run this process is making (shown as running);
    otherwise the last unfinished run is running if the journal is locked.
    """
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    totals = dict(conn.execute("SELECT state, n FROM totals").fetchall())
    rows = conn.execute(
        "SELECT id, started, ended, last_commit, done, failed, pid FROM runs ORDER BY id"
    ).fetchall()
    last_open = max((r[0] for r in rows if r[2] is None), default=None)
    if live_run is None and last_open is not None and not running:
        running = is_locked(path)
        live_run = last_open
    runs = []
    for rid, started, ended, last_commit, done, failed, pid in rows:
        if ended is not None:
            state = "finished"
        elif running and rid == live_run:
            state = "running"
        else:
            state = "interrupted"
        runs.append(RunInfo(rid, started, ended, last_commit, done, failed, pid, state))
    groups: tuple[FailureGroup, ...] = ()
    if totals.get("failed"):  # a scan of the items: no index slows down every commit for it
        groups = tuple(
            FailureGroup(error or "?", n, key_text(key), message or "")
            for error, n, key, message in conn.execute(
                "SELECT error, count(*) AS n, min(key), message FROM items"
                " WHERE state = 'failed' GROUP BY error ORDER BY n DESC, error LIMIT ?",
                (_MAX_GROUPS + 1,),
            )
        )
    outputs = {
        slot: identity for slot, identity in conn.execute("SELECT slot, identity FROM outputs")
    }
    pending = int(totals.get("pending", 0)) + _unmerged_in_flight(conn)
    report = _last_report(conn)
    return JournalStatus(
        path=str(path),
        fingerprint=str(meta.get("fingerprint", "")),
        created=meta.get("created"),
        done=int(totals.get("done", 0)),
        failed=int(totals.get("failed", 0)),
        pending=pending,
        in_flight=in_flight,
        runs=tuple(runs),
        failures=groups,
        outputs=outputs,
        report=report,
    )


def _unmerged_in_flight(conn: sqlite3.Connection) -> int:
    """Keys runs had in flight at their last commit, not yet in the index as pending
    (the next run that opens the journal puts them there)."""
    try:
        row = conn.execute("SELECT coalesce(sum(inflight_n), 0) FROM runs").fetchone()
    except sqlite3.OperationalError:  # a journal of format 1: pending keys are items
        return 0
    return int(row[0])


def item_states(path: str | os.PathLike[str]) -> dict[Key, str]:
    """Every key the journal knows, with its state (``pending``, ``done`` or ``failed``).

    Reads the index (``items``), then the log of commits not yet merged into it, then
    the keys runs had in flight: the same view a resume gets. Holds every key in
    memory: for checks and small journals, not for millions of items.
    """
    _, conn = open_read_only(path)
    try:
        states: dict[Key, str] = dict(conn.execute("SELECT key, state FROM items").fetchall())
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "log" in tables:
            for fmt, blob in conn.execute("SELECT fmt, keys FROM log ORDER BY id"):
                states.update(dict.fromkeys(unpack_keys(fmt, blob), "done"))
            for fmt, blob in conn.execute(
                "SELECT inflight_fmt, inflight FROM runs WHERE inflight IS NOT NULL"
            ):
                for key in unpack_keys(fmt, blob):
                    states.setdefault(key, "pending")
    finally:
        conn.close()
    return states


def _last_report(conn: sqlite3.Connection) -> RunReport | None:
    """The most recent report a run stored; None in a journal without the ``reports``
    table (made before runs stored reports) or without a readable report."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reports'"
    ).fetchone()
    if has_table is None:
        return None
    row = conn.execute(
        "SELECT run, stored, final, report FROM reports ORDER BY run DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    run, stored, final, text = row
    try:
        report = report_from_json(orjson.loads(text))
    except orjson.JSONDecodeError:  # damaged: shown as no report, the rest as usual
        return None
    if report is None:
        return None
    return RunReport(int(run), float(stored or 0.0), bool(final), report)


def open_read_only(path: str | os.PathLike[str]) -> tuple[Path, sqlite3.Connection]:
    """The journal's absolute path and a read-only connection to it (for status and
    plots, which must never change a journal, even one a run is writing)."""
    journal = Path(path).absolute()
    if not journal.is_file():
        raise JournalError(f"no journal at {journal}")
    try:
        conn = sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {journal}: {exc}") from exc
    return journal, conn


def read_status(path: str | os.PathLike[str]) -> JournalStatus:
    """Open the journal at ``path`` read-only and collect its status."""
    journal, conn = open_read_only(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "totals", "runs", "items", "outputs"} <= tables:
            raise JournalCorrupt(f"{journal} is not a spindle journal")
        return collect_status(conn, journal)
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(f"{journal} is not a readable spindle journal: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _count(n: int) -> str:
    return f"{n:,}"


def render_status(status: JournalStatus) -> str:
    """The text ``spindle status`` prints."""
    state = "running" if status.running else "stopped"
    if status.runs and not status.running:
        last = status.runs[-1].state
        state = (
            "finished" if last == "finished" else "interrupted (resume by running the same command)"
        )
    lines = [
        f"journal   {status.path}",
        f"state     {state}",
        f"done      {_count(status.done)}",
        f"failed    {_count(status.failed)}",
        f"pending   {_count(status.pending)}"
        + (f" ({_count(status.in_flight)} in flight)" if status.in_flight else ""),
        f"runs      {len(status.runs)}, elapsed {_duration(status.elapsed)}, "
        f"{_count(round(status.throughput))} items/s",
    ]
    for slot, identity in sorted(status.outputs.items()):
        lines.append(f"{slot:<9} {identity}")
    if status.failures:
        lines.append("failures by reason:")
        for group in status.failures[:_MAX_GROUPS]:
            message = group.example_message.splitlines()[0] if group.example_message else ""
            if len(message) > 100:
                message = message[:97] + "..."
            lines.append(f"  {_count(group.count):>9}  {group.error}: {message}")
            lines.append(f"             e.g. key {group.example_key}")
        if len(status.failures) > _MAX_GROUPS:
            lines.append("  ... and more error types")
    if status.report is not None:
        lines += ["", *_report_lines(status)]
    return "\n".join(lines)


def _report_lines(status: JournalStatus) -> list[str]:
    """The stored report, laid out as the run's final report is, under a line naming
    its run and saying whether that run ended."""
    stored = status.report
    assert stored is not None
    rep = stored.report
    elapsed = fmt.duration(rep["elapsed"])
    state = status.report_state()
    if state == "ended":
        how = f"ended ({rep['status']}) after {elapsed}"
    elif state == "running":
        how = f"running; as of {elapsed} into the run"
    else:
        how = f"interrupted (the process died); as of {elapsed} into the run"
    last = status.runs[-1].id if status.runs else stored.run
    later = "" if last == stored.run else f" (runs after it, up to {last}, stored none)"
    return [
        f"report of run {stored.run}{later}: {how}",
        f"  {totals_line(rep)}",
        # Failures are shown above, grouped by reason over every run; the report's
        # groups (of its most recent failures only) stay in --json.
        *detail_lines(rep, failures=False),
    ]


def status_text(path: str | os.PathLike[str]) -> str:
    """``spindle status PATH``."""
    return render_status(read_status(path))


def status_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``spindle status PATH --json``."""
    return read_status(path).to_dict()
