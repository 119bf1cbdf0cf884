"""Per-host figures of a fetch run: made in the worker processes, added up in the parent.

Each test server is a host (127.0.0.1 on its own port) that counts the requests it
receives, so the snapshot's ``hosts`` rows are checked against the servers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import spindle
from spindle.jobs.fetch import fetch
from spindle.jobs.fetch._stage import MAX_HOST_ROWS, OTHER_HOSTS, merge_hosts

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
async def test_fetch_command_prints_the_hosts_section(serve, tmp_path: Path) -> None:
    a, b = [await serve({"/page/{n}": page}) for _ in range(2)]
    urls = [a.url(f"/page/{n}") for n in range(5)] + [b.url(f"/page/{n}") for n in range(9)]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join(urls) + "\n")

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--workers", "2", "--per-host", "3", cwd=tmp_path
    )

    assert code == 0, err
    assert "hosts:" in err
    table = err.split("hosts:", 1)[1]
    for server in (a, b):
        match = re.search(
            rf"^\s+{re.escape(host_of(server.origin + '/'))}\s+(\d+)\s+(\d+)\s", table, re.M
        )
        assert match is not None, table
        assert (int(match[1]), int(match[2])) == (server.count(), 0)
    assert (a.count("/robots.txt"), a.count(), b.count()) == (1, 6, 10)  # robots.txt too


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
