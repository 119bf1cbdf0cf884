"""Open the source or the sink a URL names (see :mod:`._urls` for the URLs)."""

from __future__ import annotations

from ._base import Sink, Source
from ._nats import NatsSink, NatsSource
from ._postgres import PostgresSink
from ._postgres_source import open_postgres_source
from ._rabbitmq import RabbitSink, RabbitSource
from ._redis import RedisStreamSink, RedisStreamSource
from ._urls import parse

__all__ = ["acknowledges", "open_sink", "open_source"]


def open_source(
    url: str, *, fmt: str = "jsonl", key: str | None = None, drain: bool = False
) -> Source:
    """The source ``url`` names: an :class:`~spindle.connectors.AckSource` for a broker or
    a queue table, a plain :class:`~spindle.connectors.Source` for a query (see
    :func:`acknowledges`). ``fmt``: each message's body as JSON (``"jsonl"``) or text;
    ``key``: the field of the body that keys its record (default: the message's id);
    ``drain``: end once the source is empty.

    Raises :class:`~spindle.ConfigError` for a URL that lacks a parameter or names a
    client that is not installed, :class:`~spindle.connectors.InputError` for a server
    that cannot be reached (each a one-line message naming the URL without its password).
    """
    endpoint = parse(url, "source")
    if endpoint.kind == "postgres":
        return open_postgres_source(endpoint, fmt=fmt, key=key, drain=drain)
    if endpoint.kind == "rabbitmq":
        return RabbitSource.open(endpoint, fmt=fmt, key=key, drain=drain)
    if endpoint.kind == "nats":
        return NatsSource.open(endpoint, fmt=fmt, key=key, drain=drain)
    return RedisStreamSource.open(endpoint, fmt=fmt, key=key, drain=drain)


def acknowledges(url: str) -> bool:
    """Whether the source ``url`` names acknowledges its messages (a broker's stream or
    queue, a queue table: read by a :class:`~spindle.connectors.StreamRun`), rather than
    giving its items once, in order (a query: a plain source, which a journal resumes).
    Decided from the URL alone, before any connection."""
    endpoint = parse(url, "source")
    return not (endpoint.kind == "postgres" and "table" not in endpoint.params)


def open_sink(url: str, *, key: str | None = None) -> Sink:
    """The sink ``url`` names. ``key``: the field of a plain item (a line of a file) that
    keys its record (default: a digest of its content); a message brings its own key.

    Raises as :func:`open_source` does, with :class:`~spindle.connectors.OutputError`
    for a server that cannot be reached or a table that does not fit.
    """
    endpoint = parse(url, "sink")
    if endpoint.kind == "postgres":
        return PostgresSink.open(endpoint, key=key)
    if endpoint.kind == "rabbitmq":
        return RabbitSink.open(endpoint, key=key)
    if endpoint.kind == "nats":
        return NatsSink.open(endpoint, key=key)
    return RedisStreamSink.open(endpoint, key=key)
