"""The dashboard server: page, assets, API, the sampler task, and the token rules."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from yarl import URL

from spindle import ConfigError, SpindleError
from spindle.observe import BindError, Timeline, TokenRequired, serve_dashboard, serve_metrics

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(30)


def test_page_assets_and_api(fake_run: FakeRun) -> None:
    timeline = Timeline()

    async def scenario() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with (
            serve_dashboard(fake_run.snapshot, timeline=timeline, interval=3600) as url,
            aiohttp.ClientSession() as session,
        ):
            got["url"] = url
            async with session.get(url) as response:
                got["page"] = (response.status, response.content_type, await response.text())
                got["csp"] = response.headers["Content-Security-Policy"]
            for name in ("dashboard.js", "uPlot.iife.min.js", "uPlot.min.css", "nope.js"):
                async with session.get(f"{url}static/{name}") as response:
                    got[name] = (response.status, response.content_type)
            for _ in range(3):
                async with session.get(f"{url}api/snapshot") as response:
                    got["snapshot"] = await response.json()
            async with session.get(f"{url}api/timeline?since=1.5") as response:
                got["timeline"] = await response.json()
            async with session.get(f"{url}api/timeline?since=soon") as response:
                got["bad since"] = response.status
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "spindle-dashboard-sampler"]
        got["tasks left"] = tasks
        return got

    got = asyncio.run(scenario())
    assert got["url"].startswith("http://127.0.0.1:")
    status, kind, page = got["page"]
    assert (status, kind) == (200, "text/html")
    assert 'src="static/uPlot.iife.min.js"' in page and 'src="static/dashboard.js"' in page
    assert "script-src 'self'" in got["csp"]
    assert got["dashboard.js"] == (200, "text/javascript")
    assert got["uPlot.iife.min.js"] == (200, "text/javascript")
    assert got["uPlot.min.css"] == (200, "text/css")
    assert got["nope.js"][0] == 404
    snap = got["snapshot"]
    # The sampler read once on entry (t=1), then the page's three reads: t=2, 3, 4.
    assert snap["elapsed"] == 4.0
    assert snap["stages"][1]["done"] == 400
    assert snap["failures"][0]["error"] == "ConnectionResetError"
    assert snap["hosts"][0]["host"] == "example.test"
    assert "extra_key_ignored" not in snap
    tl = got["timeline"]
    assert tl["stages"] == ["fetch", "parse"]
    assert [p["t"] for p in tl["points"]] == [2.0, 3.0, 4.0]
    assert tl["points"][-1]["stages"]["parse"]["rate"] == pytest.approx(100)
    assert got["bad since"] == 400
    assert got["tasks left"] == []
    assert len(timeline) == 4  # the caller's timeline outlives the dashboard


def test_binding_beyond_loopback_without_a_token_is_refused(fake_run: FakeRun) -> None:
    async def start(host: str, token: str | None) -> None:
        async with serve_dashboard(fake_run.snapshot, host=host, token=token):
            raise AssertionError("must not start")

    for host in ("0.0.0.0", "::", "192.0.2.10", "dashboard.example"):
        with pytest.raises(TokenRequired, match="token"):
            asyncio.run(start(host, None))
    with pytest.raises(TokenRequired):
        asyncio.run(start("127.0.0.1", ""))
    assert issubclass(TokenRequired, SpindleError)
    assert issubclass(TokenRequired, ConfigError)
    assert fake_run.calls == 0


def test_with_a_token_every_request_must_carry_it(fake_run: FakeRun) -> None:
    token = "t0k/en+with=odd chars"

    async def scenario() -> dict[str, int]:
        got: dict[str, int] = {}
        async with serve_dashboard(fake_run.snapshot, token=token, interval=3600) as url:
            base = URL(url).with_query(None)
            assert URL(url).query["token"] == token
            async with aiohttp.ClientSession() as session:
                for path in ("", "static/dashboard.js", "api/snapshot", "api/timeline"):
                    async with session.get(base / path) as response:
                        got[f"none {path}"] = response.status
                async with session.get(
                    base / "api/snapshot", headers={"Authorization": "Bearer nope"}
                ) as response:
                    got["wrong bearer"] = response.status
                async with session.get(
                    (base / "api/snapshot").with_query(token="nope")
                ) as response:
                    got["wrong query"] = response.status
                async with session.get(
                    base / "api/snapshot", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    got["bearer"] = response.status
            # A browser opens the URL with ?token=, then loads the assets with the cookie.
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as browser:
                async with browser.get(url) as response:
                    got["query"] = response.status
                async with browser.get(base / "static/dashboard.js") as response:
                    got["cookie"] = response.status
            async with (
                aiohttp.ClientSession(cookies={"spindle-forged": token[:3]}) as other,
                other.get(base / "static/dashboard.js") as response,
            ):
                got["forged cookie"] = response.status
        return got

    got = asyncio.run(scenario())
    assert got == {
        "none ": 401,
        "none static/dashboard.js": 401,
        "none api/snapshot": 401,
        "none api/timeline": 401,
        "wrong bearer": 401,
        "wrong query": 401,
        "bearer": 200,
        "query": 200,
        "cookie": 200,
        "forged cookie": 401,
    }


def test_bad_interval_is_refused(fake_run: FakeRun) -> None:
    async def start() -> None:
        async with serve_dashboard(fake_run.snapshot, interval=0):
            raise AssertionError("must not start")

    with pytest.raises(ConfigError):
        asyncio.run(start())


def test_a_port_in_use_is_a_clear_error(fake_run: FakeRun) -> None:
    async def scenario() -> None:
        async with serve_dashboard(fake_run.snapshot, interval=3600) as url:
            port = URL(url).port
            assert port is not None
            async with serve_metrics(fake_run.snapshot, port=port):
                raise AssertionError("must not start")

    with pytest.raises(BindError, match="choose another port") as caught:
        asyncio.run(scenario())
    assert isinstance(caught.value, SpindleError)
    assert isinstance(caught.value.__cause__, OSError)


def test_the_api_and_the_page_carry_caches_and_connectors() -> None:
    run = FakeRun(caches=True, stream=True)

    async def scenario() -> tuple[dict[str, Any], str, str]:
        async with (
            serve_dashboard(run.snapshot, interval=3600) as url,
            aiohttp.ClientSession() as session,
        ):
            async with session.get(f"{url}api/snapshot") as response:
                snap = await response.json()
            async with session.get(url) as response:
                page = await response.text()
            async with session.get(f"{url}static/dashboard.js") as response:
                script = await response.text()
        return snap, page, script

    snap, page, script = asyncio.run(scenario())
    assert [c["path"] for c in snap["caches"]] == [
        "/dev/shm/spindle-cache-a",
        "/dev/shm/spindle-cache-ring",
    ]
    assert "ring_members" not in snap["caches"][0] and snap["caches"][1]["ring_down"] == 1
    assert "shard_map" not in snap["caches"][1]
    source, sink = snap["connectors"]
    assert (source["role"], source["lag"], source["extra"]["claimed"]) == ("source", 7, 3)
    assert "nested" not in source and "nested" not in source["extra"]
    assert (sink["role"], sink["commits"], sink["commit_latency"]["count"]) == ("sink", 20, 20)
    # Both sections are hidden until a snapshot has them; the script fills them in.
    assert '<section id="caches-section" hidden>' in page
    assert '<section id="connectors-section" hidden>' in page
    for name in ('id="caches"', 'id="sources"', 'id="sinks"'):
        assert name in page
    for name in ("renderCaches(snap)", "renderConnectors(snap)", '"caches-section"'):
        assert name in script


def test_the_api_leaves_out_sections_the_run_does_not_have(fake_run: FakeRun) -> None:
    async def scenario() -> dict[str, Any]:
        async with (
            serve_dashboard(fake_run.snapshot, interval=3600) as url,
            aiohttp.ClientSession() as session,
            session.get(f"{url}api/snapshot") as response,
        ):
            got: dict[str, Any] = await response.json()
            return got

    snap = asyncio.run(scenario())
    assert "caches" not in snap and "connectors" not in snap and "hosts" in snap
