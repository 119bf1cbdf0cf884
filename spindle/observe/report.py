"""The final report of a run, as text for the terminal and as JSON for ``--stats-json``.

Both are built from the last snapshot of the run::

    snapshot() ──normalize──▶ to_json(): totals, per-stage figures, failure groups,
                              │          sections of the run (hosts, caches, connectors)
                              └──▶ render_text(): the same, laid out for a terminal

A journaled run also stores ``to_json()`` in its journal at each commit, and ``spindle
status`` shows it again: :func:`report_from_json` reads such a stored report back (keys
a damaged or older report lacks are filled in), and :func:`totals_line` and
:func:`detail_lines` lay it out as :func:`render_text` does.

Run totals: ``done`` counts the items that came out of the last stage; ``failed``,
``retried`` and ``worker_restarts`` add up every stage (an item fails in one stage only).
Failures are grouped by (error type, start of the message's first line), most frequent
first, each with a count and its most recent example. The snapshot carries only the
most recent failures, so the groups describe those; ``failed`` is the full count.

Sections of the whole run are copied from the snapshot as they are, each only when the
run has it: a fetch run's ``hosts``, the ``caches`` of its stages (their counts are the
caches' own, over every process and run that used them) and a stream run's
``connectors``. Their text is laid out in :mod:`spindle.observe._sections`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from .._core.histogram import LatencySnapshot
from . import _format as fmt
from ._fields import Table, int_or_none, maps, text, texts, to_float, to_int
from ._sections import cache_lines, connector_lines, host_lines
from ._snapshot import (
    FAILURE,
    HOST,
    LATENCY,
    CacheSnapshot,
    ConnectorSnapshot,
    FailureSnapshot,
    HostSnapshot,
    normalize,
    read_caches,
    read_connectors,
)

__all__ = [
    "FailureGroup",
    "Report",
    "StageReport",
    "detail_lines",
    "group_failures",
    "render_text",
    "report_from_json",
    "to_json",
    "totals_line",
]

MESSAGE_PREFIX = 60
"""How many characters of a message's first line tell failure groups apart."""


class FailureGroup(TypedDict):
    """Failures with the same error type and message prefix."""

    error: str
    message: str
    count: int
    stages: list[str]
    example: FailureSnapshot


class StageReport(TypedDict):
    """One stage's figures in the report."""

    name: str
    kind: str
    done: int
    failed: int
    retried: int
    restarts: int
    workers: int
    throughput: float
    latency: LatencySnapshot


class _ReportBase(TypedDict):
    status: str
    elapsed: float
    total: int | None
    done: int
    failed: int
    retried: int
    worker_restarts: int
    throughput: float
    stages: list[StageReport]
    failures_shown: int
    failure_groups: list[FailureGroup]


class Report(_ReportBase, total=False):
    """What :func:`to_json` returns (``hosts`` only for fetch runs, ``caches`` for runs
    whose stages have a cache, ``connectors`` for stream runs)."""

    hosts: list[HostSnapshot]
    caches: list[CacheSnapshot]
    connectors: list[ConnectorSnapshot]


def _prefix(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= MESSAGE_PREFIX else first[: MESSAGE_PREFIX - 1] + "…"


def group_failures(failures: Sequence[FailureSnapshot]) -> list[FailureGroup]:
    """Failures grouped by (error, message prefix), most frequent first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for failure in sorted(failures, key=lambda f: f["time"]):
        key = (failure["error"], _prefix(failure["message"]))
        group = groups.get(key)
        if group is None:
            groups[key] = {
                "error": key[0],
                "message": key[1],
                "count": 1,
                "stages": [failure["stage"]],
                "example": failure,
            }
        else:
            group["count"] += 1
            group["example"] = failure
            if failure["stage"] not in group["stages"]:
                group["stages"].append(failure["stage"])
    return sorted(groups.values(), key=lambda g: -g["count"])


def to_json(snapshot: Mapping[str, Any]) -> Report:
    """The report as plain data (what ``--stats-json PATH`` writes)."""
    snap = normalize(snapshot)
    elapsed = snap["elapsed"]
    stages: list[StageReport] = []
    for stage in snap["stages"]:
        processed = stage["done"] + stage["failed"]
        stages.append(
            {
                "name": stage["name"],
                "kind": stage["kind"],
                "done": stage["done"],
                "failed": stage["failed"],
                "retried": stage["retried"],
                "restarts": stage["restarts"],
                "workers": stage["workers"],
                "throughput": processed / elapsed if elapsed > 0 else 0.0,
                "latency": stage["latency"],
            }
        )
    done = stages[-1]["done"] if stages else 0
    report: Report = {
        "status": snap["status"],
        "elapsed": elapsed,
        "total": snap["total"],
        "done": done,
        "failed": sum(s["failed"] for s in stages),
        "retried": sum(s["retried"] for s in stages),
        "worker_restarts": sum(s["restarts"] for s in stages),
        "throughput": done / elapsed if elapsed > 0 else 0.0,
        "stages": stages,
        "failures_shown": len(snap["failures"]),
        "failure_groups": group_failures(snap["failures"]),
    }
    if "hosts" in snap:
        report["hosts"] = snap["hosts"]
    if "caches" in snap:
        report["caches"] = snap["caches"]
    if "connectors" in snap:
        report["connectors"] = snap["connectors"]
    return report


_STAGE_REPORT = Table(
    StageReport,
    {
        "name": text(),  # stage<i> when missing: see _stage_reports
        "kind": text(),
        "done": to_int,
        "failed": to_int,
        "retried": to_int,
        "restarts": to_int,
        "workers": to_int,
        "throughput": to_float,
        "latency": LATENCY,
    },
)


def _stage_reports(value: object) -> list[StageReport]:
    return [_STAGE_REPORT(s, name=f"stage{i}") for i, s in enumerate(maps(value))]


_FAILURE_GROUP = Table(
    FailureGroup,
    {
        "error": text(),
        "message": text(),
        "count": to_int,
        "stages": texts,
        "example": FAILURE,
    },
)


def _failure_groups(value: object) -> list[FailureGroup]:
    # A group without an example is dropped: there is nothing to show for it.
    return [_FAILURE_GROUP(g) for g in maps(value) if isinstance(g.get("example"), Mapping)]


_REPORT = Table(
    Report,
    {
        "status": text("running"),
        "elapsed": to_float,
        "total": int_or_none,
        "done": to_int,
        "failed": to_int,
        "retried": to_int,
        "worker_restarts": to_int,
        "throughput": to_float,
        "stages": _stage_reports,
        "failures_shown": to_int,
        "failure_groups": _failure_groups,
    },
    optional=("hosts", "caches", "connectors"),
)


def report_from_json(data: object) -> Report | None:
    """A complete :class:`Report` from one that was stored as JSON (by a journaled run),
    with zeros or empty lists where keys are missing; None if ``data`` is not a report."""
    if not isinstance(data, Mapping):
        return None
    report = _REPORT(data)
    if "hosts" in data:
        report["hosts"] = HOST.rows(data.get("hosts"))
    if "caches" in data:
        report["caches"] = read_caches(data.get("caches"))
    if "connectors" in data:
        report["connectors"] = read_connectors(data.get("connectors"))
    return report


def totals_line(rep: Report) -> str:
    """The run's totals on one line: items done (of the total), failed, retried,
    worker restarts, items per second."""
    total = f" of {fmt.count(rep['total'])}" if rep["total"] is not None else ""
    return (
        f"{fmt.count(rep['done'])}{total} items done, {fmt.count(rep['failed'])} failed, "
        f"{fmt.count(rep['retried'])} retried, {fmt.count(rep['worker_restarts'])} restarts, "
        f"{fmt.rate(rep['throughput'])} items/s"
    )


def detail_lines(rep: Report, *, failures: bool = True) -> list[str]:
    """The report below its totals: the per-stage table (counts, throughput, latency
    percentiles), the failure groups (unless ``failures`` is False) and the sections
    of the run it has: hosts, caches, connectors."""
    lines: list[str] = []
    if rep["stages"]:
        rows = [
            [
                *("stage", "kind", "done", "failed", "retried", "restarts", "items/s"),
                *("mean", "p50", "p90", "p95", "p99", "max"),
            ]
        ]
        for s in rep["stages"]:
            lat = s["latency"]
            seconds = (lat["mean"], lat["p50"], lat["p90"], lat["p95"], lat["p99"], lat["max"])
            rows.append(
                [
                    s["name"],
                    s["kind"],
                    fmt.count(s["done"]),
                    fmt.count(s["failed"]),
                    fmt.count(s["retried"]),
                    fmt.count(s["restarts"]),
                    fmt.rate(s["throughput"]),
                    *(fmt.latency(v) for v in seconds),
                ]
            )
        lines += ["", *fmt.table(rows, right=set(range(2, 13)))]
    groups = rep["failure_groups"] if failures else []
    if groups:
        shown = rep["failures_shown"]
        scope = "all"
        if shown < rep["failed"]:
            scope = f"the most recent {shown} of {fmt.count(rep['failed'])}"
        lines += ["", f"failures ({scope}, grouped):"]
        for g in groups:
            ex = g["example"]
            lines.append(f"  {g['count']:>5} x {g['error']}: {g['message']}")
            lines.append(f"          e.g. stage {ex['stage']}, item {ex['item']}")
            last = [ln for ln in ex["traceback"].strip().splitlines() if ln.strip()][-2:]
            lines += [f"          {ln.strip()}" for ln in last]
    lines += host_lines(rep.get("hosts", []))
    lines += cache_lines(rep.get("caches", []))
    lines += connector_lines(rep.get("connectors", []))
    return lines


def render_text(snapshot: Mapping[str, Any]) -> str:
    """The report as text for a terminal or a log."""
    rep = to_json(snapshot)
    lines = [
        f"spindle: {rep['status']} after {fmt.duration(rep['elapsed'])}: {totals_line(rep)}",
        *detail_lines(rep),
    ]
    return "\n".join(lines) + "\n"
