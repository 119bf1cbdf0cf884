"""Medians of the runs, and the markdown tables that show them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from statistics import median
from typing import Any

from . import work
from .runners import CONCURRENCY, WORKLOADS, Workload

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]


def summarize(workload: Workload, runner: str, records: list[dict[str, Any]]) -> Row:
    """One row: the medians of a pair's runs, and its status if they were not all fine."""
    entry = workload.runners[runner]
    statuses = Counter(record["status"] for record in records)
    row: Row = {
        "workload": workload.name,
        "runner": runner,
        "label": entry.label,
        "note": entry.note,
        "n": records[0]["n"],
        "runs": len(records),
        "status": ", ".join(
            status if count == len(records) else f"{status} x{count}"
            for status, count in statuses.most_common()
        ),
        "failures": records[-1].get("failures", {}),
        "message": next((r["message"] for r in records if r.get("message")), ""),
    }
    for key in ["seconds", "items_per_s", "rss_self_mb", "tree_mb", "count", "kept", "lost"]:
        values = [record[key] for record in records if record.get(key) is not None]
        row[key] = median(values) if values else None
    times = [record["seconds"] for record in records if record.get("seconds")]
    #: Each run's seconds in run order: run i of every row was made in the same round.
    row["times"] = [record.get("seconds") for record in records]
    row["spread"] = (max(times) - min(times)) / median(times) if len(times) > 1 else None
    return row


def num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def spread(row: Row) -> str:
    return "—" if row["spread"] is None else f"{row['spread']:.0%}"


TEXT_COLUMNS = {"runner", "note", "completed", "failures reported"}


def table(columns: list[Column], rows: list[Row]) -> str:
    """A markdown table; columns after the first two hold figures, or the status."""
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "|".join(":--" if name in TEXT_COLUMNS else "--:" for name, _ in columns) + "|",
    ]
    for row in rows:
        if row["status"] == "ok" or WORKLOADS[row["workload"]].mode == "faults":
            cells = [cell(row) for _, cell in columns]
        else:  # no figures for a run that failed: its status instead
            first, last = [cell(row) for _, cell in columns[:2]], columns[-1][1](row)
            cells = [*first, f"**{row['status']}**", *["—"] * (len(columns) - 4), last]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def is_peer(row: Row) -> bool:
    return bool(row["runner"] not in ("spindle", "ceiling") and row["status"] == "ok")


def find(rows: list[Row], runner: str) -> Row | None:
    """The row of ``runner`` if its runs went fine."""
    return next((row for row in rows if row["runner"] == runner and row["status"] == "ok"), None)


def tiny_columns(rows: list[Row]) -> list[Column]:
    best = max((row["items_per_s"] for row in rows if is_peer(row)), default=None)
    return [
        ("items/s", lambda row: num(row["items_per_s"], 0)),
        ("vs best peer", lambda row: ratio(best and row["items_per_s"] / best)),
        ("seconds", lambda row: num(row["seconds"])),
        ("tree MB", lambda row: num(row["tree_mb"], 0)),
        ("spread", spread),
    ]


def paired_speedup(serial: Row | None, row: Row) -> float | None:
    """The median over rounds of the serial run's time over the row's run of the same
    round: runs close in time share the machine's pace, which on a shared virtual
    machine drifts by tens of percent from one minute to the next."""
    if serial is None:
        return None
    pairs = [
        s / t for s, t in zip(serial["times"], row["times"], strict=False) if s and t and t > 0
    ]
    return median(pairs) if pairs else None


def medium_columns(rows: list[Row]) -> list[Column]:
    serial_row = find(rows, "serial")
    ceiling_row = find(rows, "ceiling")
    return [
        ("seconds", lambda row: num(row["seconds"])),
        ("speed-up vs serial", lambda row: ratio(paired_speedup(serial_row, row))),
        # The same pairing against the ceiling row: how much of the machine a runner got.
        ("of ceiling", lambda row: ratio(paired_speedup(ceiling_row, row))),
        ("tree MB", lambda row: num(row["tree_mb"], 0)),
        ("spread", spread),
    ]


def overhead_us(row: Row) -> float | None:
    """Time per item beyond the ideal ``N / concurrency * sleep``, in microseconds."""
    seconds: float | None = row["seconds"]
    n: int = row["n"]
    if seconds is None:
        return None
    return (seconds - n / CONCURRENCY * work.SLEEP) / n * 1e6


def async_columns(rows: list[Row]) -> list[Column]:
    # spindle runs on uvloop when it is installed: it is compared with the same loop.
    peer = "uvloop" if find(rows, "uvloop") else "asyncio"
    peer_row = find(rows, peer)
    base = peer_row and overhead_us(peer_row)

    def versus(row: Row) -> str:
        mine = overhead_us(row)
        if row["runner"] != "spindle" or not base or mine is None:
            return "—"
        return f"{mine / base:.2f}x {peer}"

    return [
        ("seconds", lambda row: num(row["seconds"])),
        ("overhead us/item", lambda row: num(overhead_us(row))),
        ("overhead vs peer", versus),
        ("parent MB", lambda row: num(row["rss_self_mb"], 0)),
        ("spread", spread),
    ]


def memory_columns(rows: list[Row]) -> list[Column]:
    return [
        ("parent MB", lambda row: num(row["rss_self_mb"], 0)),
        ("tree MB", lambda row: num(row["tree_mb"], 0)),
        ("seconds", lambda row: num(row["seconds"])),
        ("items/s", lambda row: num(row["items_per_s"], 0)),
    ]


def completed(row: Row) -> str:
    status: str = row["status"]
    if status == "ok":
        return "yes" if row["count"] == row["n"] else "no"
    return status


def faults_columns(rows: list[Row]) -> list[Column]:
    return [
        ("completed", completed),
        (f"kept (of {rows[0]['n'] - 2:,})", lambda row: num(row["kept"], 0)),
        ("lost", lambda row: num(row["lost"], 0)),
        ("failures reported", lambda row: ", ".join(sorted(row["failures"])) or "—"),
        ("seconds", lambda row: num(row["seconds"])),
    ]


FAULT_LIMIT = WORKLOADS["faults"].limit
SECTIONS: dict[str, tuple[Callable[[list[Row]], list[Column]], str]] = {
    "tiny": (tiny_columns, "Throughput; *vs best peer*: items/s over the fastest non-spindle row."),
    "medium": (
        medium_columns,
        "Wall time; *speed-up*: the serial run's time over the row's run of the same round "
        "(the runs go round-robin), median over the rounds; *of ceiling*: the same with the "
        "ceiling row (the serial loop in two forked processes) in place of the serial run.",
    ),
    "async": (
        async_columns,
        f"*Overhead* is (seconds - ideal) / N, ideal = N / {CONCURRENCY} x {work.SLEEP} s; "
        "*vs peer* divides spindle's by the plain loop's on the same event loop.",
    ),
    "memory": (memory_columns, "Peak RSS of the process that feeds the stream (*parent*)."),
    "faults": (
        faults_columns,
        "*kept*: correct results the caller got; *lost*: good items it never got; "
        "*hung*: stopped at the time limit "
        f"({FAULT_LIMIT[0]:g} s; {FAULT_LIMIT[1]:g} s with --quick).",
    ),
}


LEAD: list[Column] = [("runner", lambda row: row["label"]), ("N", lambda row: f"{row['n']:,}")]


def note(row: Row) -> str:
    """The runner's note, and what a run that raised said."""
    said = row["message"] if row["status"] != "ok" else ""
    said = said if len(said) <= 80 else said[:77] + "..."
    return "; ".join(text for text in [row["note"], said and f"`{said}`"] if text)


NOTE: Column = ("note", note)


def render(meta: dict[str, Any], summary: list[Row]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    parts = [
        "# spindle benchmarks" + (" (quick)" if meta["quick"] else ""),
        f"{meta['date']} · Python {meta['python']} · {meta['cores']} cores · {meta['platform']} · "
        f"load average {meta['load_before']:.1f} before, {meta['load_after']:.1f} after  \n"
        f"{versions}  \n"
        f"medians of {meta['repeat']} run(s) per row; "
        f"1 ms of work = {meta['loops_per_ms']:,} loops; "
        "*tree MB* = peak RSS summed over the run's whole process tree; "
        "*spread* = (max - min) / median of the run times",
    ]
    for name, workload in WORKLOADS.items():
        rows = [row for row in summary if row["workload"] == name]
        if not rows:
            continue
        columns, legend = SECTIONS[name]
        parts += [
            f"## {workload.title}",
            legend,
            table([*LEAD, *columns(rows), NOTE], rows),
        ]
    return "\n\n".join(parts)
