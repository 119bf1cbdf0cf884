"""The run's snapshot in the Prometheus text format, served on the caller's event loop.

A custom :class:`SnapshotCollector` turns each scrape's snapshot into metric families
(``prometheus_client`` does the exposition format); an aiohttp handler of our own serves
them, so no thread is started (``prometheus_client.start_http_server`` would start one
that nobody joins)::

    Prometheus ──GET /metrics──▶ aiohttp handler ──▶ registry.collect()
                                                      └─▶ SnapshotCollector.collect() ──▶ snapshot()

Metrics (``stage`` label on the per-stage ones; latencies in seconds)::

    spindle_elapsed_seconds, spindle_status{status}, spindle_items (input size, when known)
    spindle_stage_done_total, _failed_total, _retried_total, _worker_restarts_total
    spindle_stage_in_flight, spindle_stage_queued, spindle_stage_workers
    spindle_stage_latency_seconds{quantile="0.5"|"0.9"|"0.95"|"0.99"}, _count, _sum
    spindle_stage_latency_max_seconds
    spindle_workers{stage, state}          how many workers are in each state
    spindle_host_requests_total{host}, spindle_host_errors_total{host},
    spindle_host_latency_mean_seconds{host}, spindle_host_limit{host}   (fetch runs)

    A run whose stages have a cache (``cache`` label: its path; the counts are the
    cache's own, over every process that used it, since it was made):
    spindle_cache_hits_total, _misses_total, _sets_total, _evictions_total, _expired_total
    spindle_cache_entries, spindle_cache_used_bytes, spindle_cache_max_bytes,
    spindle_cache_hit_ratio, spindle_cache_get_seconds (one local get, timed at the scrape)
    spindle_cache_ring_members, _ring_down, _ring_get_seconds   (a cache with a Redis ring)

    A stream run (``source`` and ``sink`` labels: their names):
    spindle_source_read_total, _redelivered_total, _acked_total, _intake_waits_total
    spindle_source_unacked, _peak_unacked, _max_unacked, spindle_source_lag (when known)
    spindle_sink_written_total, _failed_total, _commits_total
    spindle_sink_commit_seconds{quantile}, _count, _sum; spindle_sink_commit_max_seconds
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

from ._errors import MissingExtra

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the package
    raise MissingExtra(
        "serving Prometheus metrics needs prometheus_client: pip install prometheus_client"
    ) from exc

from aiohttp import web

from .._core.histogram import LatencySnapshot
from ._server import require_token, run_app, token_middleware
from ._snapshot import SnapshotFn, normalize

__all__ = ["SnapshotCollector", "metrics_app", "serve_metrics"]

_STATUSES = ("running", "stopping", "done", "failed")


class _Figure(NamedTuple):
    """A figure of a section's rows as a metric: the row's ``key``, over ``divisor``
    (1e6 for microseconds: metrics are in seconds)."""

    key: str
    counter: bool
    name: str
    help: str
    divisor: float = 1.0


_HOST = (
    _Figure("requests", True, "host_requests", "Requests to a host."),
    _Figure("errors", True, "host_errors", "Failed requests to a host."),
    _Figure("latency_mean", False, "host_latency_mean_seconds", "Mean latency of a host."),
    _Figure("limit", False, "host_limit", "Concurrency limit of a host."),
)
_CACHE = (
    _Figure("hits", True, "cache_hits", "Lookups that found a value in a cache."),
    _Figure("misses", True, "cache_misses", "Lookups that found no value in a cache."),
    _Figure("sets", True, "cache_sets", "Values written to a cache."),
    _Figure("evictions", True, "cache_evictions", "Entries evicted to keep a cache in budget."),
    _Figure("expired", True, "cache_expired", "Lookups that found an expired entry."),
    _Figure("entries", False, "cache_entries", "Entries in a cache."),
    _Figure("bytes_used", False, "cache_used_bytes", "Bytes of keys and values in a cache."),
    _Figure("max_bytes", False, "cache_max_bytes", "Budget of a cache's keys and values."),
    _Figure("hit_rate", False, "cache_hit_ratio", "Hits over lookups of a cache."),
    _Figure("get_us", False, "cache_get_seconds", "Time one local get took at the scrape.", 1e6),
    _Figure("ring_members", False, "cache_ring_members", "Members of a cache's Redis ring."),
    _Figure("ring_down", False, "cache_ring_down", "Members of a cache's ring that are down."),
    _Figure(
        "ring_get_us",
        False,
        "cache_ring_get_seconds",
        "Median get time of the slowest member of a cache's ring.",
        1e6,
    ),
)
_SOURCE = (
    _Figure("read", True, "source_read", "Messages read from a source (redeliveries too)."),
    _Figure("redelivered", True, "source_redelivered", "Messages a source gave again."),
    _Figure("acked", True, "source_acked", "Messages acknowledged to a source."),
    _Figure("unacked", False, "source_unacked", "Messages read and not acknowledged yet."),
    _Figure("peak_unacked", False, "source_peak_unacked", "Most messages ever unacknowledged."),
    _Figure("max_unacked", False, "source_max_unacked", "Bound on unacknowledged messages."),
    _Figure("intake_waits", True, "source_intake_waits", "Times the intake waited for acks."),
    _Figure("lag", False, "source_lag", "Messages in a source its group has not read yet."),
)
_SINK = (
    _Figure("written", True, "sink_written", "Results written to a sink."),
    _Figure("failed", True, "sink_failed", "Failures written to a sink."),
    _Figure("commits", True, "sink_commits", "Chunks written and committed to a sink."),
)


R = TypeVar("R", bound=Mapping[str, Any])


def _by(key: str, rows: Iterable[R]) -> dict[str, R]:
    """``rows`` by their ``key``, the first of rows that share one (a label value may
    appear once in a family: two handles of one cache directory give the same figures)."""
    found: dict[str, R] = {}
    for row in rows:
        found.setdefault(str(row[key]), row)
    return found


def _families(
    ns: str, label: str, rows: Mapping[str, Mapping[str, Any]], figures: Iterable[_Figure]
) -> Iterator[Metric]:
    """A family per figure with a sample per row (labelled ``label``), leaving out the
    rows that lack the figure or hold None; no family without samples."""
    for figure in figures:
        family = (CounterMetricFamily if figure.counter else GaugeMetricFamily)(
            f"{ns}_{figure.name}", figure.help, labels=[label]
        )
        for ident, row in rows.items():
            value = row.get(figure.key)
            if isinstance(value, int | float):
                family.add_metric([ident], float(value) / figure.divisor)
        if family.samples:
            yield family


def _summary(metric: Metric, labels: dict[str, str], lat: LatencySnapshot) -> None:
    """Add a latency snapshot's quantiles, count and sum (seconds) to a summary."""
    quantiles = (("0.5", lat["p50"]), ("0.9", lat["p90"]), ("0.95", lat["p95"]))
    for quantile, seconds in (*quantiles, ("0.99", lat["p99"])):
        metric.add_sample(metric.name, {**labels, "quantile": quantile}, seconds)
    metric.add_sample(f"{metric.name}_count", labels, float(lat["count"]))
    metric.add_sample(f"{metric.name}_sum", labels, lat["mean"] * lat["count"])


class SnapshotCollector(Collector):
    """A Prometheus collector that reads one snapshot per scrape."""

    def __init__(self, snapshot: SnapshotFn, *, namespace: str = "spindle") -> None:
        self._snapshot = snapshot
        self._ns = namespace

    def collect(self) -> Iterable[Metric]:
        snap = normalize(self._snapshot())
        ns = self._ns
        yield GaugeMetricFamily(
            f"{ns}_elapsed_seconds", "Seconds since the run started.", snap["elapsed"]
        )
        status = GaugeMetricFamily(
            f"{ns}_status", "1 for the run's current status, 0 for the others.", labels=["status"]
        )
        for name in dict.fromkeys((*_STATUSES, snap["status"])):
            status.add_metric([name], 1.0 if name == snap["status"] else 0.0)
        yield status
        if snap["total"] is not None:
            yield GaugeMetricFamily(f"{ns}_items", "Items in the input.", float(snap["total"]))

        counters = (
            CounterMetricFamily(f"{ns}_stage_done", "Items a stage finished.", labels=["stage"]),
            CounterMetricFamily(
                f"{ns}_stage_failed", "Items that failed in a stage.", labels=["stage"]
            ),
            CounterMetricFamily(
                f"{ns}_stage_retried", "Retries of items in a stage.", labels=["stage"]
            ),
            CounterMetricFamily(
                f"{ns}_stage_worker_restarts", "Workers of a stage started again.", labels=["stage"]
            ),
        )
        gauges = (
            GaugeMetricFamily(
                f"{ns}_stage_in_flight", "Items running in a stage now.", labels=["stage"]
            ),
            GaugeMetricFamily(f"{ns}_stage_queued", "Items waiting for a stage.", labels=["stage"]),
            GaugeMetricFamily(f"{ns}_stage_workers", "Workers of a stage.", labels=["stage"]),
        )
        latency = Metric(f"{ns}_stage_latency_seconds", "Latency of a stage's jobs.", "summary")
        latency_max = GaugeMetricFamily(
            f"{ns}_stage_latency_max_seconds", "Longest job of a stage.", labels=["stage"]
        )
        for stage in snap["stages"]:
            name = stage["name"]
            counts = (stage["done"], stage["failed"], stage["retried"], stage["restarts"])
            for family, value in zip(counters, counts, strict=True):
                family.add_metric([name], float(value))
            levels = (stage["in_flight"], stage["queued"], stage["workers"])
            for gauge, value in zip(gauges, levels, strict=True):
                gauge.add_metric([name], float(value))
            _summary(latency, {"stage": name}, stage["latency"])
            latency_max.add_metric([name], stage["latency"]["max"])
        yield from counters
        yield from gauges
        yield latency
        yield latency_max

        states = Counter((w["stage"], w["state"]) for w in snap["workers"])
        workers = GaugeMetricFamily(
            f"{ns}_workers", "Workers in each state.", labels=["stage", "state"]
        )
        for (stage_name, state), n in sorted(states.items()):
            workers.add_metric([stage_name, state], float(n))
        yield workers

        yield from _families(ns, "host", _by("host", snap.get("hosts", [])), _HOST)
        yield from _families(ns, "cache", _by("path", snap.get("caches", [])), _CACHE)
        connectors = snap.get("connectors", [])
        sources = _by("name", (c for c in connectors if c["role"] == "source"))
        yield from _families(ns, "source", sources, _SOURCE)
        sinks = _by("name", (c for c in connectors if c["role"] == "sink"))
        yield from _families(ns, "sink", sinks, _SINK)
        if sinks:
            commit = Metric(
                f"{ns}_sink_commit_seconds", "Latency of a chunk's write and commit.", "summary"
            )
            commit_max = GaugeMetricFamily(
                f"{ns}_sink_commit_max_seconds", "Longest write and commit.", labels=["sink"]
            )
            for name, sink in sinks.items():
                _summary(commit, {"sink": name}, sink["commit_latency"])
                commit_max.add_metric([name], sink["commit_latency"]["max"])
            yield from (commit, commit_max)


def metrics_app(
    snapshot: SnapshotFn, *, token: str | None = None, path: str = "/metrics"
) -> web.Application:
    """The aiohttp application serving ``path`` (for embedding in a server of your own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    app = web.Application(middlewares=[token_middleware(token)] if token else [])
    app.router.add_get(path, metrics)
    return app


@asynccontextmanager
async def serve_metrics(
    snapshot: SnapshotFn,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    token: str | None = None,
    path: str = "/metrics",
) -> AsyncIterator[str]:
    """Serve the metrics on the running loop while the block runs; yield their URL.

    Binding beyond loopback needs ``token`` (Prometheus sends it with
    ``authorization: {credentials: ...}`` in its scrape config).
    """
    require_token(host, token, "metrics endpoint")
    async with run_app(metrics_app(snapshot, token=token, path=path), host, port) as base:
        yield base + path
