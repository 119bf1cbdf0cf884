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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

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

from ._server import require_token, run_app, token_middleware
from ._snapshot import SnapshotFn, normalize

__all__ = ["SnapshotCollector", "metrics_app", "serve_metrics"]

_STATUSES = ("running", "stopping", "done", "failed")


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
            lat = stage["latency"]
            quantiles = (
                ("0.5", lat["p50"]),
                ("0.9", lat["p90"]),
                ("0.95", lat["p95"]),
                ("0.99", lat["p99"]),
            )
            for quantile, seconds in quantiles:
                latency.add_sample(latency.name, {"stage": name, "quantile": quantile}, seconds)
            latency.add_sample(f"{latency.name}_count", {"stage": name}, float(lat["count"]))
            latency.add_sample(f"{latency.name}_sum", {"stage": name}, lat["mean"] * lat["count"])
            latency_max.add_metric([name], lat["max"])
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

        hosts = snap.get("hosts")
        if hosts is not None:
            requests = CounterMetricFamily(
                f"{ns}_host_requests", "Requests to a host.", labels=["host"]
            )
            errors = CounterMetricFamily(
                f"{ns}_host_errors", "Failed requests to a host.", labels=["host"]
            )
            mean = GaugeMetricFamily(
                f"{ns}_host_latency_mean_seconds", "Mean latency of a host.", labels=["host"]
            )
            limit = GaugeMetricFamily(
                f"{ns}_host_limit", "Concurrency limit of a host.", labels=["host"]
            )
            for h in hosts:
                requests.add_metric([h["host"]], float(h["requests"]))
                errors.add_metric([h["host"]], float(h["errors"]))
                mean.add_metric([h["host"]], h["latency_mean"])
                limit.add_metric([h["host"]], float(h["limit"]))
            yield from (requests, errors, mean, limit)


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
