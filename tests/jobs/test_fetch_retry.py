"""Retries, backoff, Retry-After, timeouts, and the per-host circuit breaker."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from spindle.jobs.fetch import FetchFailed

from ._http import script, status, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

BREAKER_REASON = "host unreachable (circuit open after 5 consecutive connection errors)"


async def cut_mid_body(request: web.Request) -> web.StreamResponse:
    """Promise 1000 bytes, send 10, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    await response.prepare(request)
    await response.write(b"x" * 10)
    assert request.transport is not None
    request.transport.abort()
    return response


@pytest.mark.slow
async def test_429_waits_for_retry_after(serve, open_fetcher) -> None:
    server = await serve({"/": script(status(429, **{"Retry-After": "1"}), text("ok"))})
    fetcher = await open_fetcher(backoff=(0.01, 2.0))
    result = await fetcher.fetch(server.url("/"))
    assert (result.status, result.attempts) == (200, 2)
    first, second = server.times("/")
    assert second - first >= 1.0
    assert fetcher.host_stats()[f"127.0.0.1:{server.port}"]["throttled"] == 1


async def test_retry_after_longer_than_the_cap_fails_at_once(serve, open_fetcher) -> None:
    server = await serve({"/": status(429, **{"Retry-After": "3600"})})
    fetcher = await open_fetcher()
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert "Retry-After 3600 s exceeds the backoff cap" in caught.value.reason
    assert caught.value.attempts == 1
    assert server.count("/") == 1


async def test_500_then_200_takes_two_attempts(serve, open_fetcher) -> None:
    server = await serve({"/": script(status(500), text("ok"))})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/"))
    assert (result.status, result.body, result.attempts) == (200, b"ok", 2)
    assert server.count("/") == 2


async def test_503_until_retries_run_out_fails_and_halves_the_limit(serve, open_fetcher) -> None:
    server = await serve({"/": status(503)})
    fetcher = await open_fetcher(retries=2, per_host=8)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason == "HTTP 503 Service Unavailable (after 3 attempts)"
    assert caught.value.attempts == 3
    assert server.count("/") == 3
    stats = fetcher.host_stats()[f"127.0.0.1:{server.port}"]
    assert stats["limit"] == 1  # 8 -> 4 -> 2 -> 1
    assert stats["interval"] > 0  # and requests are spaced out
    assert stats["throttled"] == 3


async def test_connection_cut_mid_response_is_retried(serve, open_fetcher) -> None:
    server = await serve({"/": script(cut_mid_body, text("whole"))})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/"))
    assert (result.status, result.body, result.attempts) == (200, b"whole", 2)


async def test_slow_response_within_read_timeout_succeeds(serve, open_fetcher) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await server.pause(0.2)
        return web.Response(text="late")

    server = await serve({"/": slow})
    fetcher = await open_fetcher(read_timeout=5.0)
    result = await fetcher.fetch(server.url("/"))
    assert (result.body, result.attempts) == (b"late", 1)


async def test_response_slower_than_read_timeout_fails(serve, open_fetcher) -> None:
    async def stalled(request: web.Request) -> web.StreamResponse:
        await server.pause(30)
        return web.Response(text="too late")

    server = await serve({"/": stalled})
    fetcher = await open_fetcher(read_timeout=0.2, retries=1)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason == "read timeout (0.2 s) (after 2 attempts)"
    assert server.count("/") == 2


async def test_body_that_stalls_hits_the_read_timeout(serve, open_fetcher) -> None:
    async def stalls_mid_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        await server.pause(30)
        return response

    server = await serve({"/": stalls_mid_body})
    fetcher = await open_fetcher(read_timeout=0.2, retries=0)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert "timeout" in caught.value.reason


def _closed_port() -> int:
    """A port that refuses connections: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_refused_port_fails_then_the_breaker_fails_fast(open_fetcher) -> None:
    port = _closed_port()
    fetcher = await open_fetcher(retries=3, breaker=5)
    urls = [f"http://127.0.0.1:{port}/{i}" for i in range(8)]
    failures = []
    for url in urls:
        with pytest.raises(FetchFailed) as caught:
            await fetcher.fetch(url)
        failures.append(caught.value)
    assert failures[0].reason == "cannot connect: connection refused (after 4 attempts)"
    assert failures[0].attempts == 4
    # The fifth connection error in a row opens the circuit...
    assert failures[1].reason == BREAKER_REASON
    assert failures[1].attempts == 1
    # ...and the rest fail without a single connection attempt.
    assert [f.reason for f in failures[2:]] == [BREAKER_REASON] * 6
    assert [f.attempts for f in failures[2:]] == [0] * 6
    stats = fetcher.host_stats()[f"127.0.0.1:{port}"]
    assert (stats["requests"], stats["errors"], stats["dead"]) == (5, 5, True)


async def test_breaker_stops_connections_at_the_server(raw_serve, open_fetcher) -> None:
    async def headers_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()  # then the server aborts the connection

    server = await raw_serve(headers_then_hang_up)
    fetcher = await open_fetcher(retries=10, breaker=5, per_host=1)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/first"))
    assert caught.value.reason == BREAKER_REASON
    assert server.connections == 5
    results = await asyncio.gather(
        *(fetcher.fetch(server.url(f"/{i}")) for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, FetchFailed) and r.reason == BREAKER_REASON for r in results)
    assert server.connections == 5


async def test_concurrent_urls_of_a_dead_host_stop_soon(raw_serve, open_fetcher) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()

    server = await raw_serve(hang_up)
    fetcher = await open_fetcher(retries=10, breaker=5, per_host=4)
    results = await asyncio.gather(
        *(fetcher.fetch(server.url(f"/{i}")) for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, FetchFailed) for r in results)
    assert sum(1 for r in results if r.reason == BREAKER_REASON) >= 46
    # At most the requests already in flight when the circuit opened got through.
    assert server.connections <= 5 + 4 - 1
