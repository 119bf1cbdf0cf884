"""The HTTP/1.1 exchange under the Fetcher: reuse, compression, framing, TLS, broken peers.

Each server here is a bare TCP (or TLS) server writing exact bytes, so the client meets
the answers real servers send and aiohttp's server would not: a body that ends when the
connection closes, an idle connection closed just as a request arrives, a 100 Continue,
a raw deflate stream, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import zlib
from collections.abc import Awaitable, Callable
from unittest.mock import patch

import pytest
import trustme
from aiohttp import web

from spindle.jobs.fetch import FetchFailed
from spindle.jobs.fetch import _http as http

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(20)]

Connect = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(body: bytes, *, heads: list[bytes] | None = None, extra: bytes = b"") -> Connect:
    """Answer every request on a connection with ``body`` (keep-alive)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            if heads is not None:
                heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra))
            writer.write(body)
            await writer.drain()

    return on_connect


async def test_request_head_and_connection_reuse(raw_serve, open_fetcher) -> None:
    heads: list[bytes] = []
    server = await raw_serve(answer(b"hello", heads=heads))
    fetcher = await open_fetcher(user_agent="probe/1.0")
    for i in range(10):
        result = await fetcher.fetch(server.url(f"/a b/{i}?q=é"))
        assert (result.status, result.body.decode(), result.attempts) == (200, "hello", 1)
    assert server.connections == 1  # one keep-alive connection served all ten
    lines = heads[3].decode("latin-1").split("\r\n")
    assert lines[0] == "GET /a%20b/3?q=%C3%A9 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "User-Agent: probe/1.0" in lines
    assert "Accept-Encoding: gzip, deflate" in lines


async def test_an_idle_connection_closed_by_the_server_is_replaced_once(
    raw_serve, open_fetcher
) -> None:
    """The server answers once, then hangs up on the next request without a byte: the
    request goes again on a new connection and the attempt still counts once."""

    async def once_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: hang up unanswered

    server = await raw_serve(once_per_connection)
    fetcher = await open_fetcher()
    first = await fetcher.fetch(server.url("/1"))
    second = await fetcher.fetch(server.url("/2"))
    assert (first.body, second.body) == (b"ok", b"ok")
    assert second.attempts == 1
    assert server.connections == 2


async def test_a_new_connection_closed_unanswered_is_a_retried_connection_error(
    raw_serve, open_fetcher
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await raw_serve(hang_up)
    fetcher = await open_fetcher(retries=1)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason == "connection lost: closed by the server (after 2 attempts)"
    assert server.connections == 2


async def test_a_body_without_length_ends_when_the_server_closes(raw_serve, open_fetcher) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in (b"no ", b"length ", b"given"):
            writer.write(part)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await raw_serve(until_close)
    fetcher = await open_fetcher()
    for path in ("/1", "/2"):  # the closed connection is not reused
        assert (await fetcher.fetch(server.url(path))).body.decode() == "no length given"
    assert server.connections == 2


async def test_informational_answers_are_skipped(raw_serve, open_fetcher) -> None:
    async def continue_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
        )
        await writer.drain()
        await reader.read()

    server = await raw_serve(continue_first)
    result = await (await open_fetcher()).fetch(server.url("/"))
    assert (result.status, result.body.decode()) == (201, "done")
    assert "x-early" not in result.headers


async def test_garbage_is_a_bad_response_not_retried(raw_serve, open_fetcher) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SPAM 42 not http\r\n\r\n")
        await writer.drain()
        await reader.read()

    server = await raw_serve(garbage)
    fetcher = await open_fetcher(retries=3)
    with pytest.raises(FetchFailed) as caught:
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason.startswith("bad response: ")
    assert caught.value.attempts == 1
    assert server.connections == 1


async def test_endless_headers_are_a_bad_response(raw_serve, open_fetcher) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(100_000):  # 3 MB of headers, never ending them
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 20))
            if i % 1000 == 0:
                await writer.drain()

    server = await raw_serve(endless)
    with pytest.raises(FetchFailed) as caught:
        await (await open_fetcher(retries=0)).fetch(server.url("/"))
    assert caught.value.reason == "bad response: headers over 64 KiB"


def encoded(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    raw = zlib.compressobj(wbits=-15)  # "deflate" as some servers send it: no zlib header
    return raw.compress(data) + raw.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_compressed_bodies_are_decoded(serve, open_fetcher, coding: str) -> None:
    data = "".join(f"line {i}\n" for i in range(20_000)).encode()
    header = "deflate" if coding == "raw deflate" else coding

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=encoded(data, coding), headers={"Content-Encoding": header})

    server = await serve({"/": handler})
    result = await (await open_fetcher()).fetch(server.url("/"))
    assert result.body == data
    assert result.headers["content-encoding"] == header


async def test_a_compressed_body_is_limited_after_decoding(serve, open_fetcher) -> None:
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))  # 20 KiB on the wire, 20 MiB inflated
    inflated = 0
    real_decompressobj = zlib.decompressobj

    class Counting:
        """A decompressor that counts what it has inflated, whoever keeps it."""

        def __init__(self, wbits: int) -> None:
            self.inner = real_decompressobj(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            nonlocal inflated
            piece = self.inner.decompress(data, max_length)
            inflated += len(piece)
            return piece

        @property
        def unconsumed_tail(self) -> bytes:
            return self.inner.unconsumed_tail

        def flush(self) -> bytes:
            return self.inner.flush()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    server = await serve({"/": handler})
    fetcher = await open_fetcher(max_bytes=1024 * 1024)
    with pytest.raises(FetchFailed) as caught, patch.object(http.zlib, "decompressobj", Counting):
        await fetcher.fetch(server.url("/"))
    assert caught.value.reason == "too large: more than max_bytes 1048576 bytes"
    assert inflated <= 1024 * 1024 + 64 * 1024  # stopped one piece past the limit


async def test_a_corrupt_gzip_body_is_a_bad_response(serve, open_fetcher) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x1f\x8b this is not gzip", headers={"Content-Encoding": "gzip"})

    server = await serve({"/": handler})
    with pytest.raises(FetchFailed) as caught:
        await (await open_fetcher()).fetch(server.url("/"))
    assert caught.value.reason.startswith("bad response: cannot decode the gzip body")


async def test_chunked_bodies_are_joined(serve, open_fetcher) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(50):
            await response.write(b"%d," % i)
        await response.write_eof()
        return response

    server = await serve({"/": handler})
    result = await (await open_fetcher()).fetch(server.url("/"))
    assert result.body.decode() == "".join(f"{i}," for i in range(50))


async def test_idle_connections_are_capped_over_all_hosts(raw_serve, open_fetcher) -> None:
    """With concurrency 2, four hosts fetched in turn keep at most two idle connections:
    the servers see the oldest two closed."""
    open_now = 0
    closed = asyncio.Event()

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            await answer(b"x")(reader, writer)
        finally:
            open_now -= 1
            closed.set()

    servers = [await raw_serve(counted) for _ in range(4)]
    fetcher = await open_fetcher(concurrency=2)
    for server in servers:
        await fetcher.fetch(server.url("/"))
    async with asyncio.timeout(5):
        while open_now > 2:
            closed.clear()
            await closed.wait()
    assert open_now == 2
    # The two most recent hosts still reuse their connections.
    await fetcher.fetch(servers[3].url("/again"))
    assert servers[3].connections == 1


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


async def serve_tls(ca: trustme.CA, no_leaks: None) -> tuple[asyncio.Server, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = await asyncio.start_server(answer(b"secret"), "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_https_with_a_trusted_certificate(
    tls_ca, no_leaks, open_fetcher, tmp_path, monkeypatch
) -> None:
    bundle = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # read when the TLS context is made
    server, port = await serve_tls(tls_ca, no_leaks)
    try:
        fetcher = await open_fetcher()
        result = await fetcher.fetch(f"https://127.0.0.1:{port}/")
        assert (result.status, result.body.decode()) == (200, "secret")
        await fetcher.aclose()
    finally:
        server.close()
        await server.wait_closed()


async def test_https_with_an_untrusted_certificate_fails_without_retrying(
    tls_ca, no_leaks, open_fetcher
) -> None:
    server, port = await serve_tls(tls_ca, no_leaks)
    try:
        fetcher = await open_fetcher(retries=3)
        with pytest.raises(FetchFailed) as caught:
            await fetcher.fetch(f"https://127.0.0.1:{port}/")
        assert caught.value.reason.startswith("TLS error: ")
        assert "CERTIFICATE_VERIFY_FAILED" in caught.value.reason
        assert caught.value.attempts == 1
        await fetcher.aclose()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_body_that_trickles_past_the_total_timeout_fails(raw_serve, open_fetcher) -> None:
    """Each byte comes within the read timeout, the whole answer does not: the total
    deadline ends the attempt, with the option named in the reason."""
    stop = asyncio.Event()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not stop.is_set():
            writer.write(b"x")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    server = await raw_serve(trickle)
    fetcher = await open_fetcher(read_timeout=1.0, total_timeout=0.4, retries=0)
    try:
        with pytest.raises(FetchFailed) as caught:
            await fetcher.fetch(server.url("/"))
    finally:
        stop.set()
    assert caught.value.reason == "timed out (total_timeout 0.4 s) (after 1 attempts)"


async def test_a_host_is_looked_up_once_for_many_connections(
    raw_serve, open_fetcher, monkeypatch
) -> None:
    lookups: list[str] = []
    real_lookup = http.HttpClient._lookup

    async def counted(self: http.HttpClient, host: str, port: int) -> list[object]:
        lookups.append(host)
        return await real_lookup(self, host, port)

    monkeypatch.setattr(http.HttpClient, "_lookup", counted)
    server = await raw_serve(answer(b"ok"))
    fetcher = await open_fetcher()
    urls = [f"http://localhost:{server.port}/{i}" for i in range(20)]
    results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
    assert all(r.body == b"ok" for r in results)
    assert server.connections > 1  # several connections were made at once...
    assert lookups == ["localhost"]  # ...from one lookup
