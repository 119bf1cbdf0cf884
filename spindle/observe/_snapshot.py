"""The snapshot every observer reads, and its normalisation.

The engine hands observers a callable ``snapshot() -> dict`` that is cheap and safe to
call from the event loop thread. Its schema is the engine's
(:mod:`spindle._core.snapshot`), with the sections observers know how to show (a fetch
run's ``hosts``); extra keys may appear and are ignored. :func:`normalize` fills in
missing keys with zeros so that the display, the report, the Prometheus collector and the
timeline never see a ``KeyError`` from an older or partial snapshot::

    engine ──snapshot()──▶ normalize() ──▶ LiveDisplay | report | Prometheus | dashboard | Timeline
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

from .._core.snapshot import (
    FailureSnapshot,
    LatencySnapshot,
    RunSnapshot,
    StageSnapshot,
    WorkerSnapshot,
)

__all__ = [
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


def _int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def _float(value: object) -> float:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0


def _latency(value: object) -> LatencySnapshot:
    src: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
    return {
        "count": _int(src.get("count")),
        "mean": _float(src.get("mean")),
        "p50": _float(src.get("p50")),
        "p90": _float(src.get("p90")),
        "p95": _float(src.get("p95")),
        "p99": _float(src.get("p99")),
        "max": _float(src.get("max")),
    }


def _maps(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _stage(i: int, s: Mapping[str, Any]) -> StageSnapshot:
    stage: StageSnapshot = {
        "name": str(s.get("name", f"stage{i}")),
        "kind": str(s.get("kind", "")),
        "done": _int(s.get("done")),
        "failed": _int(s.get("failed")),
        "retried": _int(s.get("retried")),
        "in_flight": _int(s.get("in_flight")),
        "queued": _int(s.get("queued")),
        "workers": _int(s.get("workers")),
        "restarts": _int(s.get("restarts")),
        "latency": _latency(s.get("latency")),
    }
    report = s.get("report")
    if isinstance(report, Mapping):
        stage["report"] = dict(report)
    return stage


def normalize(raw: Mapping[str, Any]) -> Snapshot:
    """A complete :class:`Snapshot` from whatever ``snapshot()`` returned."""
    total = raw.get("total")
    snap: Snapshot = {
        "elapsed": _float(raw.get("elapsed")),
        "status": str(raw.get("status", "running")),
        "total": total if isinstance(total, int) and not isinstance(total, bool) else None,
        "stages": [_stage(i, s) for i, s in enumerate(_maps(raw.get("stages")))],
        "workers": [
            {
                "stage": str(w.get("stage", "")),
                "index": _int(w.get("index")),
                "pid": w.get("pid") if isinstance(w.get("pid"), int) else None,
                "state": str(w.get("state", "idle")),
                "jobs": _int(w.get("jobs")),
                "restarts": _int(w.get("restarts")),
            }
            for w in _maps(raw.get("workers"))
        ],
        "failures": [
            {
                "time": _float(f.get("time")),
                "stage": str(f.get("stage", "")),
                "item": str(f.get("item", "")),
                "error": str(f.get("error", "Exception")),
                "message": str(f.get("message", "")),
                "traceback": str(f.get("traceback", "")),
            }
            for f in _maps(raw.get("failures"))
        ],
    }
    if "hosts" in raw:
        snap["hosts"] = [
            {
                "host": str(h.get("host", "")),
                "requests": _int(h.get("requests")),
                "errors": _int(h.get("errors")),
                "latency_mean": _float(h.get("latency_mean")),
                "limit": _int(h.get("limit")),
            }
            for h in _maps(raw.get("hosts"))
        ]
    return snap
