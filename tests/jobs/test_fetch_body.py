"""Body limits, saving to files, and redirects."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc

import pytest
from aiohttp import web

from spindle.jobs.fetch import FetchFailed

from ._http import Server, redirect, text

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

HUGE = 256 * 2**20  # what the server offers; far more than socket buffers hold
CHUNK = 64 * 1024


class Firehose:
    """A handler offering a huge body, recording how much of it could be sent."""

    def __init__(self, *, declare_length: bool) -> None:
        self.declare_length = declare_length
        self.sent = 0
        self.stopped = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if self.declare_length:
            response.content_length = HUGE
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"\0" * CHUNK
        try:
            while self.sent < HUGE:
                await response.write(block)
                self.sent += len(block)
        except ConnectionError:
            pass  # the client hung up, as it should
        finally:
            self.stopped.set()
        return response


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_too_large_body_is_refused_without_reading_it(
    serve, open_fetcher, declare_length: bool
) -> None:
    firehose = Firehose(declare_length=declare_length)
    server = await serve({"/big": firehose.handle})
    fetcher = await open_fetcher(max_bytes=2**20)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/big"))
    assert caught.value.reason.startswith("too large")
    assert caught.value.attempts == 1  # not retried
    await asyncio.wait_for(firehose.stopped.wait(), 10)
    assert firehose.sent < HUGE // 4
    if declare_length:
        assert "Content-Length" in caught.value.reason


async def test_body_at_the_limit_is_accepted(serve, open_fetcher) -> None:
    server = await serve({"/": text("x" * 100)})
    fetcher = await open_fetcher(max_bytes=100)
    assert len((await fetcher.fetch(server.url("/"))).body or b"") == 100


async def test_large_file_is_streamed_to_save_dir(serve, open_fetcher, tmp_path) -> None:
    payload = hashlib.sha256(b"seed").digest() * (16 * 2**20 // 32)  # 16 MiB
    chunks_sent = 0

    async def download(request: web.Request) -> web.StreamResponse:
        nonlocal chunks_sent
        response = web.StreamResponse(headers={"Content-Type": "application/zip"})
        response.content_length = len(payload)
        await response.prepare(request)
        view = memoryview(payload)
        for start in range(0, len(payload), CHUNK):
            await response.write(view[start : start + CHUNK])
            chunks_sent += 1
        return response

    server = await serve({"/file": download})
    fetcher = await open_fetcher(save_dir=str(tmp_path / "out"), max_bytes=32 * 2**20)
    url = server.url("/file")
    tracemalloc.start()
    try:
        result = await fetcher.fetch(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks_sent == len(payload) // CHUNK
    assert result.body is None
    assert result.size == len(payload)
    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    expected = tmp_path / "out" / (hashlib.sha256(url.encode()).hexdigest() + ".zip")
    assert result.path == str(expected)
    assert expected.read_bytes() == payload
    assert os.listdir(tmp_path / "out") == [expected.name]  # no temporary file left
    # aiohttp buffers up to about a megabyte ahead of the disk; never the whole body.
    assert peak < len(payload) // 4, f"peak {peak} bytes while saving {len(payload)}"
    record = result.to_record()
    assert (record["path"], record["size"], record["sha256"]) == (
        result.path,
        result.size,
        result.sha256,
    )
    assert "text" not in record and "body_base64" not in record
    assert result.response().body == payload  # read from the file on demand


async def test_save_dir_too_large_leaves_no_file(serve, open_fetcher, tmp_path) -> None:
    firehose = Firehose(declare_length=False)
    server = await serve({"/big": firehose.handle})
    fetcher = await open_fetcher(save_dir=str(tmp_path), max_bytes=2**20)
    with pytest.raises(FetchFailed, match="too large"):
        await fetcher.fetch(server.url("/big"))
    assert os.listdir(tmp_path) == []


async def test_redirect_chain_records_the_final_url(serve, open_fetcher) -> None:
    other: Server = await serve({"/end": text("arrived")})
    server = await serve(
        {
            "/start": redirect("/middle", 302),
            "/middle": redirect(other.url("/end"), 301),
        }
    )
    fetcher = await open_fetcher()
    result = await fetcher.fetch(server.url("/start"))
    assert (result.status, result.body) == (200, b"arrived")
    assert result.url == server.url("/start")
    assert result.final_url == other.url("/end")
    assert [server.count("/start"), server.count("/middle"), other.count("/end")] == [1, 1, 1]


async def test_redirect_loop_fails(serve, open_fetcher) -> None:
    server = await serve({"/a": redirect("/b"), "/b": redirect("/a")})
    fetcher = await open_fetcher()
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/a"))
    assert caught.value.reason.startswith("redirect loop: ")
    assert caught.value.reason.endswith(f"{server.url('/b')} -> {server.url('/a')}")
    assert server.count() == 2


async def test_too_many_redirects_fail(serve, open_fetcher) -> None:
    async def onwards(request: web.Request) -> web.StreamResponse:
        step = int(request.match_info["n"])
        return web.Response(status=302, headers={"Location": f"/r/{step + 1}"})

    server = await serve({"/r/{n}": onwards})
    fetcher = await open_fetcher(max_redirects=3)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/r/0"))
    assert caught.value.reason == "too many redirects (more than max_redirects 3)"
    assert server.count() == 4


async def test_redirect_to_another_scheme_fails(serve, open_fetcher) -> None:
    server = await serve({"/": redirect("ftp://example.com/file")})
    fetcher = await open_fetcher()
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason.startswith("invalid redirect target")
