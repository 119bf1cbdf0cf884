"""The run's caches and a stream run's connectors: read from the snapshot, in the report
(JSON and text), in Prometheus and in the live display."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from spindle.observe import LatencyHistogram, LiveDisplay, normalize, render_text, to_json
from spindle.observe.report import detail_lines, report_from_json

from .conftest import FakeRun, cache_rows, stream_rows

pytestmark = pytest.mark.timeout(30)


def latency_of(*seconds: float) -> dict[str, Any]:
    histogram = LatencyHistogram()
    histogram.record_many(list(seconds))
    return dict(histogram.snapshot())


def small_run() -> dict[str, Any]:
    """A snapshot with one cache and a stream's source and sink, nothing else."""
    return {
        "elapsed": 2.0,
        "status": "done",
        "stages": [],
        "caches": [
            {
                "path": "/dev/shm/spindle-cache-x",
                "stages": "lookup",
                "hits": 150,
                "misses": 50,
                "hit_rate": 0.75,
                "sets": 50,
                "evictions": 0,
                "expired": 0,
                "entries": 50,
                "bytes_used": 1_580,
                "max_bytes": 16_000_000,
                "get_us": 8.25,
            }
        ],
        "connectors": [
            {
                "role": "source",
                "name": "redis://localhost/0 jobs",
                "read": 1_000,
                "redelivered": 0,
                "acked": 1_000,
                "unacked": 0,
                "peak_unacked": 512,
                "max_unacked": 1_024,
                "intake_waits": 2,
                "lag": None,
            },
            {
                "role": "sink",
                "name": "out.jsonl",
                "written": 998,
                "failed": 2,
                "commits": 4,
                "commit_latency": latency_of(0.002, 0.002, 0.002, 0.002),
            },
        ],
    }


# -- reading the snapshot -----------------------------------------------------------------


def test_cache_rows_get_defaults_lose_unknown_keys_and_keep_a_ring_only_where_there_is_one() -> (
    None
):
    snap = normalize(
        {
            "caches": [
                {"path": "/a", "hits": 4.0, "misses": "many", "future_key": [1]},
                {"path": "/b", "ring_members": 2, "ring_get_us": "slow"},
                "not a row",
            ]
        }
    )
    plain, ring = snap["caches"]
    assert plain == {
        "path": "/a",
        "stages": "",
        "hits": 4,
        "misses": 0,
        "hit_rate": 0.0,
        "sets": 0,
        "evictions": 0,
        "expired": 0,
        "entries": 0,
        "bytes_used": 0,
        "max_bytes": 0,
        "get_us": 0.0,
    }
    assert (ring["ring_members"], ring["ring_down"], ring["ring_get_us"]) == (2, 0, None)
    assert normalize({"caches": "broken"})["caches"] == []
    assert "caches" not in normalize({}) and "connectors" not in normalize({})


def test_connector_rows_by_role_with_their_own_plain_figures_kept_as_extra() -> None:
    snap = normalize(
        {
            "connectors": [
                {"role": "source", "read": 5, "lag": 2.5, "claimed": 1, "deep": {"x": 1}},
                {"role": "sink", "name": "db", "commit_latency": {"p99": 0.5}, "ratio": 0.5},
                {"role": "broker", "name": "unknown roles are dropped"},
                {"name": "so is a row without one"},
            ]
        }
    )
    source, sink = snap["connectors"]
    assert source == {
        "role": "source",
        "name": "source",
        "read": 5,
        "redelivered": 0,
        "acked": 0,
        "unacked": 0,
        "peak_unacked": 0,
        "max_unacked": 0,
        "intake_waits": 0,
        "lag": None,
        "extra": {"claimed": 1},
    }
    assert sink["role"] == "sink" and sink["name"] == "db"
    assert (sink["written"], sink["failed"], sink["commits"]) == (0, 0, 0)
    assert sink["commit_latency"]["p99"] == 0.5 and sink["commit_latency"]["count"] == 0
    assert sink["extra"] == {"ratio": 0.5}


def test_a_normalised_snapshot_reads_the_same_again() -> None:
    run = FakeRun(caches=True, stream=True)
    once = normalize(run.snapshot())
    assert normalize(once) == once
    source = once["connectors"][0]
    assert source["role"] == "source"
    assert source["extra"] == {"consumer": "worker-1", "claimed": 3, "group_pending": None}
    assert "shard_map" not in once["caches"][1]


# -- the report ---------------------------------------------------------------------------


def test_report_json_carries_the_sections_and_reads_back_the_same() -> None:
    run = FakeRun(caches=True, stream=True)
    report = to_json(run.snapshot())
    assert [c["path"] for c in report["caches"]] == [
        "/dev/shm/spindle-cache-a",
        "/dev/shm/spindle-cache-ring",
    ]
    assert [c["role"] for c in report["connectors"]] == ["source", "sink"]
    stored = json.loads(json.dumps(report))
    assert report_from_json(stored) == report


def test_an_older_stored_report_reads_without_the_sections_and_rows_fill_in() -> None:
    old = to_json(FakeRun().snapshot())
    stored = json.loads(json.dumps(old))
    back = report_from_json(stored)
    assert back is not None and "caches" not in back and "connectors" not in back
    assert not any(line in ("caches:", "connectors:") for line in detail_lines(back))
    partial = report_from_json(
        {"caches": [{"path": "/c", "hits": 3}], "connectors": [{"role": "sink", "written": 2}]}
    )
    assert partial is not None
    assert partial["caches"][0]["misses"] == 0
    assert partial["connectors"][0]["commit_latency"]["count"] == 0


def test_report_text_has_a_caches_table_and_the_connectors_tables() -> None:
    text = render_text(small_run())
    caches = text.split("\ncaches:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert caches == [
        "  cache                     stages  hit rate  hits  misses  sets  evictions  expired"
        "  entries     used    max      get",
        "  /dev/shm/spindle-cache-x  lookup     75.0%   150      50    50          0        0"
        "       50  1.58 KB  16 MB  8.25 µs",
    ]
    connectors = text.split("\nconnectors:\n", 1)[1].splitlines()
    assert connectors == [
        "  source                     read  redelivered  acked  unacked  peak unacked"
        "  max unacked  intake waits  lag",
        "  redis://localhost/0 jobs  1,000            0  1,000        0           512"
        "        1,024             2    -",
        "  sink       written  failed  commits  commit mean   p50   p99   max",
        "  out.jsonl      998       2        4         2 ms  2 ms  2 ms  2 ms",
    ]


def test_report_text_shows_a_ring_and_the_connectors_own_figures() -> None:
    run = FakeRun(caches=True, stream=True)
    text = render_text(run.snapshot())
    caches = text.split("\ncaches:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert caches[0].split()[-3:] == ["ring", "ring", "get"]
    assert caches[1].split()[-4:] == ["8.5", "µs", "-", "-"]
    assert caches[2].split()[-4:] == ["2/3", "up", "420", "µs"]
    connectors = text.split("\nconnectors:\n", 1)[1]
    assert "consumer worker-1, claimed 3, group_pending -" in connectors
    assert "duplicates 1" in connectors
    assert "nested" not in connectors


# -- Prometheus ---------------------------------------------------------------------------


def exposition(snapshot: dict[str, Any]) -> list[str]:
    pytest.importorskip("prometheus_client", reason="the metrics need prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from spindle.observe import SnapshotCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return generate_latest(registry).decode().splitlines()


def test_prometheus_exposes_each_cache_by_its_path() -> None:
    snap = FakeRun().snapshot()
    snap["caches"] = cache_rows(100)
    snap["caches"].append(dict(snap["caches"][0], hits=1))  # the same directory again
    lines = exposition(snap)
    a, ring = '{cache="/dev/shm/spindle-cache-a"}', '{cache="/dev/shm/spindle-cache-ring"}'
    for line in (
        f"spindle_cache_hits_total{a} 75.0",
        f"spindle_cache_misses_total{a} 25.0",
        f"spindle_cache_sets_total{a} 25.0",
        f"spindle_cache_evictions_total{a} 2.0",
        f"spindle_cache_expired_total{a} 1.0",
        f"spindle_cache_entries{a} 23.0",
        f"spindle_cache_used_bytes{a} 39500.0",
        f"spindle_cache_max_bytes{a} 1.6e+07",
        f"spindle_cache_hit_ratio{a} 0.75",
        f"spindle_cache_get_seconds{a} 8.5e-06",
        f"spindle_cache_ring_members{ring} 3.0",
        f"spindle_cache_ring_down{ring} 1.0",
        f"spindle_cache_ring_get_seconds{ring} 0.00042",
        "# TYPE spindle_cache_hits_total counter",
        "# TYPE spindle_cache_hit_ratio gauge",
    ):
        assert line in lines, line
    assert sum(line.startswith("spindle_cache_hits_total{") for line in lines) == 2
    assert not any(line.startswith(f"spindle_cache_ring_members{a}") for line in lines)


def test_prometheus_exposes_the_source_and_the_sink_of_a_stream() -> None:
    snap = FakeRun().snapshot()
    snap["connectors"] = stream_rows(100, latency_of(0.002, 0.004, 0.004, 0.010))
    lines = exposition(snap)
    src, sink = '{source="redis://127.0.0.1:6379/0 events"}', '{sink="postgres://db/results"}'
    for line in (
        f"spindle_source_read_total{src} 120.0",
        f"spindle_source_redelivered_total{src} 3.0",
        f"spindle_source_acked_total{src} 100.0",
        f"spindle_source_unacked{src} 20.0",
        f"spindle_source_peak_unacked{src} 512.0",
        f"spindle_source_max_unacked{src} 1024.0",
        f"spindle_source_intake_waits_total{src} 4.0",
        f"spindle_source_lag{src} 7.0",
        f"spindle_sink_written_total{sink} 98.0",
        f"spindle_sink_failed_total{sink} 2.0",
        f"spindle_sink_commits_total{sink} 4.0",
        f"spindle_sink_commit_seconds_count{sink} 4.0",
        "# TYPE spindle_sink_commit_seconds summary",
    ):
        assert line in lines, line
    quantiles = {
        line.split('quantile="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("spindle_sink_commit_seconds{")
    }
    assert list(quantiles) == ["0.5", "0.9", "0.95", "0.99"]
    assert 0.0039 <= quantiles["0.5"] <= 0.0041 and 0.0099 <= quantiles["0.99"] <= 0.0101
    commit_max = next(ln for ln in lines if ln.startswith("spindle_sink_commit_max_seconds{"))
    assert 0.0099 <= float(commit_max.rsplit(" ", 1)[1]) <= 0.0101


def test_prometheus_leaves_out_what_a_run_does_not_have() -> None:
    snap = FakeRun().snapshot()
    snap["connectors"] = [dict(stream_rows(100, latency_of(0.001))[0], lag=None)]
    names = {line.split("{")[0].split(" ")[0] for line in exposition(snap)}
    assert not any(n.startswith("spindle_cache_") for n in names)
    assert not any(n.startswith("spindle_sink_") for n in names)
    assert "spindle_source_lag" not in names  # unknown lag: no sample, no family
    assert "spindle_source_acked_total" in names


# -- the live display ---------------------------------------------------------------------


def test_the_live_display_has_a_line_per_cache_and_one_for_the_stream() -> None:
    run = FakeRun(caches=True, stream=True)
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    with LiveDisplay(run.snapshot, console=console) as display:
        display.tick()
    last = out.getvalue()[out.getvalue().rindex("spindle running") :]
    assert (
        "cache /dev/shm/spindle-cache-a: 75.0% hits of 200 lookups, 48 entries, 79 KB of "
        "16 MB, get 8.5 µs" in last
    )
    assert "cache /dev/shm/spindle-cache-ring: 25.0% hits of 40 lookups" in last
    assert ", ring 2/3 up" in last
    assert (
        "source redis://127.0.0.1:6379/0 events: 220 read, 20 unacked of 1,024, lag 7; "
        "sink postgres://db/results: 198 written, 2 failed, 20 commits, p99 " in last
    )


def test_the_log_line_ends_with_the_caches_and_the_stream() -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    with LiveDisplay(FakeRun(caches=True, stream=True).snapshot, console=console) as display:
        display.tick()
    parts = out.getvalue().splitlines()[0].split(" | ")
    assert parts[-3].startswith("cache /dev/shm/spindle-cache-a: 75.0% hits")
    assert parts[-2].startswith("cache /dev/shm/spindle-cache-ring: ")
    assert parts[-1].startswith("source redis://127.0.0.1:6379/0 events: 120 read")
    plain = FakeRun()
    out = StringIO()
    with LiveDisplay(plain.snapshot, console=Console(file=out, force_terminal=False)) as d:
        d.tick()
    assert "cache" not in out.getvalue() and "source" not in out.getvalue()
