"""Brokers and databases named by URL: which connector, with which parameters.

::

    redis://HOST:PORT/DB?stream=NAME&group=NAME[&consumer=NAME&claim_idle=S&reconnect=S]  a source
    redis://HOST:PORT/DB?stream=NAME[&maxlen=N&reconnect=S]                     a sink
    postgresql://HOST:PORT/DB?table=NAME                                        a sink
    postgresql://HOST:PORT/DB?query=SQL&key=COLUMN[&page=N]                     a source
    postgresql://HOST:PORT/DB?table=NAME[&consumer=NAME&lease=S]                a source
    amqp://USER:PASS@HOST:PORT/VHOST?queue=NAME (or amqps://)                   a source, a sink
    nats://HOST:PORT?stream=NAME&durable=NAME[&subject=S&ack_wait=S&max_deliver=N]  a source
    nats://HOST:PORT?subject=NAME[&stream=NAME]                                 a sink

spindle's own parameters are taken out of the query; the rest of the URL (host, port,
database, user, password, the client's own parameters) goes to the client as it is.
Messages name a URL without its password (:func:`redact`). The clients are optional
extras, imported only when a URL asks for one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import ConfigError

__all__ = ["Endpoint", "is_url", "parse", "redact"]

#: The schemes of the brokers and databases spindle reads or writes.
SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "postgresql": "postgres",
    "postgres": "postgres",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
}

#: spindle's parameters in each kind's URLs, by role.
PARAMETERS = {
    ("redis", "source"): ("stream", "group", "consumer", "claim_idle", "reconnect"),
    ("redis", "sink"): ("stream", "maxlen", "reconnect"),
    ("postgres", "sink"): ("table",),
    ("postgres", "source"): ("query", "key", "page", "table", "consumer", "lease"),
    ("rabbitmq", "source"): ("queue",),
    ("rabbitmq", "sink"): ("queue",),
    ("nats", "source"): ("stream", "subject", "durable", "ack_wait", "max_deliver"),
    ("nats", "sink"): ("stream", "subject"),
}


def is_url(text: str) -> bool:
    """Whether ``text`` names a broker or a database rather than a file."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def redact(url: str) -> str:
    """``url`` without its password, for messages and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Endpoint:
    """A broker's or database's URL taken apart: ``kind`` ("redis", "postgres"),
    ``client_url`` (for the client: spindle's parameters removed), ``params`` (those),
    ``name`` (the whole URL without its password)."""

    kind: str
    client_url: str
    params: Mapping[str, str]
    name: str

    def need(self, param: str, what: str) -> str:
        """The value of ``param``; a one-line error naming it when it is missing."""
        value = self.params.get(param)
        if not value:
            sep = "&" if "?" in self.name else "?"
            raise ConfigError(f"{self.name}: {what}: add {sep}{param}=NAME to the URL")
        return value

    def number(self, param: str, default: float | None) -> float | None:
        value = self.params.get(param)
        if value is None or value == "":
            return default
        if value.lower() in ("off", "none", "no"):
            return None
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{self.name}: {param}={value!r} is not a number") from None
        if number < 0:
            raise ConfigError(f"{self.name}: {param}={value!r} must not be negative")
        return number


def parse(url: str, role: str) -> Endpoint:
    """Take ``url`` apart for use as a ``role`` ("source" or "sink")."""
    parts = urlsplit(url)
    kind = SCHEMES.get(parts.scheme.lower())
    name = redact(url)
    if kind is None:
        raise ConfigError(f"{name}: not a URL spindle reads or writes")
    ours = PARAMETERS.get((kind, role))
    if ours is None:
        other = "an output (-o)" if role == "source" else "an input"
        raise ConfigError(f"{name}: {kind} is not supported as {role} yet; it can be {other}")
    params: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ours:
            params[key] = value
        else:
            rest.append((key, value))
    client_url = urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)
    )
    return Endpoint(kind, client_url, params, name)
