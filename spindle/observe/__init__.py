"""Observability of a spindle run: what it is doing now, and what it did.

Everything here reads the engine's plain-data snapshot (``snapshot() -> dict``, see
:class:`Snapshot`)::

    snapshot() ─┬─▶ LiveDisplay          progress on the terminal (or a log line)
                ├─▶ render_text/to_json  the final report (and --stats-json)
                ├─▶ serve_metrics        Prometheus text format over HTTP
                ├─▶ serve_dashboard      a live page: charts, workers, failures, and the
                │                        run's hosts, caches and connectors
                └─▶ Timeline ─▶ plot_timeline   charts of the run in a file

    stage runner ──record_n(mean, n) per batch──▶ LatencyHistogram ──▶ stage latency
    workers ──reporter(state), about once a second──▶ merge_reports ──▶ stage report, hosts
    stages' caches ──Cache.stats() at each snapshot──▶ caches
    a stream run's source and sink ──StreamRun.rows()──▶ connectors

The servers and the plot need optional packages (aiohttp, prometheus_client,
matplotlib); their names are imported on first use, so ``import spindle.observe``
works without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._core.histogram import HistogramDict as HistogramDict
from .._core.histogram import HistogramError as HistogramError
from .._core.histogram import LatencyHistogram as LatencyHistogram
from .._core.histogram import LatencySnapshot as LatencySnapshot
from ._errors import BindError as BindError
from ._errors import MissingExtra as MissingExtra
from ._errors import TokenRequired as TokenRequired
from ._snapshot import CacheSnapshot as CacheSnapshot
from ._snapshot import ConnectorSnapshot as ConnectorSnapshot
from ._snapshot import FailureSnapshot as FailureSnapshot
from ._snapshot import HostSnapshot as HostSnapshot
from ._snapshot import SinkSnapshot as SinkSnapshot
from ._snapshot import Snapshot as Snapshot
from ._snapshot import SnapshotFn as SnapshotFn
from ._snapshot import SourceSnapshot as SourceSnapshot
from ._snapshot import StageSnapshot as StageSnapshot
from ._snapshot import WorkerSnapshot as WorkerSnapshot
from ._snapshot import normalize as normalize
from .rates import RateWindow as RateWindow
from .rates import StagePoint as StagePoint
from .rates import Timeline as Timeline
from .rates import TimelineDict as TimelineDict
from .rates import TimelinePoint as TimelinePoint

if TYPE_CHECKING:
    from .dashboard import dashboard_app as dashboard_app
    from .dashboard import serve_dashboard as serve_dashboard
    from .display import LiveDisplay as LiveDisplay
    from .plot import plot_timeline as plot_timeline
    from .prometheus import SnapshotCollector as SnapshotCollector
    from .prometheus import metrics_app as metrics_app
    from .prometheus import serve_metrics as serve_metrics
    from .report import FailureGroup as FailureGroup
    from .report import Report as Report
    from .report import group_failures as group_failures
    from .report import render_text as render_text
    from .report import to_json as to_json

__all__ = [
    "BindError",
    "CacheSnapshot",
    "ConnectorSnapshot",
    "FailureGroup",
    "FailureSnapshot",
    "HistogramDict",
    "HistogramError",
    "HostSnapshot",
    "LatencyHistogram",
    "LatencySnapshot",
    "LiveDisplay",
    "MissingExtra",
    "RateWindow",
    "Report",
    "SinkSnapshot",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotFn",
    "SourceSnapshot",
    "StagePoint",
    "StageSnapshot",
    "Timeline",
    "TimelineDict",
    "TimelinePoint",
    "TokenRequired",
    "WorkerSnapshot",
    "dashboard_app",
    "group_failures",
    "metrics_app",
    "normalize",
    "plot_timeline",
    "render_text",
    "serve_dashboard",
    "serve_metrics",
    "to_json",
]

# Loaded on first use: the display and report need rich, the servers aiohttp and
# prometheus_client, the plot matplotlib; the engine imports only the histogram.
_LAZY = {
    "LiveDisplay": "display",
    "FailureGroup": "report",
    "Report": "report",
    "group_failures": "report",
    "render_text": "report",
    "to_json": "report",
    "dashboard_app": "dashboard",
    "serve_dashboard": "dashboard",
    "plot_timeline": "plot",
    "SnapshotCollector": "prometheus",
    "metrics_app": "prometheus",
    "serve_metrics": "prometheus",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError as exc:
        if isinstance(exc, MissingExtra):
            raise
        package = exc.name or "an optional package"
        raise MissingExtra(
            f"spindle.observe.{name} needs {package}: pip install {package}"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
