"""URL checks done before any I/O, and the identity of a host."""

from __future__ import annotations

from yarl import URL

SCHEMES = frozenset({"http", "https"})


class BadURL(ValueError):
    """A URL spindle will not request; the message is the reason's tail."""


def parse_url(text: str) -> URL:
    """Parse and check an absolute http(s) URL, so bad input fails before any I/O."""
    if not isinstance(text, str):
        raise BadURL(f"expected a string, got {type(text).__name__}")
    try:
        url = URL(text)
        host = url.raw_host
        port = url.port
    except (ValueError, TypeError) as exc:
        raise BadURL(f"{text!r} ({exc})") from exc
    if url.scheme not in SCHEMES:
        what = f"scheme {url.scheme!r}" if url.scheme else "no scheme"
        raise BadURL(f"{text!r} ({what}; only http and https are fetched)")
    if not host:
        raise BadURL(f"{text!r} (no host)")
    if port is None:
        raise BadURL(f"{text!r} (no port)")
    return url


def host_key(url: URL) -> str:
    """``host:port``: the unit of politeness, robots.txt, limits and the breaker.

    The port is always written, so ``http://a`` and ``https://a`` are two hosts,
    as they are for robots.txt.
    """
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.port}"
