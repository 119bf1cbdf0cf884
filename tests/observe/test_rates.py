"""RateWindow and Timeline, fed with made-up times (no clock is read)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from spindle import ConfigError
from spindle.observe import RateWindow, Timeline

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(30)


def test_rate_window_gives_recent_and_overall_rates() -> None:
    rates = RateWindow(window=10)
    assert rates.recent == 0.0
    assert rates.overall == 0.0
    # 100 items/s for 20 s, then 10 items/s for 10 s.
    count = 0
    for t in range(1, 21):
        count += 100
        rates.update(t, count)
    assert rates.recent == pytest.approx(100)
    for t in range(21, 31):
        count += 10
        rates.update(t, count)
    assert rates.recent == pytest.approx(10)
    assert rates.overall == pytest.approx(count / 30)
    assert rates.eta(count + 50) == pytest.approx(5)
    assert "RateWindow" in repr(rates)


def test_rate_window_stays_bounded_under_frequent_updates() -> None:
    rates = RateWindow(window=10, max_samples=16)
    for i in range(1, 10_001):
        rates.update(i / 100, i)  # 100 items/s, updated 100 times a second
    assert rates.recent == pytest.approx(100, rel=0.02)
    assert len(rates._samples) <= 16


def test_rate_window_ignores_time_going_backwards_and_refuses_bad_windows() -> None:
    rates = RateWindow(window=5)
    rates.update(2, 20)
    rates.update(1, 999)
    assert rates.total == 20
    assert rates.eta(100) is not None
    stalled = RateWindow(window=5)
    stalled.update(1, 0)
    stalled.update(2, 0)
    assert stalled.eta(10) is None
    with pytest.raises(ConfigError):
        RateWindow(window=0)


def test_timeline_keeps_one_point_per_interval_with_rates_and_percentiles(
    fake_run: FakeRun,
) -> None:
    tl = Timeline(interval=2.0)
    kept = [tl.add(fake_run.snapshot()) for _ in range(6)]  # t = 1..6
    assert kept == [True, False, True, False, True, False]
    points = tl.points()
    assert [p["t"] for p in points] == [1.0, 3.0, 5.0]
    assert tl.stages == ["fetch", "parse"]
    parse = [p["stages"]["parse"] for p in points]
    assert parse[0]["rate"] == pytest.approx(100)  # 100 items in the first second
    assert parse[1]["rate"] == pytest.approx(100)  # 200 more over 2 s
    assert parse[2]["in_flight"] == 3
    assert parse[2]["queued"] == 2
    assert 0.001 <= parse[2]["p50"] <= parse[2]["p95"] <= parse[2]["p99"] <= 0.003
    assert [p["t"] for p in tl.points(since=3.0)] == [5.0]
    data = tl.to_dict(since=1.0)
    assert data["interval"] == 2.0
    assert data["stages"] == ["fetch", "parse"]
    assert len(data["points"]) == 2


def test_timeline_always_keeps_the_final_snapshot(fake_run: FakeRun) -> None:
    tl = Timeline(interval=10.0)
    assert tl.add(fake_run.snapshot())
    assert not tl.add(fake_run.snapshot())
    fake_run.status = "done"
    assert tl.add(fake_run.snapshot())
    assert not tl.add(fake_run.snapshot())  # nothing after the end
    assert len(tl) == 2


def test_timeline_is_bounded_and_downsamples_evenly(make_run: Callable[..., FakeRun]) -> None:
    run = make_run(step_items=10, fail_after=None, hosts=False)
    tl = Timeline(interval=1.0, max_points=100)
    for _ in range(1000):
        tl.add(run.snapshot())
    assert 50 <= len(tl) <= 100
    assert tl.interval > 1.0
    times = [p["t"] for p in tl.points()]
    assert times[-1] > 1000.0 - tl.interval  # the series reaches the present
    assert times[0] < tl.interval * 2  # and still starts at the start
    assert times == sorted(times)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(times)}
    assert len(gaps) <= 2  # evenly spread (two spacings at most, around a halving)
    # Rates over coarser intervals are still exact means: 10 items a second throughout.
    for point in tl.points()[1:]:
        assert point["stages"]["parse"]["rate"] == pytest.approx(10)
    assert "Timeline(" in repr(tl)


def test_timeline_tolerates_partial_snapshots() -> None:
    tl = Timeline()
    partial: dict[str, Any] = {"elapsed": 1.0, "stages": [{"name": "only", "done": 3}]}
    assert tl.add(partial)
    assert tl.points()[0]["stages"]["only"]["p99"] == 0.0
    assert tl.add({"elapsed": 2.0})  # no stages at all
    with pytest.raises(ConfigError):
        Timeline(max_points=1)
