"""The Prometheus endpoint, scraped with an aiohttp client and parsed by prometheus_client."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

pytest.importorskip("prometheus_client", reason="serving metrics needs prometheus_client")

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from spindle.observe import TokenRequired, serve_metrics

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(30)


def samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def value(found: dict[str, list[Sample]], family: str, name: str, **labels: str) -> float:
    for sample in found[family]:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in {family}")


def test_metrics_endpoint_serves_the_snapshot(fake_run: FakeRun) -> None:
    async def scenario() -> tuple[str, str, str]:
        async with (
            serve_metrics(fake_run.snapshot, port=0) as url,
            aiohttp.ClientSession() as session,
        ):
            async with session.get(url) as response:
                assert response.status == 200
                first = await response.text()
                kind = response.headers["Content-Type"]
            async with session.get(url) as response:
                second = await response.text()
        return first, second, kind

    first, second, content_type = asyncio.run(scenario())
    assert content_type.startswith("text/plain")
    found = samples(first)
    assert value(found, "spindle_elapsed_seconds", "spindle_elapsed_seconds") == 1.0
    assert value(found, "spindle_status", "spindle_status", status="running") == 1.0
    assert value(found, "spindle_status", "spindle_status", status="done") == 0.0
    assert value(found, "spindle_items", "spindle_items") == 10_000
    assert value(found, "spindle_stage_done", "spindle_stage_done_total", stage="fetch") == 105
    assert value(found, "spindle_stage_done", "spindle_stage_done_total", stage="parse") == 100
    assert value(found, "spindle_stage_failed", "spindle_stage_failed_total", stage="fetch") == 0
    assert (
        value(
            found,
            "spindle_stage_worker_restarts",
            "spindle_stage_worker_restarts_total",
            stage="parse",
        )
        == 1
    )
    assert value(found, "spindle_stage_in_flight", "spindle_stage_in_flight", stage="fetch") == 40
    assert value(found, "spindle_stage_queued", "spindle_stage_queued", stage="fetch") == 12
    assert value(found, "spindle_stage_workers", "spindle_stage_workers", stage="parse") == 4
    lat = "spindle_stage_latency_seconds"
    p50 = value(found, lat, lat, stage="parse", quantile="0.5")
    p99 = value(found, lat, lat, stage="parse", quantile="0.99")
    assert 0.001 <= p50 <= p99 <= 0.003
    assert value(found, lat, f"{lat}_count", stage="parse") == 100
    assert value(found, lat, f"{lat}_sum", stage="parse") == pytest.approx(0.2, rel=0.01)
    assert value(found, "spindle_workers", "spindle_workers", stage="parse", state="busy") == 2
    assert value(found, "spindle_workers", "spindle_workers", stage="parse", state="idle") == 1
    assert (
        value(found, "spindle_host_requests", "spindle_host_requests_total", host="other.test")
        == 50
    )
    assert value(found, "spindle_host_limit", "spindle_host_limit", host="example.test") == 8
    # One snapshot per scrape: the counters rose between the two scrapes.
    again = samples(second)
    assert value(again, "spindle_stage_done", "spindle_stage_done_total", stage="parse") == 200
    assert fake_run.calls == 2


def test_openmetrics_is_served_when_asked_for(fake_run: FakeRun) -> None:
    async def scenario() -> tuple[str, str]:
        async with (
            serve_metrics(fake_run.snapshot, port=0) as url,
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Accept": "application/openmetrics-text"}) as response,
        ):
            return response.headers["Content-Type"], await response.text()

    kind, text = asyncio.run(scenario())
    assert kind.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_metrics_beyond_loopback_need_a_token_and_check_it(fake_run: FakeRun) -> None:
    async def refused() -> None:
        async with serve_metrics(fake_run.snapshot, host="0.0.0.0", port=0):
            raise AssertionError("must not start")

    with pytest.raises(TokenRequired, match="token"):
        asyncio.run(refused())

    async def scenario() -> list[int]:
        statuses = []
        async with (
            serve_metrics(fake_run.snapshot, port=0, token="s3cret") as url,
            aiohttp.ClientSession() as session,
        ):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer s3cret"},
            ):
                async with session.get(url, headers=headers) as response:
                    statuses.append(response.status)
        return statuses

    assert asyncio.run(scenario()) == [401, 401, 200]
    assert fake_run.calls == 1  # refused scrapes read nothing
