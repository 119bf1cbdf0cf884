"""The sections of the whole run as text: tables for the final report, short lines for
the live display.

A section is a list of rows in the snapshot (see :mod:`spindle.observe._snapshot`)::

    hosts       ──▶ host_lines()       "hosts:" and a table, busiest first   (report)
    caches      ──▶ cache_lines()      "caches:" and a table                  (report)
                └─▶ cache_summary()    one line a cache                       (display)
    connectors  ──▶ connector_lines()  "connectors:", a source table, a sink table (report)
                └─▶ stream_summary()   one line for the source and the sink   (display)

Each ``*_lines`` function gives nothing for a missing or empty section, and otherwise
starts with an empty line, as the report's other parts do.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _format as fmt
from ._snapshot import (
    CacheSnapshot,
    ConnectorSnapshot,
    Extra,
    HostSnapshot,
    SinkSnapshot,
    SourceSnapshot,
)

__all__ = [
    "cache_lines",
    "cache_summary",
    "connector_lines",
    "host_lines",
    "stream_summary",
]


def host_lines(hosts: Sequence[HostSnapshot]) -> list[str]:
    """A fetch run's hosts, the busiest first: requests, errors, mean latency, limit."""
    if not hosts:
        return []
    rows = [["host", "requests", "errors", "mean latency", "limit"]]
    for h in sorted(hosts, key=lambda h: -h["requests"]):
        rows.append(
            [
                h["host"],
                fmt.count(h["requests"]),
                fmt.count(h["errors"]),
                fmt.latency(h["latency_mean"]),
                fmt.count(h["limit"]),
            ]
        )
    return ["", "hosts:", *fmt.table(rows, right={1, 2, 3, 4})]


def _ring(c: CacheSnapshot) -> list[str]:
    if "ring_members" not in c:
        return ["-", "-"]
    members = c["ring_members"]
    ring_get = c.get("ring_get_us")
    return [
        f"{members - c.get('ring_down', 0)}/{members} up",
        fmt.latency(ring_get / 1e6) if ring_get is not None else "-",
    ]


def cache_lines(caches: Sequence[CacheSnapshot]) -> list[str]:
    """The caches of the run's stages: lookups, writes, what they hold and the time of
    one ``get``; with the ring's members and its ``get`` time when one has a ring."""
    if not caches:
        return []
    ring = any("ring_members" in c for c in caches)
    head = ["cache", "stages", "hit rate", "hits", "misses", "sets", "evictions", "expired"]
    head += ["entries", "used", "max", "get"]
    rows = [head + (["ring", "ring get"] if ring else [])]
    for c in caches:
        row = [
            c["path"],
            c["stages"],
            fmt.percent(c["hit_rate"]),
            *(fmt.count(c[k]) for k in ("hits", "misses", "sets", "evictions", "expired")),
            fmt.count(c["entries"]),
            fmt.size(c["bytes_used"]),
            fmt.size(c["max_bytes"]),
            fmt.latency(c["get_us"] / 1e6),
        ]
        rows.append(row + (_ring(c) if ring else []))
    return ["", "caches:", *fmt.table(rows, right=set(range(2, len(rows[0]))))]


def _figure(value: str | int | float | bool | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return fmt.count(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return value


def _extra(extra: Extra) -> str:
    return ", ".join(f"{name} {_figure(value)}" for name, value in extra.items())


def _with_extra(rows: list[list[str]], extras: list[Extra]) -> list[list[str]]:
    """``rows`` with an ``other`` column of each row's own figures, if any has some."""
    if not any(extras):
        return rows
    head, *body = rows
    return [[*head, "other"]] + [[*row, _extra(e)] for row, e in zip(body, extras, strict=True)]


def _split(rows: Sequence[ConnectorSnapshot]) -> tuple[list[SourceSnapshot], list[SinkSnapshot]]:
    sources: list[SourceSnapshot] = []
    sinks: list[SinkSnapshot] = []
    for row in rows:
        if row["role"] == "source":
            sources.append(row)
        else:
            sinks.append(row)
    return sources, sinks


def connector_lines(connectors: Sequence[ConnectorSnapshot]) -> list[str]:
    """A stream run's source (messages read, acknowledged, waiting, the group's lag) and
    its sink (results, failures, commits and their latency), a table each."""
    if not connectors:
        return []
    sources, sinks = _split(connectors)
    lines = ["", "connectors:"]
    if sources:
        rows = [
            [
                *("source", "read", "redelivered", "acked", "unacked"),
                *("peak unacked", "max unacked", "intake waits", "lag"),
            ]
        ]
        for s in sources:
            counts = (s["read"], s["redelivered"], s["acked"], s["unacked"], s["peak_unacked"])
            rows.append(
                [
                    s["name"],
                    *(fmt.count(n) for n in counts),
                    fmt.count(s["max_unacked"]),
                    fmt.count(s["intake_waits"]),
                    fmt.count(s["lag"]) if s["lag"] is not None else "-",
                ]
            )
        lines += fmt.table(_with_extra(rows, [s["extra"] for s in sources]), set(range(1, 9)))
    if sinks:
        rows = [["sink", "written", "failed", "commits", "commit mean", "p50", "p99", "max"]]
        for k in sinks:
            lat = k["commit_latency"]
            rows.append(
                [
                    k["name"],
                    fmt.count(k["written"]),
                    fmt.count(k["failed"]),
                    fmt.count(k["commits"]),
                    *(fmt.latency(v) for v in (lat["mean"], lat["p50"], lat["p99"], lat["max"])),
                ]
            )
        lines += fmt.table(_with_extra(rows, [k["extra"] for k in sinks]), set(range(1, 8)))
    return lines


def cache_summary(c: CacheSnapshot) -> str:
    """One cache on one line: ``cache PATH: 49.8% hits of 201 lookups, 100 entries,
    1.58 KB of 16 MB, get 8.19 µs`` (and the ring's members up, when it has one)."""
    lookups = c["hits"] + c["misses"]
    line = (
        f"cache {c['path']}: {fmt.percent(c['hit_rate'])} hits of {fmt.count(lookups)} "
        f"lookups, {fmt.count(c['entries'])} entries, {fmt.size(c['bytes_used'])} of "
        f"{fmt.size(c['max_bytes'])}, get {fmt.latency(c['get_us'] / 1e6)}"
    )
    if "ring_members" in c:
        line += f", ring {_ring(c)[0]}"
    return line


def stream_summary(connectors: Sequence[ConnectorSnapshot]) -> str:
    """A stream run's source and sink on one line: ``source NAME: 1,000 read, 20 unacked
    of 1,024, lag 5; sink NAME: 980 written, 2 failed, 30 commits, p99 12 ms``."""
    sources, sinks = _split(connectors)
    parts = []
    for s in sources:
        lag = f", lag {fmt.count(s['lag'])}" if s["lag"] is not None else ""
        parts.append(
            f"source {s['name']}: {fmt.count(s['read'])} read, {fmt.count(s['unacked'])} "
            f"unacked of {fmt.count(s['max_unacked'])}{lag}"
        )
    for k in sinks:
        parts.append(
            f"sink {k['name']}: {fmt.count(k['written'])} written, {fmt.count(k['failed'])} "
            f"failed, {fmt.count(k['commits'])} commits, "
            f"p99 {fmt.latency(k['commit_latency']['p99'])}"
        )
    return "; ".join(parts)
