"""The engine's snapshot: the plain data a run gives of itself, and its types.

``Results.snapshot()`` (and ``Pipeline.snapshot()``) returns a :class:`RunSnapshot`:
cheap to take, safe from any thread, only counters and small bounded buffers copied.
The engine owns this schema; :mod:`spindle.observe` renders it (display, report,
Prometheus, dashboard) and never reaches into the engine for more::

    stage runners ─┐
    executors ─────┼──▶ RunSnapshot ──▶ spindle.observe (normalize, then render)
    worker reports ┘     (+ sections: rows a stage's reporter gives the whole run)

Sections. A stage's merged report may carry rows that belong to the whole run, under
keys the stage names in its ``sections`` (a fetch stage's ``hosts``): the run's snapshot
gathers those rows of every stage under the same key. The engine knows no section by
name.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from ..executors.base import WorkerSnapshot
from .histogram import LatencySnapshot

__all__ = [
    "FailureSnapshot",
    "LatencySnapshot",
    "RunSnapshot",
    "StageSnapshot",
    "WorkerSnapshot",
]


class StageSnapshot(TypedDict):
    """One stage of the pipeline: counters, gauges and its latency summary; ``report``
    is the merged figures of the stage's reporter, for a stage that has one."""

    name: str
    kind: str
    done: int
    failed: int
    retried: int
    in_flight: int
    queued: int
    workers: int
    restarts: int
    latency: LatencySnapshot
    report: NotRequired[dict[str, Any]]


class FailureSnapshot(TypedDict):
    """One recent failure, with the worker's traceback as text."""

    time: float
    stage: str
    item: str
    error: str
    message: str
    traceback: str


class RunSnapshot(TypedDict):
    """A whole run. Sections (see the module docstring) add keys of their own."""

    elapsed: float
    status: str
    total: int | None
    stages: list[StageSnapshot]
    workers: list[WorkerSnapshot]
    failures: list[FailureSnapshot]
