"""LatencyHistogram: known latencies in, known percentiles out, within the stated precision."""

from __future__ import annotations

import json
import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spindle import SpindleError
from spindle._core.histogram import HIGHEST, LOWEST, MAX_BUCKETS, RELATIVE_ERROR
from spindle.observe import HistogramError, LatencyHistogram

pytestmark = pytest.mark.timeout(60)

# A little above the worst case, for the float32 rounding of the value itself.
TOLERANCE = RELATIVE_ERROR * (1 + 1e-5)

latencies = st.floats(min_value=LOWEST, max_value=HIGHEST, allow_nan=False, allow_infinity=False)


def exact_percentile(values: list[float], p: float) -> float:
    """The smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p * len(ordered) / 100.0 - 1e-9))
    return ordered[rank - 1]


def test_empty_histogram_reads_as_zero() -> None:
    h = LatencyHistogram()
    assert h.count == 0
    assert h.mean == 0.0
    assert h.max == 0.0
    assert h.percentile(99) == 0.0
    assert h.snapshot() == {
        "count": 0,
        "mean": 0.0,
        "p50": 0.0,
        "p90": 0.0,
        "p95": 0.0,
        "p99": 0.0,
        "max": 0.0,
    }


def test_known_latencies_give_known_percentiles() -> None:
    h = LatencyHistogram()
    h.record_many([i / 1000 for i in range(1, 1001)])  # 1 ms .. 1 s, evenly
    assert h.count == 1000
    assert h.mean == pytest.approx(0.5005)
    assert h.max == 1.0
    assert h.min == 0.001
    cases = ((50, 0.5), (90, 0.9), (95, 0.95), (99, 0.99), (99.9, 0.999), (100, 1.0), (0, 0.001))
    for p, expected in cases:
        assert h.percentile(p) == pytest.approx(expected, rel=TOLERANCE), p
    snap = h.snapshot()
    assert set(snap) == {"count", "mean", "p50", "p90", "p95", "p99", "max"}
    assert snap["p99"] == pytest.approx(0.99, rel=TOLERANCE)


def test_record_and_record_many_agree() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-5, 2) for _ in range(500)]
    one, many = LatencyHistogram(), LatencyHistogram()
    for v in values:
        one.record(v)
    many.record_many(values[:3])  # the small-batch path
    many.record_many(iter(values[3:]))  # any iterable
    a, b = one.to_dict(), many.to_dict()
    assert a["codes"] == b["codes"]
    assert a["counts"] == b["counts"]
    assert a["sum"] == pytest.approx(b["sum"])


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=400), st.floats(min_value=0, max_value=100))
def test_percentiles_match_exact_ones_within_the_stated_precision(
    values: list[float], p: float
) -> None:
    h = LatencyHistogram()
    h.record_many(values)
    exact = exact_percentile(values, p)
    assert abs(h.percentile(p) - exact) <= exact * TOLERANCE
    assert h.count == len(values)
    assert h.max == max(values)
    assert h.mean == pytest.approx(sum(values) / len(values), rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(latencies, max_size=60), min_size=1, max_size=8))
def test_merge_equals_recording_everything(batches: list[list[float]]) -> None:
    whole = LatencyHistogram()
    merged = LatencyHistogram()
    from_objects = LatencyHistogram()
    for batch in batches:
        whole.record_many(batch)
        worker = LatencyHistogram()
        worker.record_many(batch)
        # What a worker sends crosses a process boundary: pickle it on the way.
        merged.merge(pickle.loads(pickle.dumps(worker.to_dict())))
        from_objects.merge(worker)
    for other in (merged, from_objects):
        a, b = whole.to_dict(), other.to_dict()
        assert (a["count"], a["codes"], a["counts"], a["max"]) == (
            b["count"],
            b["codes"],
            b["counts"],
            b["max"],
        )
        assert a["sum"] == pytest.approx(b["sum"])
        assert whole.snapshot()["p99"] == other.snapshot()["p99"]


def test_to_dict_round_trips_through_json_and_pickle() -> None:
    h = LatencyHistogram()
    h.record_many([0.001, 0.002, 0.5, 2.0, 2.0])
    data = h.to_dict()
    again = LatencyHistogram.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    clone = pickle.loads(pickle.dumps(h))
    assert clone.snapshot() == h.snapshot()


def test_memory_is_bounded_whatever_the_values() -> None:
    rng = random.Random(1)
    h = LatencyHistogram()
    for _ in range(20):
        h.record_many([10 ** rng.uniform(-9, 5) for _ in range(5000)])
    assert h.count == 100_000
    assert h.buckets <= MAX_BUCKETS
    assert MAX_BUCKETS < 4200
    assert len(h.to_dict()["codes"]) <= MAX_BUCKETS


def test_values_outside_the_range_are_clamped_but_extremes_stay_exact() -> None:
    h = LatencyHistogram()
    h.record_many([0.0, 1e-9, 7200.0, 0.01, 0.01, 0.01, 0.01, 0.01])
    assert h.min == 0.0
    assert h.max == 7200.0
    assert h.percentile(0) == 0.0
    assert h.percentile(100) == 7200.0
    assert h.percentile(50) == pytest.approx(0.01, rel=TOLERANCE)
    h.record(0.0)
    h.record(1e6)
    assert h.count == 10


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_impossible_latencies_are_refused(bad: float) -> None:
    h = LatencyHistogram()
    with pytest.raises(HistogramError):
        h.record(bad)
    with pytest.raises(HistogramError):
        h.record_many([0.1] * 10 + [bad])
    assert h.count == 0
    assert issubclass(HistogramError, SpindleError)


def test_bad_percentile_and_bad_dict_are_refused() -> None:
    h = LatencyHistogram()
    with pytest.raises(HistogramError):
        h.percentile(101)
    with pytest.raises(HistogramError):
        h.merge({"count": 1})
    data = LatencyHistogram().to_dict()
    data["count"] = 3
    with pytest.raises(HistogramError, match="add up"):
        h.merge(data)


def test_repr_is_readable() -> None:
    h = LatencyHistogram()
    assert repr(h) == "LatencyHistogram(count=0)"
    h.record_many([0.01] * 10)
    assert "count=10" in repr(h)
    assert "ms" in repr(h)


def test_record_n_equals_recording_n_times() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record_n(0.0123, 500)
    for _ in range(500):
        b.record(0.0123)
    assert a.count == b.count == 500
    sa, sb = a.snapshot(), b.snapshot()
    assert sa["mean"] == pytest.approx(sb["mean"])
    assert {k: v for k, v in sa.items() if k != "mean"} == {
        k: v for k, v in sb.items() if k != "mean"
    }
    a.record_n(1.0, 0)
    assert a.count == 500
