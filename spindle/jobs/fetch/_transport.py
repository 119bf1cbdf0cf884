"""What the Fetcher needs from whatever carries its requests, and how that can fail.

The Fetcher decides everything around a request (redirects, retries, limits, spacing,
robots.txt, the breaker); a transport only sends one GET and hands the answer back.
That split is what lets the Fetcher's decisions be tested without a socket: the same
Fetcher runs on either of::

    Transport ─┬─ HttpClient (._http)           HTTP/1.1 on sockets, parsed by httptools
               └─ ScriptedTransport (._fake)    answers scripted per URL, on a clock

All the Fetcher uses::

    await transport.get(url, deadline) ─▶ response: status, reason, headers, url
                                           await read(max_bytes) or async for chunks()
                                           release()          (always, in a finally)
    await transport.aclose()

A request that gets no usable answer raises one of the :class:`HttpError` classes
below; the Fetcher retries connection errors and timeouts, and fails at once on a TLS
error or a malformed answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from yarl import URL


class HttpError(Exception):
    """A request got no usable answer; the message says why."""


class ConnectFailed(HttpError):
    """No connection could be made (refused, unreachable, unknown host)."""

    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectTimeout(HttpError):
    """Resolving, connecting and the TLS handshake took longer than the connect timeout."""


class ReadTimeout(HttpError):
    """The server said nothing for longer than the read timeout."""


class TotalTimeout(HttpError):
    """The exchange, from connecting to the last byte, passed its deadline."""


class ConnectionLost(HttpError):
    """The connection closed or was reset before the answer was whole."""


class BadResponse(HttpError):
    """The answer is not HTTP/1.x, or its body cannot be decoded."""


class TLSFailed(HttpError):
    """The TLS handshake failed (certificate, protocol)."""


class TransportResponse(Protocol):
    """The answer to one GET: status and headers at once, the body as it arrives.

    ``headers`` maps lower-cased names to values (a repeated header's values joined
    with ``", "``); ``url`` is the URL that was requested. The body is decoded (a
    compressed body is inflated). :meth:`release` gives the connection back, or
    drops it if the body was not read whole; the Fetcher calls it for every response.
    """

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def url(self) -> URL: ...

    async def read(self, max_bytes: int, *, truncate: bool = False) -> bytes | None:
        """The whole body, or ``None`` once it grows past ``max_bytes`` (with
        ``truncate``, its first ``max_bytes`` bytes instead)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece, as it arrives."""
        ...

    def release(self) -> None: ...


class Transport(Protocol):
    """Sends GETs; the Fetcher owns it and closes it when the Fetcher closes."""

    async def get(self, url: URL, deadline: float | None = None) -> TransportResponse:
        """Send ``GET url``; return once the status and headers are in.

        ``deadline`` bounds the whole exchange, reading the body included: past it, a
        wait fails with :class:`TotalTimeout`. It is an instant on the clock the
        transport shares with its Fetcher (the event loop's, for ``HttpClient``), not
        a number of seconds: the Fetcher has just read that clock, and reading it again
        here would add a clock call to every request.
        """
        ...

    async def aclose(self) -> None:
        """Close every connection; return once they are closed."""
        ...


async def read_chunks(chunks: AsyncIterator[bytes], max_bytes: int, truncate: bool) -> bytes | None:
    """:meth:`TransportResponse.read` made of its ``chunks()``: they are joined until
    the body is whole or has grown past ``max_bytes``, so an oversized body is never
    read beyond one chunk more than the limit."""
    parts: list[bytes] = []
    size = 0
    async for piece in chunks:
        parts.append(piece)
        size += len(piece)
        if size > max_bytes:
            break
    body = b"".join(parts)
    if len(body) > max_bytes:
        return body[:max_bytes] if truncate else None
    return body


def content_length(headers: dict[str, str]) -> int | None:
    """The body length an answer declares, if it declares a valid one."""
    value = headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)
