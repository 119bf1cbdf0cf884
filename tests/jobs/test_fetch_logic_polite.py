"""The Fetcher's politeness on a scripted transport and a fake clock: the AIMD limit,
spacing and rate, robots.txt, and redirects through each hop's own host, at exact
instants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from spindle.jobs.fetch import FetchFailed
from spindle.jobs.fetch._fake import Reply, Step
from spindle.jobs.fetch._transport import ConnectFailed

from ._scripted import Scripted, of, peak

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]

BUSY = "http://busy.test"


@pytest_asyncio.fixture
async def world(no_leaks: None) -> AsyncIterator[Scripted]:
    world = Scripted()
    yield world
    await world.close()


# -- limits and spacing ------------------------------------------------------------------


async def test_429_halves_the_host_limit_and_successes_grow_it_back(world) -> None:
    world.script(f"{BUSY}/throttled", 429, 429, 429, Reply(200))
    fetcher = await world.open(per_host=8, retries=3, backoff=(0.01, 0.04))

    def stats() -> dict[str, object]:
        return fetcher.host_stats()["busy.test:80"]

    await fetcher.fetch(f"{BUSY}/throttled")
    assert (stats()["limit"], stats()["throttled"]) == (2, 3)  # 8 -> 4 -> 2 -> 1, then +1
    world.transport.default = Reply(200, delay=1.0)  # every other URL: a second to answer

    await asyncio.gather(*(fetcher.fetch(f"{BUSY}/a{i}") for i in range(4)))
    assert peak(of(world.transport.requests, f"{BUSY}/a")) == 2
    assert stats()["limit"] == 3  # one slot more after two successes at limit 2

    for i in range(30):  # additive increase: limit successes in a row for one more slot
        await fetcher.fetch(f"{BUSY}/b{i}")
    assert stats()["limit"] == 8  # back at per_host, never above it
    await asyncio.gather(*(fetcher.fetch(f"{BUSY}/c{i}") for i in range(16)))
    assert peak(of(world.transport.requests, f"{BUSY}/c")) == 8
    assert stats()["interval"] == 0.0  # and the throttle's spacing has worn off


async def test_rate_spaces_each_hosts_request_starts(world) -> None:
    fetcher = await world.open(rate=2.0)
    urls = [f"http://{host}.test/{i}" for host in ("a", "b") for i in range(4)]
    await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    for host in ("a", "b"):  # two hosts, each on its own schedule
        starts = [r.at for r in of(world.transport.requests, f"http://{host}.test/")]
        assert starts == [0.0, 0.5, 1.0, 1.5]


async def test_per_host_limits_requests_in_flight_to_a_host(world) -> None:
    world.transport.default = Reply(200, delay=1.0)
    fetcher = await world.open(per_host=2)
    await asyncio.gather(*(fetcher.fetch(f"http://a.test/{i}") for i in range(6)))
    assert world.transport.times() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert world.transport.max_in_flight_to("a.test:80") == 2


async def test_concurrency_limits_requests_in_flight_over_all_hosts(world) -> None:
    world.transport.default = Reply(200, delay=1.0)
    fetcher = await world.open(concurrency=3, per_host=8)
    urls = [f"http://{host}.test/{i}" for i in range(3) for host in ("a", "b", "c")]
    await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    assert world.transport.max_in_flight == 3
    assert peak(world.transport.requests) == 3
    assert world.clock.now() == 3.0  # nine requests of a second, three at a time


# -- robots.txt -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "interval"),
    [("Crawl-delay: 2", 2.0), ("Request-rate: 1/4s", 4.0)],
    ids=["crawl-delay", "request-rate"],
)
async def test_robots_disallow_and_spacing(world, rule: str, interval: float) -> None:
    robots = f"User-agent: *\nDisallow: /private/\n{rule}\n".encode()
    world.script("http://a.test/robots.txt", Reply(200, robots))
    fetcher = await world.open(robots=True)
    urls = [f"http://a.test/public/{i}" for i in range(3)] + ["http://a.test/private/x"]
    *public, private = await asyncio.gather(
        *(fetcher.fetch(url) for url in urls), return_exceptions=True
    )
    assert all(not isinstance(r, BaseException) and r.status == 404 for r in public)
    assert isinstance(private, FetchFailed)
    assert (private.reason, private.attempts) == ("disallowed by robots.txt", 0)
    # robots.txt once, at 0 (it counts as the host's last start), then one page per interval.
    assert world.transport.urls()[0] == "http://a.test/robots.txt"
    assert world.transport.times() == [0.0, interval, 2 * interval, 3 * interval]
    assert "http://a.test/private/x" not in world.transport.urls()
    stats = fetcher.host_stats()["a.test:80"]
    assert (stats["robots"], stats["interval"]) == ("ok", interval)


@pytest.mark.parametrize(
    ("step", "status"),
    [
        (404, "none (HTTP 404)"),
        (503, "unavailable (HTTP 503)"),
        (
            ConnectFailed("cannot connect: connection refused"),
            "unavailable (ConnectFailed: cannot connect: connection refused)",
        ),
    ],
    ids=["missing", "server-error", "no-answer"],
)
async def test_robots_txt_that_cannot_be_read_allows_all(world, step: Step, status: str) -> None:
    world.script("http://a.test/robots.txt", step)
    world.script("http://a.test/page", Reply(200, b"page"))
    fetcher = await world.open(robots=True, retries=3)
    assert (await fetcher.fetch("http://a.test/page")).body == b"page"
    assert world.transport.urls() == ["http://a.test/robots.txt", "http://a.test/page"]
    assert fetcher.host_stats()["a.test:80"]["robots"] == status


# -- redirects --------------------------------------------------------------------------


async def test_each_redirect_hop_goes_through_its_own_hosts_rules(world) -> None:
    world.script("http://a.test/start", Reply(302, headers={"Location": "http://b.test/mid"}))
    world.script("http://b.test/robots.txt", Reply(200, b"User-agent: *\nCrawl-delay: 3\n"))
    world.script("http://b.test/mid", Reply(301, headers={"Location": "/end"}))
    world.script("http://b.test/end", Reply(200, b"done"))
    fetcher = await world.open(robots=True)
    result = await fetcher.fetch("http://a.test/start")
    assert (result.url, result.final_url) == ("http://a.test/start", "http://b.test/end")
    assert (result.status, result.body, result.attempts) == (200, b"done", 1)
    assert [(r.url, r.at) for r in world.transport.requests] == [
        ("http://a.test/robots.txt", 0.0),
        ("http://a.test/start", 0.0),
        ("http://b.test/robots.txt", 0.0),
        ("http://b.test/mid", 3.0),  # b's Crawl-delay, counted from its robots.txt
        ("http://b.test/end", 6.0),
    ]
    assert result.elapsed == 6.0
    hosts = fetcher.host_stats()
    assert (hosts["a.test:80"]["robots"], hosts["b.test:80"]["robots"]) == ("none (HTTP 404)", "ok")


async def test_a_redirect_to_a_disallowed_url_fails(world) -> None:
    world.script("http://a.test/", Reply(302, headers={"Location": "http://b.test/secret"}))
    world.script("http://b.test/robots.txt", Reply(200, b"User-agent: *\nDisallow: /secret\n"))
    fetcher = await world.open(robots=True)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch("http://a.test/")
    assert caught.value.reason == "disallowed by robots.txt"
    assert "http://b.test/secret" not in world.transport.urls()


async def test_a_redirect_loop_is_caught(world) -> None:
    world.script("http://a.test/1", Reply(302, headers={"Location": "http://a.test/2"}))
    world.script("http://a.test/2", Reply(302, headers={"Location": "http://a.test/1"}))
    fetcher = await world.open()
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch("http://a.test/1")
    assert caught.value.reason == (
        "redirect loop: http://a.test/1 -> http://a.test/2 -> http://a.test/1"
    )
    assert world.transport.urls() == ["http://a.test/1", "http://a.test/2"]


@pytest.mark.parametrize(("hops", "fails"), [(2, False), (3, True)])
async def test_redirects_are_followed_up_to_max_redirects(world, hops: int, fails: bool) -> None:
    for i in range(hops):
        world.script(f"http://a.test/{i}", Reply(307, headers={"Location": f"/{i + 1}"}))
    world.script(f"http://a.test/{hops}", Reply(200, b"arrived"))
    fetcher = await world.open(max_redirects=2)
    if fails:
        with pytest.raises(FetchFailed) as caught:
            await fetcher.fetch("http://a.test/0")
        assert caught.value.reason == "too many redirects (more than max_redirects 2)"
        assert world.transport.count() == 3  # the first request and two redirects
    else:
        result = await fetcher.fetch("http://a.test/0")
        assert (result.final_url, result.body) == (f"http://a.test/{hops}", b"arrived")


async def test_an_invalid_redirect_target_fails(world) -> None:
    world.script("http://a.test/", Reply(302, headers={"Location": "http://[::1"}))
    fetcher = await world.open(retries=3)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch("http://a.test/")
    assert caught.value.reason.startswith("invalid redirect target: 'http://[::1'")
    assert world.transport.count() == 1
