"""Politeness, measured at the servers: robots.txt, per-host limits, and rates."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from spindle.jobs.fetch import FetchFailed

from ._http import Meter, held, status, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

#: Slack for the time between a request leaving the client and reaching the handler.
TOLERANCE = 0.02

ROBOTS = """\
User-agent: *
Disallow: /private/
Crawl-delay: 0.3
"""


@pytest.mark.slow
async def test_robots_disallow_and_crawl_delay(serve, open_fetcher) -> None:
    server = await serve(
        {
            "/robots.txt": text(ROBOTS),
            "/public/{name}": text("welcome"),
            "/private/{name}": text("secret"),
        }
    )
    fetcher = await open_fetcher(robots=True, per_host=4)
    urls = [server.url(f"/public/{i}") for i in range(4)] + [server.url("/private/x")]
    results = await asyncio.gather(*(fetcher.fetch(url) for url in urls), return_exceptions=True)
    *public, private = results
    assert [r.body for r in public] == [b"welcome"] * 4  # type: ignore[union-attr]
    assert isinstance(private, FetchFailed)
    assert private.reason == "disallowed by robots.txt"
    assert private.attempts == 0
    assert server.count("/private/x") == 0
    assert server.count("/robots.txt") == 1  # fetched once for five URLs
    starts = server.times()
    assert len(starts) == 5  # robots.txt and four pages
    assert all(later - earlier >= 0.3 - TOLERANCE for earlier, later in pairwise(starts))
    stats = fetcher.host_stats()[f"127.0.0.1:{server.port}"]
    assert stats["robots"] == "ok"
    assert stats["interval"] == pytest.approx(0.3)


async def test_robots_txt_missing_means_allow_all(serve, open_fetcher) -> None:
    server = await serve({"/page": text("page")})  # /robots.txt answers 404
    fetcher = await open_fetcher(robots=True)
    assert (await fetcher.fetch(server.url("/page"))).body == b"page"
    assert fetcher.host_stats()[f"127.0.0.1:{server.port}"]["robots"] == "none (HTTP 404)"


async def test_robots_txt_server_error_allows_all_but_is_recorded(serve, open_fetcher) -> None:
    server = await serve({"/robots.txt": status(503), "/page": text("page")})
    fetcher = await open_fetcher(robots=True)
    assert (await fetcher.fetch(server.url("/page"))).body == b"page"
    assert server.count("/robots.txt") == 1  # robots.txt is not retried
    stats = fetcher.host_stats()[f"127.0.0.1:{server.port}"]
    assert stats["robots"] == "unavailable (HTTP 503)"


async def test_robots_can_be_ignored(serve, open_fetcher) -> None:
    server = await serve({"/robots.txt": text("User-agent: *\nDisallow: /\n"), "/": text("x")})
    fetcher = await open_fetcher(robots=False)
    assert (await fetcher.fetch(server.url("/"))).status == 200
    assert server.count("/robots.txt") == 0


async def test_per_host_limit_holds_at_the_server(serve, open_fetcher) -> None:
    host = Meter()
    server = await serve({"/{n}": held(host, 2)}, meters=[host])
    fetcher = await open_fetcher(per_host=2)
    results = await asyncio.gather(*(fetcher.fetch(server.url(f"/{i}")) for i in range(20)))
    assert all(r.status == 200 for r in results)
    assert server.count() == 20
    assert server.meter.max_in_flight == 2


async def test_hosts_proceed_in_parallel(serve, open_fetcher) -> None:
    both = Meter()
    first = await serve({"/{n}": held(both, 4)}, meters=[both])
    second = await serve({"/{n}": held(both, 4)}, meters=[both])
    fetcher = await open_fetcher(per_host=2)
    urls = [s.url(f"/{i}") for i in range(10) for s in (first, second)]
    results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    assert all(r.status == 200 for r in results)
    assert first.meter.max_in_flight == 2
    assert second.meter.max_in_flight == 2
    assert both.max_in_flight == 4  # two hosts at their limit at the same time


async def test_global_concurrency_caps_all_hosts(serve, open_fetcher) -> None:
    everywhere = Meter()
    servers = [await serve({"/{n}": held(everywhere, 3)}, meters=[everywhere]) for _ in range(3)]
    fetcher = await open_fetcher(per_host=8, concurrency=3)
    urls = [s.url(f"/{i}") for i in range(6) for s in servers]
    await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    assert everywhere.max_in_flight == 3


@pytest.mark.slow
async def test_rate_spaces_requests_at_the_server(serve, open_fetcher) -> None:
    server = await serve({"/{n}": text("ok")})
    fetcher = await open_fetcher(rate=10.0, per_host=8)
    await asyncio.gather(*(fetcher.fetch(server.url(f"/{i}")) for i in range(10)))
    starts = server.times()
    assert len(starts) == 10
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    assert min(gaps) >= 0.1 - TOLERANCE, gaps
