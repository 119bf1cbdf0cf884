"""The Fetcher's failure handling on a scripted transport and a fake clock: retries,
backoff and Retry-After at exact instants, the breaker, the body cap, and what is
never retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from spindle.jobs.fetch import FetchFailed
from spindle.jobs.fetch._fake import Fail, Reply, Step
from spindle.jobs.fetch._transport import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    ReadTimeout,
    TLSFailed,
)
from spindle.policies.retry import full_jitter

from ._scripted import Scripted, jitter

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(10)]

REFUSED = ConnectFailed("cannot connect: connection refused")


def breaker_reason(count: int) -> str:
    return f"host unreachable (circuit open after {count} consecutive connection errors)"


@pytest_asyncio.fixture
async def world(no_leaks: None) -> AsyncIterator[Scripted]:
    world = Scripted()
    yield world
    await world.close()


# -- retries and backoff -------------------------------------------------------------------


async def test_503_is_retried_after_full_jitter_and_the_spacing_it_asks_for(world) -> None:
    url = "http://a.test/page"
    world.script(url, 503, 503, 503, Reply(200, b"ok"))
    fetcher = await world.open(seed=1, retries=3, backoff=(1.0, 8.0))
    result = await fetcher.fetch(url)
    twin = jitter(1)
    w1, w2, w3 = (full_jitter(n, 1.0, 8.0, twin) for n in (1, 2, 3))
    # Each 503 also spaces the host's request starts further apart: 1 s, then 2 s.
    t1 = w1
    t2 = max(t1 + w2, t1 + 1.0)
    t3 = max(t2 + w3, t2 + 2.0)
    assert world.transport.times(url) == pytest.approx([0.0, t1, t2, t3])
    assert (result.status, result.body, result.attempts) == (200, b"ok", 4)
    assert result.elapsed == pytest.approx(t3)
    stats = fetcher.host_stats()["a.test:80"]
    assert (stats["throttled"], stats["limit"]) == (3, 2)  # 8 -> 4 -> 2 -> 1, then +1


async def test_retry_after_is_waited_for_by_the_whole_host(world) -> None:
    world.script("http://a.test/first", Reply(503, headers={"Retry-After": "7"}), Reply(200))
    world.script("http://a.test/second", Reply(200))
    fetcher = await world.open(retries=3, backoff=(0.5, 30.0))
    first = asyncio.create_task(fetcher.fetch("http://a.test/first"))
    await world.clock.sleep(1)  # the 503 came at 0; a second URL of the host comes at 1
    second = await fetcher.fetch("http://a.test/second")
    result = await first
    # The second URL waited for the Retry-After too; the retry came half a second after
    # it: the spacing the 503 set (backoff base 0.5 s).
    assert world.transport.times("http://a.test/second") == [7.0]
    assert world.transport.times("http://a.test/first") == [0.0, 7.5]
    assert (result.attempts, second.attempts) == (2, 1)


async def test_retry_after_beyond_the_backoff_cap_fails_at_once(world) -> None:
    url = "http://a.test/"
    world.script(url, Reply(429, headers={"Retry-After": "3600"}))
    fetcher = await world.open(backoff=(0.5, 30.0))
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert caught.value.reason == (
        "HTTP 429 Too Many Requests: Retry-After 3600 s exceeds the backoff cap of 30 s "
        "(raise FetchOptions.backoff to wait)"
    )
    assert (caught.value.attempts, world.transport.count(url)) == (1, 1)
    assert world.clock.now() == 0.0  # nothing was waited for


async def test_a_request_backing_off_holds_no_slot(world) -> None:
    world.script("http://a.test/flaky", 500, Reply(200))
    world.script("http://a.test/other", Reply(200))
    fetcher = await world.open(seed=5, per_host=1, concurrency=1, backoff=(10.0, 10.0))
    flaky, other = await asyncio.gather(
        fetcher.fetch("http://a.test/flaky"), fetcher.fetch("http://a.test/other")
    )
    w1 = full_jitter(1, 10.0, 10.0, jitter(5))
    # The only slot went to the other URL while the flaky one waited out its backoff.
    assert world.transport.times("http://a.test/other") == [0.0]
    assert world.transport.times("http://a.test/flaky") == [0.0, pytest.approx(w1)]
    assert (flaky.attempts, other.attempts) == (2, 1)


async def test_retries_run_out(world) -> None:
    url = "http://a.test/"
    world.script(url, 503)
    fetcher = await world.open(retries=2)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert caught.value.reason == "HTTP 503 Service Unavailable (after 3 attempts)"
    assert (caught.value.attempts, world.transport.count(url)) == (3, 3)
    assert fetcher.host_stats()["a.test:80"]["limit"] == 1  # 8 -> 4 -> 2 -> 1


async def test_an_attempt_past_total_timeout_is_retried(world) -> None:
    url = "http://a.test/slow"
    world.script(url, Reply(200, b"late", delay=60.0))
    fetcher = await world.open(seed=2, total_timeout=5.0, retries=1, backoff=(1.0, 1.0))
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert caught.value.reason == "timed out (total_timeout 5 s) (after 2 attempts)"
    w1 = full_jitter(1, 1.0, 1.0, jitter(2))
    assert world.transport.times(url) == [0.0, pytest.approx(5.0 + w1)]
    assert world.clock.now() == pytest.approx(10.0 + w1)


# -- the circuit breaker -----------------------------------------------------------------


async def test_the_breaker_opens_after_connection_errors_then_fails_fast(world) -> None:
    world.script("http://down.test/1", REFUSED)
    fetcher = await world.open(retries=10, breaker=3)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch("http://down.test/1")
    assert (caught.value.reason, caught.value.attempts) == (breaker_reason(3), 3)
    assert isinstance(caught.value.__cause__, ConnectFailed)
    opened_at = world.clock.now()
    for i in range(2, 6):  # unscripted: they would get a 404, were they requested
        with pytest.raises(FetchFailed) as caught:
            await fetcher.fetch(f"http://down.test/{i}")
        assert (caught.value.reason, caught.value.attempts) == (breaker_reason(3), 0)
    assert world.transport.count() == 3
    assert world.clock.now() == opened_at  # failing fast: no request, no wait
    stats = fetcher.host_stats()["down.test:80"]
    assert (stats["requests"], stats["errors"], stats["dead"]) == (3, 3, True)


async def test_requests_queued_for_a_host_fail_without_a_request_once_it_is_dead(world) -> None:
    world.script("http://down.test/0", Fail(REFUSED, delay=1.0))
    fetcher = await world.open(retries=0, breaker=1, per_host=1)
    results = await asyncio.gather(
        *(fetcher.fetch(f"http://down.test/{i}") for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, FetchFailed) for r in results)
    reasons = [(r.reason, r.attempts) for r in results if isinstance(r, FetchFailed)]
    assert reasons == [(breaker_reason(1), 1)] + [(breaker_reason(1), 0)] * 3
    assert world.transport.urls() == ["http://down.test/0"]


async def test_only_consecutive_connection_errors_count(world) -> None:
    world.script("http://a.test/x", REFUSED, Reply(200))
    world.script("http://a.test/y", ConnectTimeout("connect timeout (10 s)"), REFUSED, Reply(200))
    world.script("http://a.test/z", *[ReadTimeout("read timeout (30 s)")] * 4, Reply(200))
    fetcher = await world.open(retries=5, breaker=3)
    x = await fetcher.fetch("http://a.test/x")  # one error, then an answer resets the count
    y = await fetcher.fetch("http://a.test/y")  # two more: still under three in a row
    z = await fetcher.fetch("http://a.test/z")  # a slow host is not a dead one
    assert (x.attempts, y.attempts, z.attempts) == (2, 3, 5)
    stats = fetcher.host_stats()["a.test:80"]
    assert (stats["errors"], stats["dead"]) == (7, False)


# -- failures that are never retried --------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            Reply(200, b"x" * 101),
            "too large: Content-Length 101 exceeds max_bytes 100",
        ),
        (
            Reply(200, b"x" * 101, declare_length=False),
            "too large: more than max_bytes 100 bytes",
        ),
    ],
    ids=["declared", "streamed"],
)
async def test_a_body_over_max_bytes_fails_at_once(world, reply: Reply, reason: str) -> None:
    url = "http://a.test/big"
    world.script(url, reply)
    fetcher = await world.open(max_bytes=100)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert (caught.value.reason, caught.value.attempts) == (reason, 1)
    assert world.transport.count(url) == 1


async def test_a_body_at_max_bytes_is_accepted(world) -> None:
    world.script("http://a.test/", Reply(200, b"x" * 100, declare_length=False))
    fetcher = await world.open(max_bytes=100)
    assert (await fetcher.fetch("http://a.test/")).body == b"x" * 100


@pytest.mark.parametrize(
    "error",
    [BadResponse("bad response: invalid status line"), TLSFailed("TLS error: bad certificate")],
    ids=["bad-response", "tls"],
)
async def test_a_permanent_failure_is_not_retried(world, error: Step) -> None:
    url = "http://a.test/"
    world.script(url, error, Reply(200))
    fetcher = await world.open(retries=5)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert (caught.value.reason, caught.value.attempts) == (str(error), 1)
    assert caught.value.__cause__ is not None
    assert type(caught.value.__cause__) is type(error)
    assert world.transport.count(url) == 1
    assert world.clock.now() == 0.0


async def test_an_answer_that_is_not_retried_is_a_result_whatever_its_status(world) -> None:
    fetcher = await world.open(retries=5)
    result = await fetcher.fetch("http://a.test/missing")  # unscripted: 404
    assert (result.status, result.attempts) == (404, 1)
    assert world.transport.count() == 1


async def test_an_invalid_url_fails_without_a_request(world) -> None:
    fetcher = await world.open()
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch("ftp://a.test/file")
    assert caught.value.reason.startswith("invalid URL: 'ftp://a.test/file'")
    assert caught.value.attempts == 0
    assert world.transport.count() == 0
