"""Open the source or the sink a URL names (see :mod:`._urls` for the URLs)."""

from __future__ import annotations

from ._base import AckSource, Sink
from ._postgres import PostgresSink
from ._redis import RedisStreamSink, RedisStreamSource
from ._urls import parse

__all__ = ["open_sink", "open_source"]


def open_source(
    url: str, *, fmt: str = "jsonl", key: str | None = None, drain: bool = False
) -> AckSource:
    """The acknowledging source ``url`` names. ``fmt``: each message's body as JSON
    (``"jsonl"``) or text; ``key``: the field of the body that keys its record (default:
    the message's id); ``drain``: end once the source is empty.

    Raises :class:`~spindle.ConfigError` for a URL that lacks a parameter or names a
    client that is not installed, :class:`~spindle.connectors.InputError` for a server
    that cannot be reached (each a one-line message naming the URL without its password).
    """
    endpoint = parse(url, "source")
    return RedisStreamSource.open(endpoint, fmt=fmt, key=key, drain=drain)


def open_sink(url: str, *, key: str | None = None) -> Sink:
    """The sink ``url`` names. ``key``: the field of a plain item (a line of a file) that
    keys its record (default: a digest of its content); a message brings its own key.

    Raises as :func:`open_source` does, with :class:`~spindle.connectors.OutputError`
    for a server that cannot be reached or a table that does not fit.
    """
    endpoint = parse(url, "sink")
    if endpoint.kind == "postgres":
        return PostgresSink.open(endpoint, key=key)
    return RedisStreamSink.open(endpoint, key=key)
