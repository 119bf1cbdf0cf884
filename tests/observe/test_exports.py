"""The public surface of spindle.observe is exactly its __all__, and every name resolves."""

from __future__ import annotations

import pytest

import spindle.observe

pytestmark = pytest.mark.timeout(30)

EXPECTED = {
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
}


def test_public_names_are_pinned() -> None:
    assert set(spindle.observe.__all__) == EXPECTED


def test_every_public_name_resolves_and_errors_share_the_base() -> None:
    for name in spindle.observe.__all__:
        assert getattr(spindle.observe, name) is not None, name
    for error in ("BindError", "HistogramError", "MissingExtra", "TokenRequired"):
        assert issubclass(getattr(spindle.observe, error), spindle.SpindleError)
    with pytest.raises(AttributeError):
        spindle.observe.no_such_name  # noqa: B018
