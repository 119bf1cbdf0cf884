"""Redis Streams: a consumer group as a source, XADD as a sink (``pip install 'spindle[redis]'``).

The source reads as one consumer of a group (created if missing, with MKSTREAM, from the
start of the stream)::

    read():  1. its own pending entries first    XREADGROUP ... STREAMS s <after>
                (a crash left them)              from 0, until it gives nothing
             2. others' entries, idle too long   XAUTOCLAIM s g me claim_idle <cursor>
                (every claim_idle/2 s)           its own entries in flight skipped
             3. new entries                      XREADGROUP ... BLOCK wait STREAMS s >
    ack():   XACK s g id id ...                  once durable, one call per commit

The consumer's name is stable by default (the host's name), so the same command run again
on the same host after a crash reads its own pending entries first. With ``drain`` the
source ends once its own pending entries are read, nothing is left to claim and nothing
new comes. Entries deleted from the stream while pending (XDEL, trimming) are
acknowledged and skipped: there is nothing to run.

Threads: ``read`` runs in the run's source thread, ``ack`` in the thread that writes the
sink. redis-py's client takes a connection from its pool per command, so the two never
share a socket; the set of entries in flight (which a claim must not take back) is kept
under a lock.

Client: redis-py's synchronous client. Both callers are plain threads, and measured here
(2-core VM, Redis 7.0, hiredis) the synchronous client read and acknowledged 200,000
entries in batches of 1,000 at 283,000 to 375,000 entries/s, the asyncio one at 308,000 to
358,000/s: the same, and an event loop of its own would have cost a thread. Without
hiredis both were 2.5 to 6 times slower (45,000 to 122,000/s).

Body: the entry's ``data`` field, as JSON (``jsonl``) or text; an entry without one gives
its whole field map as a dict of strings. A body that is not valid JSON (or UTF-8) fails
alone (``MalformedInput``), acknowledged once its failure record is durable.

The sink adds each result as an entry ``{key, data}`` (``data``: the result as JSON, what
a next ``spindle map`` reading this stream gets) and each failure to ``<stream>:failures``
(``key``, ``input``, ``error``, ``message``, ``traceback``, ``attempts``), a chunk in one
MULTI/EXEC pipeline, with ``MAXLEN ~ maxlen`` when given. XADD cannot tell a repeat: after
a crash between the sink's write and the source's acknowledgement a record can be added
twice, with the same ``key`` (at least once).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from .._errors import ConfigError
from .._failure import Failure
from ._base import AckSource, Message, Sink
from ._errors import InputError, OutputError
from ._json import JSON_OPTIONS, json_default
from ._keys import KeyFunction, MissingKey, content_key, field_key, keyed
from ._urls import Endpoint

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStreamSink", "RedisStreamSource", "connect_redis", "default_consumer"]

#: Seconds a command may take before the client gives up (a blocking read waits less).
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: Entry ids per XACK command, at most.
ACK_BATCH = 10_000
#: Seconds between two refreshes of the group's lag.
LAG_EVERY = 1.0
#: Default seconds another consumer's entry must have been pending before it is claimed.
CLAIM_IDLE = 60.0
_DATA = b"data"


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "Redis streams need the redis client: pip install 'spindle[redis]'"
        ) from None
    return redis


def connect_redis(endpoint: Endpoint, role: type[InputError] | type[OutputError]) -> redis.Redis:
    """A client for ``endpoint``, checked with a PING: an unreachable server is a
    one-line ``role`` error naming the URL (without its password)."""
    module = _redis_module()
    try:
        client: redis.Redis = module.Redis.from_url(
            endpoint.client_url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            decode_responses=False,
        )
    except ValueError as exc:
        raise ConfigError(f"{endpoint.name}: {exc}") from None
    try:
        client.ping()
    except module.RedisError as exc:
        client.close()
        raise role(f"cannot connect to {endpoint.name}: {_reason(exc)}") from None
    except TypeError as exc:  # a query parameter the client does not know
        client.close()
        raise ConfigError(f"{endpoint.name}: {_reason(exc)}") from None
    return client


def default_consumer() -> str:
    """The consumer's name when none is given: the host's, the same at every run."""
    return socket.gethostname() or "spindle"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisStreamSource(AckSource):
    """One consumer of a consumer group of a Redis stream (see the module docstring).

    ``fmt``: ``"jsonl"`` (the ``data`` field parsed as JSON) or ``"text"``. ``key``: the
    field of the body that keys each record in a keyed sink (default: the entry's id).
    ``claim_idle``: seconds after which another consumer's pending entry is taken over
    (None: never).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str | None = None,
        claim_idle: float | None = CLAIM_IDLE,
        fmt: str = "jsonl",
        key: str | None = None,
        drain: bool = False,
        name: str = "",
    ) -> None:
        self._redis = _redis_module()
        self.client = client
        # Reads through a client of the same pool that leaves XREADGROUP's reply as the
        # server sent it: redis-py's parsing into a dict per entry cost 1.3 to 1.7 µs an
        # entry here, a third of reading it.
        self._reader = self._redis.Redis(connection_pool=client.connection_pool)
        self._reader.set_response_callback("XREADGROUP", _as_sent)
        self.stream = stream
        self.group = group
        self.consumer = consumer or default_consumer()
        self.claim_idle = claim_idle
        self.fmt = fmt
        self.drain = drain
        self.name = name or f"redis stream {stream!r}, group {group!r}"
        self._key: KeyFunction | None = (
            None if key is None else field_key(key, without="messages by their id")
        )
        self._json = fmt == "jsonl"
        self._pending_after: bytes | None = b"0"  # own pending entries first
        self._claim_cursor: Any = b"0-0"
        self._next_claim = 0.0
        self._inflight: set[bytes] = set()
        #: Entries acknowledged while a claim was on its way: the claim may have taken
        #: them (they were still pending on the server) after they left ``_inflight``.
        self._acked_while_claiming: set[bytes] | None = None
        self._lock = threading.Lock()
        self._lag: int | None = None
        self._group_pending: int | None = None
        self._lag_at = 0.0
        #: Entries taken over from other consumers, and pending entries found deleted.
        self.claimed = 0
        self.deleted = 0
        self._create_group()
        self._refresh_lag()

    @classmethod
    def open(
        cls, endpoint: Endpoint, *, fmt: str, key: str | None, drain: bool
    ) -> RedisStreamSource:
        """The source a URL names (``stream``, ``group``, ``consumer``, ``claim_idle``)."""
        stream = endpoint.need("stream", "a Redis source needs the stream to read")
        group = endpoint.need("group", "a Redis source reads as a consumer group")
        claim_idle = endpoint.number("claim_idle", CLAIM_IDLE)
        client = connect_redis(endpoint, InputError)
        try:
            return cls(
                client,
                stream=stream,
                group=group,
                consumer=endpoint.params.get("consumer") or None,
                claim_idle=claim_idle,
                fmt=fmt,
                key=key,
                drain=drain,
                name=endpoint.name,
            )
        except BaseException:
            client.close()
            raise

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise InputError(f"{self.name}: cannot create the group: {_reason(exc)}") from None
        except self._redis.RedisError as exc:
            raise InputError(f"{self.name}: {_reason(exc)}") from None

    # -- reading -------------------------------------------------------------------

    def read(self, max_n: int, wait: float) -> list[Message]:
        try:
            return self._read(max_n, wait)
        except self._redis.RedisError as exc:
            raise InputError(f"cannot read {self.name}: {_reason(exc)}") from None

    def _read(self, max_n: int, wait: float) -> list[Message]:
        if time.monotonic() >= self._lag_at + LAG_EVERY:
            self._refresh_lag()
        while self._pending_after is not None:  # 1. own pending entries, after a crash
            entries = self._xreadgroup(self._pending_after, max_n, None)
            if not entries:
                self._pending_after = None
                break
            self._pending_after = entries[-1][0]
            messages = self._messages(entries, redelivered=True)
            if messages:
                return messages
        if self.claim_idle is not None and time.monotonic() >= self._next_claim:
            messages = self._claim(max_n)  # 2. others' entries, idle too long
            if messages:
                return messages
        block = None if self.drain else max(1, int(wait * 1000))
        entries = self._xreadgroup(b">", max_n, block)  # 3. new entries
        if entries:
            return self._messages(entries, redelivered=False)
        if not self.drain:
            return []
        if self.claim_idle is not None:
            # Before ending: a whole scan for entries to take over.
            self._claim_cursor = b"0-0"
            while True:
                messages = self._claim(max_n)
                if messages:
                    return messages
                if self._claim_cursor in (b"0-0", "0-0"):
                    break
        self._refresh_lag()
        return []

    def _xreadgroup(self, after: bytes, count: int, block: int | None) -> list[Any]:
        """The entries ``[id, [field, value, ...]]`` of one XREADGROUP, as sent."""
        reply = self._reader.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=count, block=block
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3: {stream: entries}
            entries: list[Any] = next(iter(reply.values()))
        else:  # RESP2: [[stream, entries]]
            entries = reply[0][1]
        return entries or []

    def _claim(self, max_n: int) -> list[Message]:
        with self._lock:
            self._acked_while_claiming = set()
        reply = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int((self.claim_idle or 0) * 1000),
            start_id=self._claim_cursor,
            count=max_n,
        )
        self._claim_cursor = reply[0]
        if self._claim_cursor in (b"0-0", "0-0"):  # a whole scan done: the next one later
            self._next_claim = time.monotonic() + max((self.claim_idle or 0) / 2, 0.1)
        if len(reply) > 2:
            self.deleted += len(reply[2])  # deleted while pending: Redis dropped them
        with self._lock:
            # Not ours to run again: entries in flight here, and those acknowledged
            # since the claim was sent (the consumer thread acknowledges meanwhile).
            skip = self._inflight | (self._acked_while_claiming or set())
            self._acked_while_claiming = None
            entries = [e for e in reply[1] if e[0] is not None and e[0] not in skip]
        messages = self._messages(entries, redelivered=True)
        self.claimed += len(messages)
        return messages

    def _messages(self, entries: list[Any], *, redelivered: bool) -> list[Message]:
        """Messages of XREADGROUP's or XAUTOCLAIM's entries; an entry deleted while it was
        pending (no fields) is acknowledged at once: there is nothing to run."""
        out: list[Message] = []
        gone: list[bytes] = []
        loads = orjson.loads
        for entry_id, fields in entries:
            if not fields:  # an entry has at least one field: this one was deleted
                gone.append(entry_id)
                continue
            mid = entry_id.decode()
            if type(fields) is list:  # as sent: [field, value, ...]
                if len(fields) == 2 and fields[0] == _DATA:
                    raw = fields[1]
                else:
                    fields = dict(zip(fields[::2], fields[1::2], strict=True))
                    raw = fields.get(_DATA)
            else:
                raw = fields.get(_DATA)
            body: Any
            if raw is None:
                body = {_text(k): _text(v) for k, v in fields.items()}
            elif self._json:
                try:
                    body = loads(raw)
                except orjson.JSONDecodeError as exc:
                    body = _malformed(raw, mid, f"not valid JSON ({exc})")
            else:
                try:
                    body = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    body = _malformed(raw, mid, f"not valid UTF-8 ({exc})")
            key = mid
            if self._key is not None and type(body) is not Failure:
                try:
                    key = self._key(body)
                except MissingKey as exc:
                    body = Failure(body, "MissingKey", f"message {mid}: {exc}", "", 0, "input")
            out.append(Message(body, key, entry_id, redelivered))
        if gone:
            self.deleted += len(gone)
            self.client.xack(self.stream, self.group, *gone)
        with self._lock:
            self._inflight.update(m.token for m in out)
        return out

    # -- acknowledging -------------------------------------------------------------

    def ack(self, tokens: list[Any]) -> None:
        try:
            for i in range(0, len(tokens), ACK_BATCH):
                self.client.xack(self.stream, self.group, *tokens[i : i + ACK_BATCH])
        except self._redis.RedisError as exc:
            raise InputError(f"cannot acknowledge on {self.name}: {_reason(exc)}") from None
        with self._lock:
            self._inflight.difference_update(tokens)
            if self._acked_while_claiming is not None:
                self._acked_while_claiming.update(tokens)

    # -- what it shows -------------------------------------------------------------

    def _refresh_lag(self) -> None:
        self._lag_at = time.monotonic()
        with contextlib.suppress(self._redis.RedisError):
            for group in self.client.xinfo_groups(self.stream):
                if _text(group.get("name")) == self.group:
                    lag = group.get("lag")
                    self._lag = None if lag is None else int(lag)
                    pending = group.get("pending")
                    self._group_pending = None if pending is None else int(pending)

    def lag(self) -> int | None:
        return self._lag

    def stats(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "claimed": self.claimed,
            "deleted": self.deleted,
            "group_pending": self._group_pending,
        }

    def close(self) -> None:
        self.client.close()


def _as_sent(reply: Any, **options: Any) -> Any:
    return reply


def _malformed(raw: bytes, mid: str, why: str) -> Failure:
    return Failure(
        raw.decode("utf-8", "replace"), "MalformedInput", f"message {mid}: {why}", "", 0, "input"
    )


class RedisStreamSink(Sink):
    """Adds each result to a Redis stream and each failure to ``<stream>:failures`` (see
    the module docstring). ``key``: how plain items (not messages) are keyed."""

    takes_messages = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        maxlen: int | None = None,
        key: KeyFunction = content_key,
        name: str = "",
    ) -> None:
        self._redis = _redis_module()
        self.client = client
        self.stream = stream
        self.failures_stream = f"{stream}:failures"
        self.maxlen = maxlen
        self.name = name or f"redis stream {stream!r}"
        self._key = key
        self.written = 0
        self.failed = 0

    @classmethod
    def open(cls, endpoint: Endpoint, *, key: str | None) -> RedisStreamSink:
        """The sink a URL names (``stream``, ``maxlen``)."""
        stream = endpoint.need("stream", "a Redis output needs the stream to add to")
        maxlen = endpoint.number("maxlen", None)
        client = connect_redis(endpoint, OutputError)
        return cls(
            client,
            stream=stream,
            maxlen=None if maxlen is None else int(maxlen),
            key=content_key if key is None else field_key(key),
            name=endpoint.name,
        )

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        keys, items, values = keyed(inputs, values, self._key)
        pipe = self.client.pipeline(transaction=True)
        written = failed = 0
        for key, item, value in zip(keys, items, values, strict=True):
            if type(value) is not Failure:
                try:
                    data = orjson.dumps(value, default=json_default, option=JSON_OPTIONS)
                except TypeError as exc:
                    value = Failure(
                        item,
                        "Unserializable",
                        f"the result cannot be written as JSON ({exc})",
                        "",
                        1,
                        "output",
                    )
                else:
                    pipe.xadd(self.stream, {"key": key, "data": data}, maxlen=self.maxlen)
                    written += 1
                    continue
            pipe.xadd(self.failures_stream, _failure_fields(key, item, value), maxlen=self.maxlen)
            failed += 1
        try:
            pipe.execute()
        except self._redis.RedisError as exc:
            raise OutputError(f"cannot write to {self.name}: {_reason(exc)}") from None
        self.written += written
        self.failed += failed

    def close(self) -> None:
        self.client.close()


def _failure_fields(key: str, item: Any, failure: Failure) -> dict[Any, Any]:
    try:
        data = orjson.dumps(item, default=json_default, option=JSON_OPTIONS)
    except TypeError:
        data = orjson.dumps(repr(item))
    return {
        "key": key,
        "input": data,
        "error": failure.error,
        "message": failure.message,
        "traceback": failure.traceback,
        "attempts": failure.attempts,
    }
