"""Per-host figures of a fetch run: made in the worker processes, added up in the parent.

Each test server is a host (127.0.0.1 on its own port) that counts the requests it
receives, so the snapshot's ``hosts`` rows are checked against the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import spindle
from spindle.jobs.fetch import fetch
from spindle.jobs.fetch._stage import MAX_HOST_ROWS, OTHER_HOSTS, merge_hosts
from spindle.observe import serve_dashboard

from ._http import Server, status
from ._leftovers import no_stray_threads_or_children  # noqa: F401 - a fixture
from .test_fetch_command import spindle_fetch

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_stray_threads_or_children")]

QUICK = {"robots": False, "backoff": (0.01, 0.05), "connect_timeout": 2.0, "read_timeout": 2.0}


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=f"page {request.match_info['n']}")


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


def host_of(url: str) -> str:
    return url.split("/")[2]


def by_host(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = snapshot["hosts"]
    assert len({r["host"] for r in rows}) == len(rows)  # one row per host
    return {r["host"]: r for r in rows}


@pytest.mark.asyncio
async def test_hosts_rows_match_the_requests_each_server_received(serve) -> None:
    servers: list[Server] = [
        await serve({"/page/{n}": page, "/gone": status(404)}) for _ in range(3)
    ]
    counts = [7, 12, 20]  # a different number per host, so rows cannot be swapped
    urls = [s.url(f"/page/{n}") for s, c in zip(servers, counts, strict=True) for n in range(c)]
    urls.append(servers[0].url("/gone"))
    refused = refused_url()
    stage = fetch(workers=2, concurrency=20, per_host=4, retries=1, **QUICK)
    pipeline = spindle.Pipeline([stage], ordered=False, on_error="yield")

    results = [r async for r in pipeline.arun([*urls, refused])]

    assert len(results) == len(urls) + 1
    rows = by_host(pipeline.snapshot())
    assert set(rows) == {*(host_of(s.origin + "/") for s in servers), host_of(refused)}
    for server in servers:
        row = rows[host_of(server.origin + "/")]
        assert row["requests"] == server.count()  # exact once the run is over
        assert row["errors"] == 0
        assert row["limit"] == 4  # no 429 or 503: the limit never moved
        assert row["latency_mean"] > 0
    assert rows[host_of(servers[0].origin + "/")]["requests"] == counts[0] + 1  # the 404
    dead = rows[host_of(refused)]
    assert (dead["requests"], dead["errors"]) == (2, 2)  # one try and one retry, refused
    # The stage's own entry holds the same rows; its counters work as for any stage.
    [entry] = pipeline.snapshot()["stages"]
    assert entry["report"]["hosts"] == pipeline.snapshot()["hosts"]
    assert (stage.stats().done, stage.stats().failed) == (len(urls), 1)


@pytest.mark.asyncio
async def test_a_host_fetched_by_two_workers_is_added_up(serve) -> None:
    server = await serve({"/page/{n}": page})
    urls = [server.url(f"/page/{n}") for n in range(24)]
    # A worker retires after 8 jobs: while it is replaced, the host's URLs go to the
    # other worker, so its requests are spread over several worker processes.
    stage = dataclasses.replace(
        fetch(workers=2, concurrency=4, per_host=2, **QUICK), max_jobs_per_worker=8
    )
    pipeline = spindle.Pipeline([stage], ordered=False, on_error="yield")

    results = [r async for r in pipeline.arun(urls)]

    assert all(isinstance(r, dict) and r["status"] == 200 for r in results)
    assert pipeline.stats()[0].restarts >= 2
    rows = by_host(pipeline.snapshot())
    assert list(rows) == [host_of(server.origin + "/")]
    assert rows[host_of(server.origin + "/")]["requests"] == server.count() == len(urls)


@pytest.mark.asyncio
async def test_fetch_command_reports_hosts_as_text_and_json(serve, tmp_path: Path) -> None:
    a, b = [await serve({"/page/{n}": page}) for _ in range(2)]
    urls = [a.url(f"/page/{n}") for n in range(5)] + [b.url(f"/page/{n}") for n in range(9)]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join(urls) + "\n")

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--workers", "2", "--per-host", "3",
        "--stats-json", "stats.json", cwd=tmp_path,
    )  # fmt: skip

    assert code == 0, err
    assert (a.count("/robots.txt"), a.count(), b.count()) == (1, 6, 10)  # robots.txt too
    assert "hosts:" in err
    table = err.split("hosts:", 1)[1]
    stats = json.loads(await asyncio.to_thread((tmp_path / "stats.json").read_text))
    rows = {r["host"]: r for r in stats["hosts"]}
    assert len(rows) == 2
    for server in (a, b):
        host = host_of(server.origin + "/")
        line = re.search(rf"^\s+{re.escape(host)}\s+(\d+)\s+(\d+)\s", table, re.M)
        assert line is not None, table
        assert (int(line[1]), int(line[2])) == (server.count(), 0)
        assert (rows[host]["requests"], rows[host]["errors"]) == (server.count(), 0)
        assert rows[host]["limit"] == 3 and rows[host]["latency_mean"] > 0


@pytest.mark.asyncio
async def test_the_dashboard_shows_hosts_while_the_run_goes_on(serve) -> None:
    held = asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        await held.wait()
        return web.Response(text="late")

    a = await serve({"/page/{n}": page, "/hold": hold})
    b = await serve({"/page/{n}": page})
    urls = [a.url(f"/page/{n}") for n in range(4)] + [b.url(f"/page/{n}") for n in range(6)]
    urls.append(a.url("/hold"))  # keeps the run going until the test has seen the rows
    addresses: list[str] = []

    @contextlib.asynccontextmanager
    async def dashboard(snapshot: Any) -> AsyncIterator[str]:
        async with serve_dashboard(snapshot, port=0) as url:
            addresses.append(url)
            yield url

    pipeline = spindle.Pipeline([fetch(workers=2, concurrency=8, **QUICK)], ordered=False)
    run = asyncio.create_task(_collect(pipeline.arun(urls, services=[dashboard])))
    expected = {host_of(a.origin + "/"): 5, host_of(b.origin + "/"): 6}
    seen: dict[str, int] = {}
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            # Workers report about once a second: look until their reports arrive.
            while seen != expected:
                if addresses:
                    async with http.get(addresses[0] + "api/snapshot") as response:
                        snap = await response.json()
                    seen = {h["host"]: h["requests"] for h in snap.get("hosts", [])}
                await asyncio.sleep(0.1)
        assert not run.done()  # seen during the run, not after it
    finally:
        held.set()
        results = await run
    assert len(results) == len(urls)


async def _collect(results: AsyncIterator[Any]) -> list[Any]:
    return [r async for r in results]


def test_merge_adds_rows_up_and_keeps_the_busiest_hosts() -> None:
    def row(host: str, requests: int, limit: int = 8) -> dict[str, Any]:
        return {
            "host": host,
            "requests": requests,
            "errors": 1,
            "responses": requests - 1,
            "latency_sum": 0.5 * (requests - 1),
            "limit": limit,
        }

    ended = {"hosts": [row("a:80", 10, limit=2), row("b:80", 3)]}
    live = {"hosts": [row("a:80", 5, limit=6)]}
    merged = merge_hosts([ended, live])
    rows = {r["host"]: r for r in merged["hosts"]}
    assert rows["a:80"]["requests"] == 15 and rows["a:80"]["errors"] == 2
    assert rows["a:80"]["limit"] == 6  # the live worker's, reported last
    assert rows["a:80"]["latency_mean"] == pytest.approx(0.5)
    assert merge_hosts([merged]) == merged  # a merge of a merge changes nothing

    many = {"hosts": [row(f"h{i}:80", 2 + i) for i in range(MAX_HOST_ROWS + 50)]}
    capped = merge_hosts([many, live])["hosts"]
    assert len(capped) == MAX_HOST_ROWS
    [other] = [r for r in capped if r["host"] == OTHER_HOSTS]
    named = [r for r in capped if r["host"] != OTHER_HOSTS]
    assert min(r["requests"] for r in named) > max(2 + i for i in range(51))  # the busiest
    total = sum(r["requests"] for r in many["hosts"]) + 5
    assert sum(r["requests"] for r in capped) == total  # nothing lost, only folded
    assert other["requests"] == total - sum(r["requests"] for r in named)
