"""The final report: totals, per-stage figures, failure groups, hosts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spindle.observe import FailureSnapshot, group_failures, render_text, to_json
from spindle.observe.report import MESSAGE_PREFIX

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(30)


def failure(error: str, message: str, stage: str = "fetch", t: float = 1.0) -> FailureSnapshot:
    return {
        "time": t,
        "stage": stage,
        "item": f"item-{t}",
        "error": error,
        "message": message,
        "traceback": f"Traceback (most recent call last):\n  ...\n{error}: {message}\n",
    }


def finished(run: FakeRun, calls: int = 10) -> dict[str, Any]:
    for _ in range(calls - 1):
        run.snapshot()
    run.status = "done"
    snap = run.snapshot()
    snap["failures"] = [
        failure("TimeoutError", "timed out after 10 s", t=1.0),
        failure("TimeoutError", "timed out after 10 s", t=2.0),
        failure("TimeoutError", "timed out after 10 s", stage="parse", t=3.0),
        failure("ValueError", "bad record\nwith a second line", stage="parse", t=4.0),
        failure("ValueError", "x" * 200, stage="parse", t=5.0),
    ]
    snap["stages"][0]["failed"] = 7
    return snap


def test_to_json_has_totals_stages_and_failure_groups(fake_run: FakeRun) -> None:
    report = to_json(finished(fake_run))
    json.dumps(report)  # plain data all the way down
    assert report["status"] == "done"
    assert report["elapsed"] == 10.0
    assert report["total"] == 10_000
    assert report["done"] == 1000  # what came out of the last stage
    assert report["failed"] == 7
    assert report["retried"] == 2
    assert report["worker_restarts"] == 1
    assert report["throughput"] == pytest.approx(100.0)
    fetch, parse = report["stages"]
    assert fetch["name"] == "fetch" and fetch["kind"] == "io"
    assert fetch["throughput"] == pytest.approx((1005 + 7) / 10)
    assert parse["latency"]["count"] == 1000
    assert 0.001 <= parse["latency"]["p50"] <= parse["latency"]["p99"] <= 0.003
    groups = report["failure_groups"]
    assert [(g["error"], g["count"]) for g in groups] == [
        ("TimeoutError", 3),
        ("ValueError", 1),
        ("ValueError", 1),
    ]
    assert groups[0]["stages"] == ["fetch", "parse"]
    assert groups[0]["example"]["time"] == 3.0  # the most recent one
    assert report["failures_shown"] == 5
    assert report["hosts"][0]["host"] == "example.test"


def test_failures_group_by_error_and_message_prefix() -> None:
    long_a = "connection refused by upstream server " * 3 + "A"
    long_b = "connection refused by upstream server " * 3 + "B"
    groups = group_failures(
        [
            failure("OSError", long_a, t=1),
            failure("OSError", long_b, t=2),
            failure("OSError", "other", t=3),
            failure("IOError", "other", t=4),
        ]
    )
    assert [(g["error"], g["count"]) for g in groups] == [
        ("OSError", 2),
        ("OSError", 1),
        ("IOError", 1),
    ]
    assert len(groups[0]["message"]) == MESSAGE_PREFIX
    assert groups[0]["example"]["message"] == long_b


def test_render_text_reads_well(fake_run: FakeRun) -> None:
    text = render_text(finished(fake_run))
    first = text.splitlines()[0]
    assert first.startswith("spindle: done after 10.0 s: 1,000 of 10,000 items done, 7 failed")
    assert "100 items/s" in first
    assert "stage" in text and "p99" in text and "max" in text
    assert "failures (the most recent 5 of 7, grouped):" in text
    assert "3 x TimeoutError: timed out after 10 s" in text
    assert "      1 x ValueError: bad record\n" in text  # the first line of the message
    assert "hosts:" in text and "example.test" in text


def test_empty_and_partial_snapshots_still_report() -> None:
    text = render_text({"elapsed": 0.0, "status": "failed"})
    assert text.startswith("spindle: failed after 0.0 s: 0 items done")
    assert to_json({})["stages"] == []
