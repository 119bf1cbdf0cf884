"""A real run with a cache: its snapshot and its report have the cache's row."""

from __future__ import annotations

import json

import pytest

import spindle
from spindle.observe import render_text, to_json
from spindle.observe.report import report_from_json

from .cachejobs import KEYS, cached_square

pytestmark = pytest.mark.timeout(120)

CALLS = 60


def test_a_run_with_a_cache_reports_its_lookups() -> None:
    # One worker: the jobs run one after another, so the first call of each key misses
    # and every later one hits (two processes could both miss a key at once).
    results = spindle.map(cached_square, range(CALLS), kind="cpu", workers=1, cache="16MB")
    assert list(results) == [(x % KEYS) ** 2 for x in range(CALLS)]
    snap = results.snapshot()
    again = results.snapshot()
    [row] = snap["caches"]  # type: ignore[typeddict-item]
    [later] = again["caches"]  # type: ignore[typeddict-item]
    # Each snapshot times one get of a key nobody sets; whether the cache counts that
    # lookup as a miss is the engine's business, and shows between two snapshots.
    probe = later["misses"] - row["misses"]
    assert probe in (0, 1)
    assert row["hits"] + row["misses"] == CALLS + probe
    assert row["hits"] == CALLS - KEYS
    assert row["sets"] == row["entries"] == KEYS
    assert row["stages"] == "cached_square"
    assert row["hit_rate"] == pytest.approx(row["hits"] / (row["hits"] + row["misses"]))
    assert 0 < row["bytes_used"] <= row["max_bytes"] == 16_000_000
    assert row["get_us"] > 0
    assert "ring_members" not in row

    report = to_json(snap)
    assert report["caches"] == [row]
    assert report_from_json(json.loads(json.dumps(report))) == report
    text = render_text(snap)
    table = text.split("\ncaches:\n", 1)[1].splitlines()
    assert table[0].split()[:4] == ["cache", "stages", "hit", "rate"]
    assert table[1].split()[:2] == [row["path"], "cached_square"]
    assert f"{row['hits']:,}" in table[1].split()
