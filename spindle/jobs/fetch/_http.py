"""A lean HTTP/1.1 client for GETs: keep-alive connections per origin, parsed by httptools.

Why not aiohttp's ``ClientSession``: fetching is the whole of a fetch worker's work, and
measured on 2 cores against a local nginx (1 KiB, 100 connections), the session spends
about 85 µs of CPU per request, while a protocol that writes one request and feeds the
answer to httptools (the C parser llhttp, Node.js's own) spends under 10. That difference
is the throughput of ``spindle fetch``. This module does what the Fetcher needs and no
more: GET, connection reuse, TLS, a DNS cache, connect and read timeouts, gzip and deflate,
and bodies streamed with back-pressure. Redirects, retries, limits, robots.txt and the
total timeout are the Fetcher's (:mod:`._client`).

One exchange::

    get(url) ─ idle connection of the origin? ─ no ─▶ resolve (cached) ─▶ connect (+TLS)
                 │ yes                                                       │
                 ▼                                                           ▼
               write the request ─▶ parser callbacks fill a Response ◀───────┘
                 │                   (status, headers, body chunks, end)
                 ▼
    caller reads the body (read / chunks) ─▶ release(): whole and keep-alive? back to
                                              the pool; otherwise the connection closes

A reused connection that the server closed while it was idle fails before any byte of
the answer arrives; the request is then sent once more on a new connection (a GET is
idempotent, RFC 9112 section 9.3.1), so a server may see one request more than the
Fetcher counts attempts. Every failure is one of the :class:`HttpError` classes of
:mod:`._transport` (whose ``Transport`` interface :class:`HttpClient` implements), which
the Fetcher turns into a retry or a failure reason.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import httptools
from yarl import URL

from ._transport import (
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    HttpError,
    ReadTimeout,
    TLSFailed,
    TotalTimeout,
    read_chunks,
)

#: Body bytes buffered unread before the connection stops reading (back-pressure).
_HIGH_WATER = 256 * 1024
#: Largest head of an answer (status line and headers); a server sending more is broken
#: or hostile, and would otherwise grow the worker's memory until a timeout.
MAX_HEAD = 64 * 1024
#: Largest decoded piece produced from one compressed chunk (bounds a decompression bomb).
_PIECE = 64 * 1024
#: Seconds an idle connection is kept for reuse (nginx closes them after 75).
_KEEP_ALIVE = 15.0


class _Stale(ConnectionLost):
    """A reused connection closed before its answer began: send again on a new one."""


class Response:
    """The answer to one GET: status and headers at once, the body as it arrives
    (this client's :class:`~._transport.TransportResponse`).

    ``headers`` maps lower-cased names to values; a repeated header's values are
    joined with ``", "``. The body is read with :meth:`read` or :meth:`chunks`, decoded
    when the server compressed it. Call :meth:`release` when done (in a ``finally``).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "complete",
        "headers",
        "reason",
        "status",
        "url",
    )

    def __init__(self, conn: _Connection, url: URL) -> None:
        self._conn = conn
        self.url = url
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.complete = False
        self._error: HttpError | None = None

    async def read(self, max_bytes: int, *, truncate: bool = False) -> bytes | None:
        """The whole decoded body, or ``None`` once it grows past ``max_bytes`` (with
        ``truncate``, its first ``max_bytes`` bytes instead)."""
        if self.complete and "content-encoding" not in self.headers:
            body = self._take()  # whole and not compressed: no chunk loop
            if len(body) > max_bytes:
                return body[:max_bytes] if truncate else None
            return body
        return await read_chunks(self.chunks(), max_bytes, truncate)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The decoded body, piece by piece, as it arrives."""
        decoder = _decoder(self.headers.get("content-encoding"))
        while True:
            if self._chunks:
                data = self._take()
                if decoder is None:
                    yield data
                else:
                    for piece in decoder.feed(data):
                        yield piece
            elif self._error is not None:
                raise self._error
            elif self.complete:
                if decoder is not None:
                    tail = decoder.flush()
                    if tail:
                        yield tail
                return
            else:
                await self._conn.wait()

    def release(self) -> None:
        """Give the connection back for reuse if the answer was read whole, else close it."""
        self._conn.finish(self)

    def _take(self) -> bytes:
        chunks, self._chunks = self._chunks, []
        self._buffered = 0
        self._conn.drained()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Decoder:
    """Inflates a gzip or deflate body in bounded pieces; a bad stream is a BadResponse."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        # gzip: a gzip header; deflate: a zlib header by the RFC, raw in some servers.
        self.inflate = zlib.decompressobj(31 if encoding != "deflate" else 15)
        self.started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The pieces ``data`` inflates to, made one at a time: a reader that stops at
        its size limit stops the inflating too, so a bomb never fills memory."""
        try:
            if not self.started and self.encoding == "deflate":
                self.started = True
                try:
                    probe = zlib.decompressobj(15)
                    probe.decompress(data[:2])
                except zlib.error:
                    self.inflate = zlib.decompressobj(-15)  # raw deflate, no zlib header
            while data:
                piece = self.inflate.decompress(data, _PIECE)
                data = self.inflate.unconsumed_tail
                if piece:
                    yield piece
        except zlib.error as exc:
            raise BadResponse(
                f"bad response: cannot decode the {self.encoding} body: {exc}"
            ) from None

    def flush(self) -> bytes:
        try:
            return self.inflate.flush()
        except zlib.error as exc:
            raise BadResponse(
                f"bad response: cannot decode the {self.encoding} body: {exc}"
            ) from None


def _decoder(encoding: str | None) -> _Decoder | None:
    if encoding is None:
        return None
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Decoder("gzip" if encoding == "x-gzip" else encoding)
    return None  # identity, or a coding not asked for: the body as sent


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time."""

    def __init__(
        self,
        key: tuple[str, str, int],
        loop: asyncio.AbstractEventLoop,
        pool_return: Callable[[_Connection], None],
        total_message: str,
    ) -> None:
        self.key = key
        self.loop = loop
        #: Puts this connection back in its client's pool once an answer is read whole.
        self.pool_return = pool_return
        #: The message of a :class:`TotalTimeout` (the Fetcher names its option in it).
        self.total_message = total_message
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.headers_done = False
        self.informational = False
        self.until_eof = False
        self.keep_alive = False
        self.received = False
        #: Whether the connection served an answer before the current one.
        self.reused = False
        self.head_bytes = 0
        self.paused = False
        self.closed = False
        self.lost: asyncio.Future[None] = loop.create_future()
        self.idle_since = 0.0
        self.read_timeout: float | None = None
        self.deadline: float | None = None

    # -- the exchange ------------------------------------------------------------------

    async def exchange(
        self, request: bytes, url: URL, read_timeout: float | None, deadline: float | None
    ) -> Response:
        """Send the request; return when the status and headers are in."""
        if self.closed or self.transport is None:
            raise _Stale("connection lost: closed by the server while idle")
        response = self.response = Response(self, url)
        self.headers_done = self.informational = self.until_eof = False
        self.received = False
        self.head_bytes = 0
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.transport.write(request)
        try:
            while not self.headers_done:
                await self.wait()
        except BaseException:
            self.abort()  # cancelled or failed mid-answer: the connection cannot be reused
            raise
        return response

    async def wait(self) -> None:
        """Until the parser has something new for the response (or it failed)."""
        response = self.response
        assert response is not None
        if response._error is not None:
            raise response._error
        waiter = self.waiter = self.loop.create_future()
        timer = None
        delay, deadline = self.read_timeout, self.deadline
        if deadline is not None and (delay is None or deadline - self.loop.time() < delay):
            timer = self.loop.call_at(deadline, self._past_deadline, waiter)
        elif delay is not None:
            timer = self.loop.call_later(delay, self._timed_out, waiter, delay)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def finish(self, response: Response) -> None:
        if self.response is not response:
            return
        self.response = None
        if response.complete and response._error is None and self.keep_alive and not self.closed:
            self.idle_since = self.loop.time()
            self.pool_return(self)
        else:
            self.abort()

    def drained(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _timed_out(self, waiter: asyncio.Future[None], seconds: float) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(f"read timeout ({seconds:g} s)"))

    def _past_deadline(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TotalTimeout(self.total_message))

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: HttpError) -> None:
        waiter = self.waiter
        response = self.response
        if response is not None:
            response._error = error
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("bad response: the server switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"bad response: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        response = self.response
        if response is None or response.complete:
            return
        if self.headers_done and self.until_eof and exc is None:
            response.complete = True  # a body without a length ends when the server closes
            self._wake()
        elif not self.received and self.reused:
            self._fail(_Stale("connection lost: closed by the server while idle"))
        else:
            why = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the server"
            self._fail(ConnectionLost(f"connection lost: {why}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        assert self.response is not None
        self.response.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        assert response is not None
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD:
            if not self.closed:
                self._fail(BadResponse(f"bad response: headers over {MAX_HEAD // 1024} KiB"))
                self.abort()
            return
        if self.informational:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = response.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            self.informational = True
            return
        response.status = status
        headers = response.headers
        self.until_eof = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        response = self.response
        assert response is not None
        response._chunks.append(body)
        response._buffered += len(body)
        if response._buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if self.informational:
            self.informational = False
            response.headers.clear()
            return
        self.keep_alive = self.parser.should_keep_alive()
        response.complete = True
        self.reused = True
        self._wake()


class HttpClient:
    """Keep-alive connections to many origins, for GETs only: the Fetcher's default
    :class:`~._transport.Transport`.

    ``max_idle`` bounds the idle connections kept over all origins (the oldest closes
    first), so a crawl of many hosts never runs out of file descriptors.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        connect_timeout: float | None,
        read_timeout: float | None,
        max_idle: int = 100,
        dns_ttl: float = 300.0,
        total_message: str = "timed out",
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: The message of a :class:`TotalTimeout` (the Fetcher names its option in it).
        self.total_message = total_message
        self.max_idle = max_idle
        self.dns_ttl = dns_ttl
        self._fixed = (
            f"User-Agent: {user_agent}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
        ).encode("latin-1", "replace")
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_order: OrderedDict[_Connection, None] = OrderedDict()
        self._live: set[_Connection] = set()
        self._dns: dict[tuple[str, int], tuple[float, asyncio.Task[list[Any]]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.closed = False

    async def get(self, url: URL, deadline: float | None = None) -> Response:
        """Send ``GET url``; return the response once its status and headers are in.

        ``deadline`` (the loop's clock) bounds the whole exchange, reading the body
        included: past it, a wait fails with :class:`TotalTimeout`.
        """
        if self.closed:
            raise RuntimeError("the HTTP client is closed")
        host = url.raw_host or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, host, port)
        request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            url.raw_path_qs.encode("ascii", "surrogateescape"),
            url.host_port_subcomponent.encode("ascii") if url.host_port_subcomponent else b"",
            self._fixed,
        )
        conn = self._take_idle(key)
        while conn is not None:
            try:
                return await conn.exchange(request, url, self.read_timeout, deadline)
            except _Stale:  # closed by the server while idle: try another, then a new one
                conn = self._take_idle(key)
        conn = await self._connect(key, deadline)
        return await conn.exchange(request, url, self.read_timeout, deadline)

    async def aclose(self) -> None:
        """Close every connection and wait until their sockets are closed."""
        self.closed = True
        live, self._live = self._live, set()
        self._idle.clear()
        self._idle_order.clear()
        for conn in live:
            conn.close()
        waits = [conn.lost for conn in live if conn.transport is not None]
        if waits:
            await asyncio.wait(waits, timeout=2.0)
        for _, task in self._dns.values():
            task.cancel()
        self._dns.clear()

    # -- the pool -----------------------------------------------------------------------

    def _take_idle(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = None
        while idle:
            conn = idle.pop()
            del self._idle_order[conn]
            if conn.closed:
                continue
            now = now or conn.loop.time()
            if now - conn.idle_since > _KEEP_ALIVE:
                conn.close()
                continue
            return conn
        return None

    def _put_back(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        self._idle.setdefault(conn.key, []).append(conn)
        self._idle_order[conn] = None
        while len(self._idle_order) > self.max_idle:
            oldest, _ = self._idle_order.popitem(last=False)
            self._idle[oldest.key].remove(oldest)
            oldest.close()

    def _forgetter(self, conn: _Connection) -> Any:
        return lambda _: self._live.discard(conn)

    async def _connect(self, key: tuple[str, str, int], deadline: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = self._tls() if scheme == "https" else None
        last: OSError | None = None
        limit = None if self.connect_timeout is None else loop.time() + self.connect_timeout
        total = deadline is not None and (limit is None or deadline < limit)
        try:
            async with asyncio.timeout_at(deadline if total else limit):
                for family, address in await self._resolve(host, port):
                    conn = _Connection(key, loop, self._put_back, self.total_message)
                    try:
                        await loop.create_connection(
                            _factory(conn),
                            host=address[0],
                            port=address[1],
                            family=family,
                            ssl=context,
                            server_hostname=host if context is not None else None,
                        )
                    except ssl.SSLError as exc:
                        raise TLSFailed(f"TLS error: {exc}") from exc
                    except OSError as exc:
                        last = exc
                        continue
                    if self.closed:  # closed while this connection was being made
                        conn.close()
                        raise ConnectionLost("connection lost: the client was closed")
                    self._live.add(conn)
                    conn.lost.add_done_callback(self._forgetter(conn))
                    return conn
        except TimeoutError:
            if total:
                raise TotalTimeout(self.total_message) from None
            raise ConnectTimeout(f"connect timeout ({self.connect_timeout:g} s)") from None
        if isinstance(last, ConnectionRefusedError):
            raise ConnectFailed("cannot connect: connection refused", last)
        raise ConnectFailed(f"cannot connect: {last}", last)

    async def _resolve(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        """Addresses of ``host``, looked up once per ``dns_ttl`` seconds."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is None or cached[0] < now or _failed(cached[1]):
            task = loop.create_task(self._lookup(host, port))
            cached = self._dns[(host, port)] = (now + self.dns_ttl, task)
        try:
            return await asyncio.shield(cached[1])
        except OSError as exc:
            raise ConnectFailed(f"cannot connect: cannot resolve {host}: {exc}", exc) from None

    async def _lookup(self, host: str, port: int) -> list[Any]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return [(family, address) for family, _, _, _, address in infos]

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


def _factory(conn: _Connection) -> Any:
    return lambda: conn


def _failed(task: asyncio.Task[Any]) -> bool:
    """A lookup that ended without addresses: look again rather than cache the failure."""
    return task.done() and (task.cancelled() or task.exception() is not None)
