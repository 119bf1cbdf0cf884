"""Plain fetches: bodies, records, responses, bad URLs, and the public surface."""

from __future__ import annotations

import asyncio
import base64
import pickle
import sys

import pytest
from aiohttp import web

from spindle.jobs.fetch import Fetcher, FetchFailed, FetchResult, Response

from ._http import TEST_OPTIONS, open_sockets, status, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

BINARY = bytes(range(256)) * 16


async def binary(request: web.Request) -> web.StreamResponse:
    return web.Response(body=BINARY, content_type="application/octet-stream")


async def latin1(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body="héllo wörld".encode("latin-1"), content_type="text/plain", charset="latin-1"
    )


async def as_json(request: web.Request) -> web.StreamResponse:
    return web.json_response({"name": "spindle", "n": [1, 2, 3]})


async def test_text_body(serve, open_fetcher) -> None:
    server = await serve({"/hello": text("hello, world", **{"X-Thing": "1"})})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/hello"))
    assert result.status == 200
    assert result.body == b"hello, world"
    assert result.url == result.final_url == server.url("/hello")
    assert result.attempts == 1
    assert result.elapsed > 0
    assert result.headers["x-thing"] == "1"
    record = result.to_record()
    assert record["text"] == "hello, world"
    assert "body_base64" not in record
    assert set(record) == {"url", "final_url", "status", "headers", "elapsed", "attempts", "text"}


async def test_binary_body_is_recorded_as_base64(serve, open_fetcher) -> None:
    server = await serve({"/bin": binary})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/bin"))
    assert result.body == BINARY
    record = result.to_record()
    assert "text" not in record
    assert base64.b64decode(record["body_base64"]) == BINARY


async def test_charset_from_content_type(serve, open_fetcher) -> None:
    server = await serve({"/latin": latin1})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/latin"))
    assert result.to_record()["text"] == "héllo wörld"
    assert result.response().text() == "héllo wörld"


async def test_response_pickles_and_parses_json(serve, open_fetcher) -> None:
    server = await serve({"/data": as_json})
    fetcher = await open_fetcher()
    response = (await fetcher.fetch(server.url("/data"))).response()
    copy = pickle.loads(pickle.dumps(response))
    assert isinstance(copy, Response)
    assert (copy.url, copy.final_url, copy.status) == (response.url, response.final_url, 200)
    assert copy.headers == response.headers
    assert copy.json() == {"name": "spindle", "n": [1, 2, 3]}
    assert copy.body == response.body


async def test_a_404_is_a_result_not_a_failure(serve, open_fetcher) -> None:
    server = await serve({"/gone": status(404)})
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/gone"))
    assert isinstance(result, FetchResult)
    assert result.status == 404
    assert result.attempts == 1
    assert server.count("/gone") == 1  # not retried


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "http://", "http://x:99999/", ""])
async def test_invalid_urls_fail_before_any_io(open_fetcher, url: str) -> None:
    fetcher = await open_fetcher(robots=True)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(url)
    assert caught.value.reason.startswith("invalid URL")
    assert caught.value.attempts == 0
    assert caught.value.url == url
    assert fetcher.host_stats() == {}  # no host was ever contacted
    assert fetcher.stats()["failed"] == 1


async def test_hosts_are_host_and_port(serve, open_fetcher) -> None:
    first = await serve({"/": text("one")})
    second = await serve({"/": text("two")})
    fetcher = await open_fetcher()
    assert (await fetcher.fetch(first.url("/"))).body == b"one"
    assert (await fetcher.fetch(second.url("/"))).body == b"two"
    assert (await fetcher.fetch(f"http://localhost:{first.port}/")).body == b"one"
    stats = fetcher.host_stats()
    assert set(stats) == {
        f"127.0.0.1:{first.port}",
        f"127.0.0.1:{second.port}",
        f"localhost:{first.port}",
    }
    for figures in stats.values():
        assert figures["requests"] == 1
        assert figures["errors"] == 0
        assert figures["limit"] == fetcher.options.per_host
        assert figures["mean_latency"] > 0
    assert "3 done" in repr(fetcher)


async def test_fetch_outside_the_context_is_refused() -> None:
    fetcher = Fetcher()
    with pytest.raises(RuntimeError, match="not open"):
        await fetcher.fetch("http://127.0.0.1:1/")


@pytest.mark.skipif(sys.platform != "linux", reason="counts sockets in /proc")
async def test_leaving_the_context_closes_every_connection(serve) -> None:
    server = await serve({"/{n}": text("x")})
    before = open_sockets()
    async with Fetcher(TEST_OPTIONS) as fetcher:
        await asyncio.gather(*(fetcher.fetch(server.url(f"/{i}")) for i in range(8)))
        assert open_sockets() - before  # kept alive for reuse
        client = fetcher._client  # held, so that only closing can free its sockets
    assert client is not None and client.closed
    # The server closes its ends when it sees ours close, a few loop turns later.
    for _ in range(20):
        if not open_sockets() - before:
            break
        await asyncio.sleep(0)
    assert not open_sockets() - before
