"""The snapshot every observer reads, and its normalisation.

The engine hands observers a callable ``snapshot() -> dict`` that is cheap and safe to
call from the event loop thread. Its schema is the engine's
(:mod:`spindle._core.snapshot`), with the sections observers know how to show (a fetch
run's ``hosts``); extra keys may appear and are ignored. :func:`normalize` fills in
missing keys with zeros so that the display, the report, the Prometheus collector and the
timeline never see a ``KeyError`` from an older or partial snapshot (one
:class:`~spindle.observe._fields.Table` of fields a record type; the report reads a
stored report back with the same tables)::

    engine ──snapshot()──▶ normalize() ──▶ LiveDisplay | report | Prometheus | dashboard | Timeline
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

from .._core.snapshot import (
    FailureSnapshot,
    LatencySnapshot,
    RunSnapshot,
    StageSnapshot,
    WorkerSnapshot,
)
from ._fields import Table, int_or_none, maps, text, to_float, to_int

__all__ = [
    "FAILURE",
    "HOST",
    "LATENCY",
    "FailureSnapshot",
    "HostSnapshot",
    "Snapshot",
    "SnapshotFn",
    "StageSnapshot",
    "WorkerSnapshot",
    "normalize",
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


class Snapshot(RunSnapshot, total=False):
    """The engine's :class:`~spindle._core.snapshot.RunSnapshot` as the observers read it:
    with the ``hosts`` section of a fetch run, which they show as a table."""

    hosts: list[HostSnapshot]


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
    optional=("hosts",),
)


def normalize(raw: Mapping[str, Any]) -> Snapshot:
    """A complete :class:`Snapshot` from whatever ``snapshot()`` returned."""
    snap = _RUN(raw)
    if "hosts" in raw:
        snap["hosts"] = HOST.rows(raw.get("hosts"))
    return snap
