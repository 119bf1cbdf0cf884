"""Redis Streams: a consumer group as a source, XADD as a sink (``pip install 'spindle[redis]'``).

The source reads as one consumer of a group (created if missing, with MKSTREAM, from the
start of the stream)::

    read():  1. its own pending entries first    XREADGROUP ... STREAMS s <after>
                (a crash left them; again after  from 0, until it gives nothing,
                a command failed: below)         its own entries in flight skipped
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
share a socket; the set of entries in flight (which a claim, or a new scan of the own
pending list, must not give again) is kept under a lock, and so is the count of
reconnections, which both threads keep.

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

Reconnecting. A server that goes away in the middle of a run (killed, restarted, a
network cut) does not end it: a command that fails with redis-py's ``ConnectionError``
(which covers ``BusyLoadingError``, a server still loading its data) or ``TimeoutError``
runs again after a pause, for up to ``reconnect`` seconds from the first failure (URL
parameter ``reconnect=S``, default 60; ``off`` or 0: the first failure is the error)::

    command ──ConnectionError, TimeoutError──▶ pause ──▶ the same command again
       │                                         │ still failing after `reconnect` s:
       │                                         └─▶ one-line InputError / OutputError
       └── NOGROUP (the group is gone) ──▶ XGROUP CREATE s g 0 MKSTREAM ──▶ again

The pauses are 0.05-0.1 s, doubling up to 1-2 s (redis-py's ``EqualJitterBackoff``: half
of each pause fixed, half random, so that the consumers of a restarted server do not all
come back at the same instant), and never past the deadline. Nothing is logged per
attempt; ``stats()["reconnects"]`` counts the outages got over (a command that succeeded
after failing), ``groups_recreated`` the groups the source created again. The error after
the deadline names the URL (without its password), the last failure, and ``reconnect=S``.
A server that cannot be reached when the source or sink opens is an error at once: a
wrong URL is said at once, not after a minute. :meth:`close` cuts a pause short. The run
waits with a command that waits for the server: a first Ctrl-C meanwhile stops the
intake, but the acknowledgements of what is done still wait (up to the deadline); a
second one stops at once, and what was not acknowledged comes again.

Why a loop of our own around redis-py's backoff rather than its ``Retry``: ``Retry``
counts attempts, where a deadline in seconds is what a person can reason about across
pauses that double; it sleeps in ``time.sleep``, which :meth:`close` could not cut short;
and it runs the command again inside the client, out of sight, so the source could not
know that a reply was lost (below) nor create a lost group again. The clients
:func:`connect_redis` makes have redis-py's own retries off (``Retry(NoBackoff(), 0)``),
so one loop decides; a client given by a program keeps its own, within each of ours.

What a command run again may repeat, and why nothing is lost:

- ``XREADGROUP ... >`` and ``XAUTOCLAIM`` whose reply was lost with the connection: the
  server gave the entries to this consumer, and they wait in its pending list. After any
  failure the source reads its own pending list again from the start, skipping the
  entries in flight here and those acknowledged meanwhile, so they come (``redelivered``).
- ``XACK``: idempotent. An acknowledgement whose reply was lost is sent again; an entry
  acknowledged twice is acknowledged.
- The sink's MULTI/EXEC: all of a chunk or none of it (a transaction cut before its EXEC
  is discarded by the server). One whose reply was lost may have been applied, and is run
  again: its entries can be added twice (at least once, as after a crash).

What a restarted server kept decides what comes next:

- With persistence (``appendonly yes``; ``appendfsync always`` loses nothing that was
  answered) the stream, the group and its pending entries come back: pending entries are
  read again or acknowledged, and the run goes on as if nothing happened. With
  ``appendfsync everysec`` up to a second of writes can be lost: an acknowledgement lost
  leaves its entry pending, given again; a delivery lost gives its entry again to ``>``
  (a keyed sink writes each key once either way).
- Without persistence the stream and its group are gone (or back at the last RDB
  snapshot). The next read finds no group (NOGROUP) and the source creates it again, from
  the start of the stream, with MKSTREAM: it reads what producers add from then on.
  Entries the server lost are lost: nothing can read them back. Results of entries in
  flight are still written; their acknowledgements find no group and do nothing. A
  snapshot older than some acknowledgements gives those entries again.
- A group destroyed by hand while its stream stays is created again from the start too:
  every entry still in the stream is read again (once per key in a keyed sink; again in
  a stream or a file).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .._errors import ConfigError
from .._failure import Failure
from ._base import AckSource, Message, Sink
from ._bodies import decode_body, encode_result, keyed_body
from ._errors import InputError, OutputError
from ._json import JSON_OPTIONS, json_default
from ._keys import KeyFunction, content_key, field_key, keyed
from ._urls import Endpoint

if TYPE_CHECKING:
    import redis

__all__ = [
    "Reconnecting",
    "RedisStreamSink",
    "RedisStreamSource",
    "connect_redis",
    "default_consumer",
]

#: Seconds a command may take before the client gives up (a blocking read waits less).
SOCKET_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: Entry ids per XACK command, at most.
ACK_BATCH = 10_000
#: Entries per read of the consumer's own pending list, at least.
PENDING_PAGE = 1000
#: Seconds between two refreshes of the group's lag.
LAG_EVERY = 1.0
#: Default seconds another consumer's entry must have been pending before it is claimed.
CLAIM_IDLE = 60.0
#: Default seconds a command is tried again while the server cannot be reached.
RECONNECT = 60.0
#: The pauses between two attempts: ``BACKOFF_FIRST`` doubled up to ``BACKOFF_MAX``, each
#: between half of that and all of it (equal jitter).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
_DATA = b"data"

T = TypeVar("T")


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
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client: redis.Redis = module.Redis.from_url(
            endpoint.client_url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            decode_responses=False,
            retry=Retry(NoBackoff(), 0),  # the connectors' own loop retries (Reconnecting)
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


class Reconnecting:
    """Runs a command again while the server cannot be reached, with pauses that double,
    for up to ``deadline`` seconds (None: not at all); see the module docstring.

    ``role``: the error past the deadline (InputError for a source, OutputError for a
    sink). ``lost``: called after each failure, from the thread whose command failed.
    Safe from several threads at once (a source's reading and acknowledging threads).
    """

    def __init__(
        self,
        deadline: float | None,
        role: type[InputError] | type[OutputError],
        lost: Callable[[], None] | None = None,
    ) -> None:
        module = _redis_module()
        from redis.backoff import EqualJitterBackoff

        self.deadline = deadline
        self.role = role
        self.lost = lost
        self._backoff = EqualJitterBackoff(cap=BACKOFF_MAX, base=BACKOFF_FIRST)
        self._transient: tuple[type[BaseException], ...] = (
            module.ConnectionError,
            module.TimeoutError,
        )
        #: ConnectionErrors that another attempt would meet again.
        self._lasting: tuple[type[BaseException], ...] = tuple(
            getattr(module.exceptions, name)
            for name in ("AuthenticationError", "AuthorizationError")
            if hasattr(module.exceptions, name)
        )
        #: Commands that succeeded after failing: outages got over.
        self.reconnects = 0
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def call(self, command: Callable[[], T], what: str) -> T:
        """``command()``, again after each failure to reach the server until it succeeds
        or the deadline passes; then a one-line ``role`` error starting with ``what``.
        Errors the server answered (``ResponseError``...) are raised as they are."""
        failures = 0
        first = 0.0
        while True:
            try:
                result = command()
            except self._transient as exc:
                if isinstance(exc, self._lasting):
                    raise
                error: BaseException = exc
            else:
                if failures:
                    with self._lock:
                        self.reconnects += 1
                return result
            now = time.monotonic()
            if not failures:
                first = now
            failures += 1
            if self.lost is not None:
                self.lost()
            waited = now - first
            if not self.deadline:
                raise self.role(f"{what}: {_reason(error)}") from None
            if waited >= self.deadline:
                raise self.role(
                    f"{what}: {_reason(error)} (no answer for {waited:.1f} s; "
                    f"reconnect={self.deadline:g} in the URL waits longer)"
                ) from None
            pause = min(self._backoff.compute(failures - 1), self.deadline - waited)
            if self.closed.wait(pause):
                raise self.role(f"{what}: closed while waiting for the server") from None


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
    (None: never). ``reconnect``: seconds a command is tried again while the server
    cannot be reached (None: not at all).
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
        reconnect: float | None = RECONNECT,
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
        #: Entries acknowledged while a scan of pending entries (a claim, or this
        #: consumer's own) was on its way: it may have found them (still pending on the
        #: server) after they left ``_inflight``.
        self._acked_while_scanning: set[bytes] | None = None
        self._lock = threading.Lock()
        #: A command failed: a reply may have been lost, read the own pending list again.
        self._lost = False
        #: Runs the commands again while the server cannot be reached.
        self.reconnecting = Reconnecting(reconnect, InputError, self._on_lost)
        self._reading = f"cannot read {self.name}"
        self._acking = f"cannot acknowledge on {self.name}"
        self._lag: int | None = None
        self._group_pending: int | None = None
        self._lag_at = 0.0
        #: Entries taken over from other consumers, and pending entries found deleted.
        self.claimed = 0
        self.deleted = 0
        #: Times the group was found gone (a server restarted without its data) and made.
        self.groups_recreated = 0
        self._create_group()
        self._refresh_lag()

    @classmethod
    def open(
        cls, endpoint: Endpoint, *, fmt: str, key: str | None, drain: bool
    ) -> RedisStreamSource:
        """The source a URL names (``stream``, ``group``, ``consumer``, ``claim_idle``,
        ``reconnect``)."""
        stream = endpoint.need("stream", "a Redis source needs the stream to read")
        group = endpoint.need("group", "a Redis source reads as a consumer group")
        claim_idle = endpoint.number("claim_idle", CLAIM_IDLE)
        reconnect = endpoint.number("reconnect", RECONNECT)
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
                reconnect=reconnect,
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

    def _on_lost(self) -> None:
        self._lost = True

    def _command(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a command of the group: run again while the server
        cannot be reached; when the group is gone (NOGROUP: a server restarted without
        its data), the group is created again first."""
        return self.reconnecting.call(
            functools.partial(self._in_group, fn, *args, **kwargs), self._reading
        )

    def _in_group(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # made meanwhile by another consumer
                raise
        else:
            self.groups_recreated += 1
        self._lost = True  # the cursors of the old group mean nothing to the new one
        return fn(*args, **kwargs)

    def _unseen(self, scan: Callable[[], T]) -> tuple[T, set[bytes]]:
        """The reply of ``scan`` (pending entries, which may be in flight here), and the
        entries of it not to give again: those in flight, and those acknowledged while
        ``scan`` was on its way (the acknowledging thread goes on meanwhile)."""
        with self._lock:
            self._acked_while_scanning = set()
        try:
            reply = scan()
        finally:
            with self._lock:
                skip = self._inflight | (self._acked_while_scanning or set())
                self._acked_while_scanning = None
        return reply, skip

    # -- reading -------------------------------------------------------------------

    def read(self, max_n: int, wait: float) -> list[Message]:
        try:
            return self._read(max_n, wait)
        except self._redis.RedisError as exc:
            raise InputError(f"cannot read {self.name}: {_reason(exc)}") from None

    def _read(self, max_n: int, wait: float) -> list[Message]:
        if time.monotonic() >= self._lag_at + LAG_EVERY:
            self._refresh_lag()
        while True:
            if self._lost:
                # A reply may have been lost with the connection: entries the server gave
                # this consumer (XREADGROUP >, XAUTOCLAIM) that never arrived wait in its
                # pending list. Read the list again from the start.
                self._lost = False
                self._pending_after = b"0"
                self._claim_cursor = b"0-0"
            while self._pending_after is not None:  # 1. own pending entries
                # In pages of at least PENDING_PAGE: read again after a lost reply, the
                # list holds the entries in flight here, skipped, while max_n (the room
                # the run has left) can be small.
                page = max(max_n, PENDING_PAGE)
                scan = functools.partial(self._xreadgroup, self._pending_after, page, None)
                entries, skip = self._unseen(scan)
                if not entries:
                    self._pending_after = None
                    break
                taken: list[Any] = []
                for entry in entries:
                    self._pending_after = entry[0]
                    if entry[0] not in skip:
                        taken.append(entry)
                        if len(taken) == max_n:
                            break
                messages = self._messages(taken, redelivered=True)
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
            if self._lost:  # before ending: what a lost reply left pending
                continue
            self._refresh_lag()
            return []

    def _xreadgroup(self, after: bytes, count: int, block: int | None) -> list[Any]:
        """The entries ``[id, [field, value, ...]]`` of one XREADGROUP, as sent."""
        reply = self._command(
            self._reader.xreadgroup,
            self.group,
            self.consumer,
            {self.stream: after},
            count=count,
            block=block,
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3: {stream: entries}
            entries: list[Any] = next(iter(reply.values()))
        else:  # RESP2: [[stream, entries]]
            entries = reply[0][1]
        return entries or []

    def _claim(self, max_n: int) -> list[Message]:
        claim = functools.partial(
            self._command,
            self.client.xautoclaim,
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int((self.claim_idle or 0) * 1000),
            start_id=self._claim_cursor,
            count=max_n,
        )
        reply, skip = self._unseen(claim)
        self._claim_cursor = reply[0]
        if self._claim_cursor in (b"0-0", "0-0"):  # a whole scan done: the next one later
            self._next_claim = time.monotonic() + max((self.claim_idle or 0) / 2, 0.1)
        if len(reply) > 2:
            self.deleted += len(reply[2])  # deleted while pending: Redis dropped them
        # Not ours to run again: entries in flight here, and those acknowledged since the
        # claim was sent (the consumer thread acknowledges meanwhile).
        entries = [e for e in reply[1] if e[0] is not None and e[0] not in skip]
        messages = self._messages(entries, redelivered=True)
        self.claimed += len(messages)
        return messages

    def _messages(self, entries: list[Any], *, redelivered: bool) -> list[Message]:
        """Messages of XREADGROUP's or XAUTOCLAIM's entries; an entry deleted while it was
        pending (no fields) is acknowledged at once: there is nothing to run."""
        out: list[Message] = []
        gone: list[bytes] = []
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
            else:
                body = decode_body(raw, mid, self._json)
            body, key = keyed_body(body, mid, self._key)
            out.append(Message(body, key, entry_id, redelivered))
        if gone:
            self.deleted += len(gone)
            self.reconnecting.call(
                functools.partial(self.client.xack, self.stream, self.group, *gone),
                self._reading,
            )
        with self._lock:
            self._inflight.update(m.token for m in out)
        return out

    # -- acknowledging -------------------------------------------------------------

    def ack(self, tokens: list[Any]) -> None:
        """XACK, sent again while the server cannot be reached (it is idempotent). An
        entry the server no longer has (it restarted without its data) is acknowledged
        as nothing: XACK answers 0."""
        try:
            for i in range(0, len(tokens), ACK_BATCH):
                xack = functools.partial(
                    self.client.xack, self.stream, self.group, *tokens[i : i + ACK_BATCH]
                )
                self.reconnecting.call(xack, self._acking)
        except self._redis.RedisError as exc:
            raise InputError(f"{self._acking}: {_reason(exc)}") from None
        with self._lock:
            self._inflight.difference_update(tokens)
            if self._acked_while_scanning is not None:
                self._acked_while_scanning.update(tokens)

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
            "reconnects": self.reconnecting.reconnects,
            "groups_recreated": self.groups_recreated,
        }

    def close(self) -> None:
        self.reconnecting.closed.set()  # a pause waiting for the server ends now
        self.client.close()


def _as_sent(reply: Any, **options: Any) -> Any:
    return reply


class RedisStreamSink(Sink):
    """Adds each result to a Redis stream and each failure to ``<stream>:failures`` (see
    the module docstring). ``key``: how plain items (not messages) are keyed.
    ``reconnect``: seconds a chunk is written again while the server cannot be reached
    (None: not at all)."""

    takes_messages = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        maxlen: int | None = None,
        key: KeyFunction = content_key,
        name: str = "",
        reconnect: float | None = RECONNECT,
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
        #: Runs a chunk's transaction again while the server cannot be reached.
        self.reconnecting = Reconnecting(reconnect, OutputError)
        self._writing = f"cannot write to {self.name}"

    @classmethod
    def open(cls, endpoint: Endpoint, *, key: str | None) -> RedisStreamSink:
        """The sink a URL names (``stream``, ``maxlen``, ``reconnect``)."""
        stream = endpoint.need("stream", "a Redis output needs the stream to add to")
        maxlen = endpoint.number("maxlen", None)
        reconnect = endpoint.number("reconnect", RECONNECT)
        client = connect_redis(endpoint, OutputError)
        return cls(
            client,
            stream=stream,
            maxlen=None if maxlen is None else int(maxlen),
            key=content_key if key is None else field_key(key),
            name=endpoint.name,
            reconnect=reconnect,
        )

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        """One chunk in one MULTI/EXEC transaction, run again whole while the server
        cannot be reached: a transaction whose reply was lost may have been applied,
        and its entries are then added twice (at least once)."""
        keys, items, values = keyed(inputs, values, self._key)
        entries: list[tuple[str, dict[Any, Any]]] = []
        written = failed = 0
        for key, item, value in zip(keys, items, values, strict=True):
            if type(value) is not Failure:
                data = encode_result(item, value)
                if type(data) is bytes:
                    entries.append((self.stream, {"key": key, "data": data}))
                    written += 1
                    continue
                value = data
            entries.append((self.failures_stream, _failure_fields(key, item, value)))
            failed += 1
        try:
            self.reconnecting.call(functools.partial(self._add, entries), self._writing)
        except self._redis.RedisError as exc:
            raise OutputError(f"{self._writing}: {_reason(exc)}") from None
        self.written += written
        self.failed += failed

    def _add(self, entries: list[tuple[str, dict[Any, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=True)  # a pipeline is emptied by execute()
        for stream, fields in entries:
            pipe.xadd(stream, fields, maxlen=self.maxlen)
        pipe.execute()

    def stats(self) -> dict[str, Any]:
        return {"reconnects": self.reconnecting.reconnects}

    def close(self) -> None:
        self.reconnecting.closed.set()
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
