"""The snapshot every observer reads, and its normalisation.

The engine hands observers a callable ``snapshot() -> dict`` that is cheap and safe to
call from the event loop thread. Its schema is the engine's
(:mod:`spindle._core.snapshot`), with the sections of the whole run that observers know
how to show: a fetch run's ``hosts``, the ``caches`` its stages use, and a stream run's
``connectors`` (its source and its sink). Extra keys may appear and are ignored.
:func:`normalize` fills in missing keys with zeros so that the display, the report, the
Prometheus collector and the timeline never see a ``KeyError`` from an older or partial
snapshot (one :class:`~spindle.observe._fields.Table` of fields a record type; the report
reads a stored report back with the same tables)::

    engine ──snapshot()──▶ normalize() ──▶ LiveDisplay | report | Prometheus | dashboard | Timeline

A section's key is in the normalised snapshot only when the engine's snapshot has it.
A connector's figures of its own (a Redis source's ``claimed``, a PostgreSQL sink's
``duplicates``) go into its row's ``extra``, when they are plain numbers or text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

from .._core.snapshot import (
    FailureSnapshot,
    LatencySnapshot,
    RunSnapshot,
    StageSnapshot,
    WorkerSnapshot,
)
from ._fields import Table, float_or_none, int_or_none, maps, text, to_float, to_int

__all__ = [
    "FAILURE",
    "HOST",
    "LATENCY",
    "CacheSnapshot",
    "ConnectorSnapshot",
    "Extra",
    "FailureSnapshot",
    "HostSnapshot",
    "SinkSnapshot",
    "Snapshot",
    "SnapshotFn",
    "SourceSnapshot",
    "StageSnapshot",
    "WorkerSnapshot",
    "normalize",
    "read_caches",
    "read_connectors",
]

Status = Literal["running", "stopping", "done", "failed"]


class HostSnapshot(TypedDict):
    """Per-host figures of a fetch run, added up over the stage's worker processes
    (``limit`` is the host's concurrency limit now)."""

    host: str
    requests: int
    errors: int
    latency_mean: float
    limit: int


class CacheSnapshot(TypedDict):
    """A :class:`spindle.Cache` the run's stages use (``stages``: their names, comma
    separated). The counts are the cache's own: every process of the machine, since the
    cache was made. ``get_us`` is the time (µs) one local ``get`` took when the snapshot
    was taken. The ``ring_*`` keys are there only for a cache with a Redis ring behind
    it: the ring's members, how many of them are down, and the median ``get`` time (µs)
    of its slowest member (None before any was measured)."""

    path: str
    stages: str
    hits: int
    misses: int
    hit_rate: float
    sets: int
    evictions: int
    expired: int
    entries: int
    bytes_used: int
    max_bytes: int
    get_us: float
    ring_members: NotRequired[int]
    ring_down: NotRequired[int]
    ring_get_us: NotRequired[float | None]


Extra: TypeAlias = dict[str, str | int | float | bool | None]
"""A connector's figures of its own, by name (plain numbers and text only)."""


class SourceSnapshot(TypedDict):
    """The source of a stream run: messages ``read`` (``redelivered`` among them),
    acknowledged, read and not acknowledged yet (now, at the most, and the bound), the
    times the intake waited for acknowledgements, and the messages the source holds
    that its consumer group has not read yet (``lag``, None when unknown)."""

    role: Literal["source"]
    name: str
    read: int
    redelivered: int
    acked: int
    unacked: int
    peak_unacked: int
    max_unacked: int
    intake_waits: int
    lag: int | None
    extra: Extra


class SinkSnapshot(TypedDict):
    """The sink of a stream run: results and failures written, chunks committed, and the
    latency of a chunk's write and commit."""

    role: Literal["sink"]
    name: str
    written: int
    failed: int
    commits: int
    commit_latency: LatencySnapshot
    extra: Extra


ConnectorSnapshot: TypeAlias = SourceSnapshot | SinkSnapshot
"""A row of a stream run's ``connectors`` section (tell them apart by ``role``)."""


class Snapshot(RunSnapshot, total=False):
    """The engine's :class:`~spindle._core.snapshot.RunSnapshot` as the observers read it,
    with the sections of the whole run they show as tables: a fetch run's ``hosts``, the
    ``caches`` of its stages, and a stream run's ``connectors``."""

    hosts: list[HostSnapshot]
    caches: list[CacheSnapshot]
    connectors: list[ConnectorSnapshot]


SnapshotFn = Callable[[], Mapping[str, Any]]
"""A callable returning the engine's current :class:`Snapshot` (a plain dict)."""


LATENCY = Table(
    LatencySnapshot,
    {
        "count": to_int,
        "mean": to_float,
        "p50": to_float,
        "p90": to_float,
        "p95": to_float,
        "p99": to_float,
        "max": to_float,
    },
)
FAILURE = Table(
    FailureSnapshot,
    {
        "time": to_float,
        "stage": text(),
        "item": text(),
        "error": text("Exception"),
        "message": text(),
        "traceback": text(),
    },
)
HOST = Table(
    HostSnapshot,
    {
        "host": text(),
        "requests": to_int,
        "errors": to_int,
        "latency_mean": to_float,
        "limit": to_int,
    },
)
_CACHE = Table(
    CacheSnapshot,
    {
        "path": text(),
        "stages": text(),
        "hits": to_int,
        "misses": to_int,
        "hit_rate": to_float,
        "sets": to_int,
        "evictions": to_int,
        "expired": to_int,
        "entries": to_int,
        "bytes_used": to_int,
        "max_bytes": to_int,
        "get_us": to_float,
    },
    optional=("ring_members", "ring_down", "ring_get_us"),
)


def read_caches(value: object) -> list[CacheSnapshot]:
    """The rows of a ``caches`` section (the ``ring_*`` keys only where a row has a ring)."""
    rows = []
    for raw in maps(value):
        row = _CACHE(raw)
        if "ring_members" in raw:
            row["ring_members"] = to_int(raw["ring_members"])
            row["ring_down"] = to_int(raw.get("ring_down"))
            row["ring_get_us"] = float_or_none(raw.get("ring_get_us"))
        rows.append(row)
    return rows


_SOURCE = Table(
    SourceSnapshot,
    {
        "role": lambda _: "source",
        "name": text("source"),
        "read": to_int,
        "redelivered": to_int,
        "acked": to_int,
        "unacked": to_int,
        "peak_unacked": to_int,
        "max_unacked": to_int,
        "intake_waits": to_int,
        "lag": int_or_none,
        "extra": lambda _: {},  # see _extra
    },
)
_SINK = Table(
    SinkSnapshot,
    {
        "role": lambda _: "sink",
        "name": text("sink"),
        "written": to_int,
        "failed": to_int,
        "commits": to_int,
        "commit_latency": LATENCY,
        "extra": lambda _: {},  # see _extra
    },
)


def _scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int)  # a bool is an int


def _extra(raw: Mapping[str, Any], known: frozenset[str]) -> Extra:
    """A connector's own figures: the plain keys of ``raw`` its table does not read,
    and those of a normalised row's ``extra`` (so that reading a row again keeps them)."""
    kept = raw.get("extra")
    pairs = [*(kept.items() if isinstance(kept, Mapping) else ()), *raw.items()]
    return {str(k): v for k, v in pairs if k not in known and _scalar(v)}


def read_connectors(value: object) -> list[ConnectorSnapshot]:
    """The rows of a ``connectors`` section; a row whose ``role`` is neither ``source``
    nor ``sink`` is dropped (nothing tells how to show it)."""
    rows: list[ConnectorSnapshot] = []
    for raw in maps(value):
        role = raw.get("role")
        if role == "source":
            source = _SOURCE(raw)
            source["extra"] = _extra(raw, _SOURCE.keys)
            rows.append(source)
        elif role == "sink":
            sink = _SINK(raw)
            sink["extra"] = _extra(raw, _SINK.keys)
            rows.append(sink)
    return rows


_WORKER = Table(
    WorkerSnapshot,
    {
        "stage": text(),
        "index": to_int,
        "pid": lambda pid: pid if isinstance(pid, int) else None,
        "state": text("idle"),
        "jobs": to_int,
        "restarts": to_int,
    },
)
_STAGE = Table(
    StageSnapshot,
    {
        "name": text(),  # stage<i> when missing: see _stages
        "kind": text(),
        "done": to_int,
        "failed": to_int,
        "retried": to_int,
        "in_flight": to_int,
        "queued": to_int,
        "workers": to_int,
        "restarts": to_int,
        "latency": LATENCY,
    },
    optional=("report",),
)


def _stages(value: object) -> list[StageSnapshot]:
    stages = []
    for i, raw in enumerate(maps(value)):
        stage = _STAGE(raw, name=f"stage{i}")
        report = raw.get("report")
        if isinstance(report, Mapping):
            stage["report"] = dict(report)
        stages.append(stage)
    return stages


_RUN = Table(
    Snapshot,
    {
        "elapsed": to_float,
        "status": text("running"),
        "total": int_or_none,
        "stages": _stages,
        "workers": _WORKER.rows,
        "failures": FAILURE.rows,
    },
    optional=("hosts", "caches", "connectors"),
)


def normalize(raw: Mapping[str, Any]) -> Snapshot:
    """A complete :class:`Snapshot` from whatever ``snapshot()`` returned (reading a
    normalised snapshot again gives the same)."""
    snap = _RUN(raw)
    if "hosts" in raw:
        snap["hosts"] = HOST.rows(raw.get("hosts"))
    if "caches" in raw:
        snap["caches"] = read_caches(raw.get("caches"))
    if "connectors" in raw:
        snap["connectors"] = read_connectors(raw.get("connectors"))
    return snap
