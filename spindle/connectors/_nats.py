"""NATS JetStream: a durable pull consumer as a source, JetStream publishes as a sink
(``pip install 'spindle[nats]'``).

nats-py speaks only asyncio, while both callers of a source are plain threads (the run's
source thread reads, the thread that writes the sink acknowledges): each source and each
sink owns one connection on an event loop thread of its own
(:class:`~spindle.connectors._loop_thread.LoopThread`)::

    source thread ──read(n)──┐                       pull {"batch": n, "no_wait": true}
                             │                            if none: {"batch": 1, "expires": wait}
                             ├──▶ loop thread ─────▶      and then the rest, no_wait
    writer thread ──ack()────┘   (nats-py, 1 socket)  ack "+ACK" to each reply subject,
                                                          then one PING/PONG (a flush)
                                 every ack_wait/4:        "+WPI" for messages still in flight

The source reads a durable pull consumer of a stream, both created if missing: the stream
with ``subject``; the consumer filtered to ``subject`` (when given), with explicit acks,
``ack_wait`` (default 30 s), ``max_deliver`` (default: no limit) and no limit of its own
on unacknowledged messages (the run's bound is the limit; JetStream's default of 1,000
would stall a run, see below). An existing consumer is used as it is, but for
``ack_wait`` and ``max_deliver`` when the URL names them (they are updated).

Reading: pull requests of spindle's own rather than nats-py's ``fetch``, so that a read
never holds more than it asked for. A JetStream pull request asks for a batch and is
answered until the batch is full, it expires, or (``no_wait``) nothing more is there,
ending with a status (404, 408); a request still open after the client stopped waiting
would deliver messages nobody asked for, beyond the run's bound. So every request ends by
itself at once (``no_wait``) or waits for one message only, and a message that still
comes for a request the client gave up on is handed back at once (``-NAK``). A read asks
for ``min(max_n, bound)`` at most and waits ``wait`` at most.

Keys: ``<stream>:<stream sequence>``, the same at every delivery (``key=FIELD``: that
field of the body). ``redelivered``: the delivery count of the reply subject is above
one. Body: JSON (``jsonl``) or text; a body that does not parse fails alone
(``MalformedInput``) and is acknowledged once its failure record is durable.

In flight: a message read and not acknowledged yet gets a ``+WPI`` (work in progress)
every ``ack_wait/4`` seconds, which restarts its ack timer on the server, so ``ack_wait``
bounds how long the messages of a dead run wait before they are delivered again, not how
long a message may spend in the pipeline (a pipeline's bound is tens of thousands).

Acknowledging: ``+ACK`` to each message's reply subject, then one flush (a PING answered
by a PONG: the server has them). Those that cannot be confirmed (the connection is down,
or no PONG within 5 s: written to the socket of a server that was dying) are counted
(``acks_unconfirmed``) and sent again with the next acknowledgement, at a drain's end
and at close (``acks_resent``: the server takes an acknowledgement for the stream
sequence whichever delivery it names, and the result is durable). Those never confirmed
(the run ended first, or more than 100,000 waited: ``acks_dropped``) are not lost
either: the message comes again after ``ack_wait`` and the keyed sink writes its key
once.

``max_deliver``: a message delivered that many times without an acknowledgement (only
dead runs and lost acknowledgements leave one) is given up by the server: it stays in the
stream, counts neither as pending nor as unacknowledged, and is never delivered again.
The server announces it on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>``;
a source that hears it gives that message as a failure of its own
(``DeliveriesExceeded``, its body fetched from the stream), so that it lands among the
failures rather than vanishing, with no token to acknowledge. The server gives up while a
consumer pulls, so the puller hears it; a message given up while only another program
pulls is gone from the consumer without a trace. Hence no limit by default.

Drain: the source ends once a pull finds nothing, the consumer has nothing pending and
nothing unacknowledged, and none of this source's messages is in flight. Messages a dead
run (or a lost acknowledgement) left unacknowledged come back after ``ack_wait``: a drain
waits for them (a read that finds nothing pulls again), but ends once nothing was read
or acknowledged here for ``ack_wait * 1.5 + 1`` seconds (the unacknowledged are then a
live consumer's, or this run's own, stopped by Ctrl-C), counted as ``left_unacked``; a
Ctrl-C at the very end of a drain can take as long.

Reconnecting: nats-py reconnects by itself (every 0.5 s, for some two minutes);
meanwhile reads wait for the connection and retry with a backoff, acknowledgements wait
(above), and the sink's publishes are sent after the reconnection. The first connection
is not retried: an unreachable server, or one that refuses the user, is a one-line error
at once. ``lag()`` is the consumer's ``num_pending``: from each message's reply subject,
and from the consumer's info at most once a second (``stats()`` adds its unacknowledged
count, ``ack_pending``).

The sink publishes each result to ``subject`` as JSON and each failure to
``<subject>.failures`` (``{key, input, error, message, traceback, attempts}``), every
publish of a chunk in flight at once (nats-py's ``publish_async``), each with the header
``Nats-Msg-Id``: the record's key (``failure:<key>`` for a failure; a digest for a key
that cannot be a header), so that JetStream's duplicate window (two minutes by default)
drops a record published again after a crash; past the window a repeat is added (at
least once). :meth:`NatsSink.commit` returns once JetStream acknowledged every publish;
one that gets no answer in 5 s is published again with the same id, for up to 60 s.

Measured here (2-core VM shared with other work, load average 0.8-2.9; NATS server 2.9.10
and PostgreSQL 15 on the same machine; Python 3.11, uvloop; each figure from fresh
interpreters):

- this source alone, reading 100,000 messages (``{"n": i}``) 1,024 a read and
  acknowledging each read: 83,000-99,000 msg/s (4 runs). nats-py's own
  ``PullSubscription.fetch(1024)`` and ``msg.ack()`` on the same messages: 25,400-25,800
  msg/s; on a consumer as ``pull_subscribe`` creates it (JetStream's ``max_ack_pending``
  of 1,000), 980 msg/s.
- ``spindle map bench.work:tiny nats://...?stream=S&durable=d&subject=S -o
  postgresql://...?table=T --drain``, 100,000 messages: 35,000-43,000 msg/s over the whole
  command, start-up included (2.3-2.8 s; the run itself reports 44,000-53,000 items/s),
  every message in the table and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
import xxhash

from .._errors import ConfigError
from .._failure import Failure
from ._base import AckSource, Message, Sink
from ._bodies import decode_body, encode_result, failure_body, keyed_body
from ._errors import InputError, OutputError
from ._keys import KeyFunction, content_key, field_key, keyed
from ._loop_thread import LoopThread
from ._urls import PARAMETERS, Endpoint

__all__ = ["NatsConnection", "NatsSink", "NatsSource", "connect_nats"]

#: Seconds the first connection may take.
CONNECT_TIMEOUT = 2.0
#: Seconds between two attempts to reconnect, and how many attempts (some two minutes).
RECONNECT_WAIT = 0.5
RECONNECT_ATTEMPTS = 240
#: Seconds a JetStream API request (stream or consumer info, creation) may take.
API_TIMEOUT = 5.0
#: Seconds the flush that confirms a chunk's acknowledgements may take.
ACK_TIMEOUT = 5.0
#: Acknowledgements kept to be sent again while the server cannot confirm them, at most.
UNCONFIRMED_MAX = 100_000
#: The consumer's ack_wait when it is created and the URL names none (JetStream's default).
ACK_WAIT = 30.0
#: Seconds between two refreshes of the consumer's info (lag, unacknowledged).
LAG_EVERY = 1.0
#: Seconds past a pull request's end before the client stops waiting for its answer.
PULL_MARGIN = 2.0
#: The longest pause between two failed reads.
BACKOFF_MAX = 2.0
#: Seconds the sink waits for JetStream's acknowledgements of a chunk before publishing
#: the unanswered again, and for how long it keeps trying.
REPUBLISH_AFTER = 5.0
PUBLISH_TIMEOUT = 60.0

_STATUS = "Status"
_DESCRIPTION = "Description"
_ACK = b"+ACK"
_PROGRESS = b"+WPI"
_NAK = b"-NAK"
_BAD_NAME = frozenset(".*> \t\r\n")


def _nats() -> Any:
    try:
        import nats
        import nats.js.api
        import nats.js.errors
    except ImportError:
        raise ConfigError(
            "NATS JetStream needs the nats-py client: pip install 'spindle[nats]'"
        ) from None
    return nats


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_name(endpoint: Endpoint, param: str, value: str) -> str:
    if _BAD_NAME & set(value):
        raise ConfigError(
            f"{endpoint.name}: {param}={value!r}: a JetStream name has no '.', '*', '>' "
            "or white space"
        )
    return value


def _server_url(endpoint: Endpoint, role: str) -> str:
    """The server's URL for nats-py (with the user and password, if any): a parameter
    that is not spindle's is an error, since nats-py takes none from the URL."""
    parts = urlsplit(endpoint.client_url)
    stray = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if stray:
        known = ", ".join(PARAMETERS[("nats", role)])
        raise ConfigError(
            f"{endpoint.name}: unknown parameter {', '.join(stray)}: a NATS {role} takes {known}"
        )
    if not parts.hostname:
        raise ConfigError(f"{endpoint.name}: no server: nats://HOST:PORT?...")
    return urlunsplit(("nats", parts.netloc, "", "", ""))


class NatsConnection:
    """One nats-py client on an event loop thread of its own: the source's reads and
    acknowledgements, or the sink's publishes, all go through it (:meth:`call`).

    Counts reconnections and keeps the last error nats-py reported (its own logging of
    them is replaced, so that a restarted server does not print tracebacks)."""

    def __init__(self, server: str, name: str, thread_name: str) -> None:
        self.server = server
        self.name = name
        self.reconnects = 0
        self.last_error: str | None = None
        self.client: Any = None
        self._up: asyncio.Event | None = None
        self.loop = LoopThread(thread_name)

    async def connect(self) -> None:
        nats = _nats()
        self._up = asyncio.Event()
        # The first connection is tried twice, quickly: an unreachable server is an
        # error at once. Once connected, nats-py reconnects by itself (the options are
        # read at each reconnection).
        self.client = await nats.connect(
            self.server,
            name="spindle",
            connect_timeout=CONNECT_TIMEOUT,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        self.client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=RECONNECT_ATTEMPTS,
            reconnect_time_wait=RECONNECT_WAIT,
        )
        self._up.set()

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = _reason(exc)

    async def _on_disconnected(self) -> None:
        if self._up is not None:
            self._up.clear()

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        if self._up is not None:
            self._up.set()

    async def _on_closed(self) -> None:
        if self._up is not None:
            self._up.set()  # wake the waiters: they find it closed

    async def wait_up(self, seconds: float) -> bool:
        """Wait at most ``seconds`` for the connection; whether it is up."""
        if self._up is not None and not self._up.is_set() and seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), seconds)
        return bool(self.client is not None and self.client.is_connected)

    @property
    def closed(self) -> bool:
        return self.client is None or bool(self.client.is_closed)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        return self.loop.call(coro, timeout)

    def close(self) -> None:
        """Close the client and join the loop thread. Idempotent."""
        try:
            if self.client is not None and not self.client.is_closed:
                with contextlib.suppress(Exception):
                    self.loop.call(self.client.close(), timeout=ACK_TIMEOUT)
        finally:
            self.loop.close()


def connect_nats(endpoint: Endpoint, role: type[InputError] | type[OutputError]) -> NatsConnection:
    """A connected client for ``endpoint``: an unreachable server (or one that refuses the
    user) is a one-line ``role`` error naming the URL without its password."""
    nats = _nats()
    kind = "source" if role is InputError else "sink"
    server = _server_url(endpoint, kind)
    conn = NatsConnection(server, endpoint.name, f"spindle-nats-{kind}")
    try:
        conn.call(conn.connect())
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        why = conn.last_error if isinstance(exc, nats.errors.NoServersError) else None
        conn.close()
        raise role(f"cannot connect to {endpoint.name}: {why or _reason(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


class _Pull:
    """One pull request in flight: the messages it brought, and how it ended."""

    __slots__ = ("done", "got", "reply", "status", "want")

    def __init__(self, reply: str, want: int) -> None:
        self.reply = reply
        self.want = want
        self.got: list[tuple[str | None, bytes | None, int, int]] = []
        self.status: str | None = None
        self.done = asyncio.Event()


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(deliveries, stream sequence, pending) of a JetStream reply subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>``, or with
    a domain and an account hash after ``$JS.ACK``."""
    t = reply.split(".")
    if len(t) == 9:
        return int(t[4]), int(t[5]), int(t[8])
    return int(t[6]), int(t[7]), int(t[10])


class NatsSource(AckSource):
    """A durable pull consumer of a JetStream stream (see the module docstring).

    ``subject``: the stream's subject when the stream is created, and the consumer's
    filter when it is. ``ack_wait`` (seconds) and ``max_deliver`` (-1: no limit) set the
    consumer's, when given. ``fmt``: ``"jsonl"`` (each message's data parsed as JSON) or
    ``"text"``. ``key``: the field of the body that keys each record in a keyed sink
    (default: ``<stream>:<sequence>``).
    """

    def __init__(
        self,
        conn: NatsConnection,
        *,
        stream: str,
        durable: str,
        subject: str | None = None,
        ack_wait: float | None = None,
        max_deliver: int | None = None,
        fmt: str = "jsonl",
        key: str | None = None,
        drain: bool = False,
        name: str = "",
    ) -> None:
        self._nats = _nats()
        self.conn = conn
        self.stream = stream
        self.durable = durable
        self.subject = subject
        self.fmt = fmt
        self.drain = drain
        self.name = name or f"nats stream {stream!r}, durable {durable!r}"
        self._key: KeyFunction | None = (
            None if key is None else field_key(key, without="messages by stream sequence")
        )
        self._json = fmt == "jsonl"
        self._bound = 0
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        # The loop thread's own state: only coroutines on it touch these.
        self._inflight: dict[str, float] = {}
        self._unconfirmed: list[str] = []
        self._pull: _Pull | None = None
        self._pulls = 0
        self._given_up: list[tuple[int, int]] = []
        self._backoff = 0.05
        self._progress_at = 0.0
        self._ended = False
        #: The run takes no more messages (see stop_reading).
        self._stopped = False
        self._info_at = 0.0
        self._inbox = ""
        self._keeper: asyncio.Task[None] | None = None
        self.ack_wait = ack_wait or ACK_WAIT
        #: From the consumer's info, or the last message: what is left to read, and
        #: read by anyone and not acknowledged.
        self._lag: int | None = None
        self._ack_pending: int | None = None
        #: Acknowledgements not confirmed at first (the server was gone), confirmed when
        #: sent again, and dropped (too many unconfirmed); progress notices sent,
        #: messages handed back (they came for a pull given up), messages the server
        #: gave up (max_deliver), reads that failed, unacknowledged messages a drain
        #: left to others.
        self.acks_unconfirmed = 0
        self.acks_resent = 0
        self.acks_dropped = 0
        self.kept_alive = 0
        self.returned = 0
        self.given_up = 0
        self.read_errors = 0
        self.left_unacked = 0
        self.last_error: str | None = None
        errors = self._nats.js.errors
        try:
            conn.call(self._open(ack_wait, max_deliver))
        except ConfigError:
            raise
        except errors.ServiceUnavailableError:
            raise InputError(
                f"{self.name}: JetStream does not answer (is the server started with -js?)"
            ) from None
        except (self._nats.errors.Error, OSError, TimeoutError) as exc:
            raise InputError(f"{self.name}: {_reason(exc)}") from None

    @classmethod
    def open(cls, endpoint: Endpoint, *, fmt: str, key: str | None, drain: bool) -> NatsSource:
        """The source a URL names (``stream``, ``durable``, ``subject``, ``ack_wait``,
        ``max_deliver``)."""
        stream = endpoint.need("stream", "a NATS source needs the JetStream stream to read")
        durable = endpoint.need("durable", "a NATS source reads as a durable consumer")
        _check_name(endpoint, "stream", stream)
        _check_name(endpoint, "durable", durable)
        ack_wait = endpoint.number("ack_wait", None)
        if ack_wait is not None and ack_wait <= 0:
            raise ConfigError(f"{endpoint.name}: ack_wait must be more than 0 seconds")
        max_deliver: int | None = None
        raw = endpoint.params.get("max_deliver")
        if raw:
            number = endpoint.number("max_deliver", -1)
            max_deliver = -1 if number is None else int(number)
            if max_deliver == 0 or max_deliver != number:
                raise ConfigError(
                    f"{endpoint.name}: max_deliver={raw!r}: a whole number of deliveries "
                    "of at least 1 (or off)"
                )
        conn = connect_nats(endpoint, InputError)
        try:
            return cls(
                conn,
                stream=stream,
                durable=durable,
                subject=endpoint.params.get("subject") or None,
                ack_wait=ack_wait,
                max_deliver=max_deliver,
                fmt=fmt,
                key=key,
                drain=drain,
                name=endpoint.name,
            )
        except BaseException:
            conn.close()
            raise

    async def _open(self, ack_wait: float | None, max_deliver: int | None) -> None:
        nats = self._nats
        client = self.conn.client
        js = client.jetstream(timeout=API_TIMEOUT)
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            if not self.subject:
                raise ConfigError(
                    f"{self.name}: there is no stream {self.stream!r}: add &subject=NAME "
                    "to the URL to create it"
                ) from None
            await _add_stream(js, nats.js.errors, self.stream, [self.subject])
        info = await self._consumer(js, ack_wait, max_deliver)
        self._take_info(info)
        self._progress_at = asyncio.get_running_loop().time()
        self._inbox = client.new_inbox()
        await client.subscribe(f"{self._inbox}.*", cb=self._on_message)
        await client.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.durable}",
            cb=self._on_given_up,
        )
        self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _consumer(self, js: Any, ack_wait: float | None, max_deliver: int | None) -> Any:
        """The durable consumer's info, created (or its ack_wait and max_deliver set)."""
        api = self._nats.js.api
        errors = self._nats.js.errors
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except errors.NotFoundError:
            config = api.ConsumerConfig(
                durable_name=self.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=ack_wait or ACK_WAIT,
                max_deliver=-1 if max_deliver is None else max_deliver,
                max_ack_pending=-1,
                filter_subject=self.subject,
            )
            try:
                return await js.add_consumer(self.stream, config)
            except errors.BadRequestError:  # made meanwhile by another run
                info = await js.consumer_info(self.stream, self.durable)
        config = info.config
        if config.deliver_subject:
            raise ConfigError(
                f"{self.name}: the consumer {self.durable!r} pushes its messages; spindle "
                "reads a pull consumer: name another durable"
            )
        if config.ack_policy not in (api.AckPolicy.EXPLICIT, "explicit"):
            raise ConfigError(
                f"{self.name}: the consumer {self.durable!r} does not ask for explicit "
                "acknowledgements: name another durable"
            )
        if self.subject and config.filter_subject not in (None, "", self.subject):
            raise ConfigError(
                f"{self.name}: the consumer {self.durable!r} reads {config.filter_subject!r}, "
                f"not {self.subject!r}: name another durable"
            )
        changes: dict[str, Any] = {}
        if ack_wait is not None and config.ack_wait != ack_wait:
            changes["ack_wait"] = ack_wait
        if max_deliver is not None and config.max_deliver != max_deliver:
            changes["max_deliver"] = max_deliver
        if changes:
            info = await js.add_consumer(self.stream, config.evolve(**changes))
        return info

    def _take_info(self, info: Any) -> None:
        self._lag = info.num_pending
        self._ack_pending = info.num_ack_pending
        if info.config.ack_wait:
            self.ack_wait = float(info.config.ack_wait)

    def stop_reading(self) -> None:
        """A drain's read returns at its next turn (each is bounded by its ``wait``)
        rather than wait for the acknowledgements of messages the stop dropped."""
        self._stopped = True

    def set_bound(self, max_unacked: int) -> None:
        self._bound = max_unacked

    # -- reading (the source thread) -----------------------------------------------

    def read(self, max_n: int, wait: float) -> list[Message]:
        n = max(1, min(max_n, self._bound or max_n))
        if self.conn.closed:
            raise InputError(f"cannot read {self.name}: the connection is closed")
        entries = self.conn.call(self._read(n, wait))
        return self._messages(entries)

    def _messages(self, entries: list[tuple[str | None, bytes | None, int, int]]) -> list[Message]:
        out: list[Message] = []
        stream = self.stream
        for token, raw, seq, deliveries in entries:
            mid = f"{stream}:{seq}"
            body: Any
            body = None if raw is None else decode_body(raw, mid, self._json)
            body, key = keyed_body(body, mid, self._key)
            if token is None:  # given up by the server (max_deliver)
                item = body.item if type(body) is Failure else body
                body = Failure(
                    item,
                    "DeliveriesExceeded",
                    f"message {mid}: delivered {deliveries} times without an "
                    "acknowledgement, the consumer's max_deliver: the server gives it no more",
                    "",
                    deliveries,
                    "input",
                )
            out.append(Message(body, key, token, deliveries > 1))
        return out

    # -- reading (the loop thread) -------------------------------------------------

    async def _read(self, n: int, wait: float) -> list[tuple[str | None, bytes | None, int, int]]:
        loop = asyncio.get_running_loop()
        self._ended = False
        while True:
            got = await self._pull_some(n, loop.time() + wait)
            if got:
                now = loop.time()
                self._progress_at = now
                inflight = self._inflight
                for token, _raw, _seq, _n in got:
                    if token is not None:
                        inflight[token] = now
                last = got[-1][0]
                if last is not None:
                    self._lag = _ack_fields(last)[2]
            if loop.time() >= self._info_at + LAG_EVERY:
                await self._refresh()
            if got or not self.drain or self._ended or self._stopped:
                return got

    async def _pull_some(
        self, n: int, deadline: float
    ) -> list[tuple[str | None, bytes | None, int, int]]:
        """What one read brings: up to ``n`` messages there now, or else (unless a drain
        finds the consumer empty) the first to come before ``deadline`` and what is there
        after it."""
        loop = asyncio.get_running_loop()
        conn = self.conn
        if conn.closed:
            raise InputError(f"lost the connection to {self.name}: {conn.last_error or 'closed'}")
        if not conn.client.is_connected:
            await conn.wait_up(deadline - loop.time())
            return []
        if self._given_up:
            return await self._given_up_messages(n)
        pull = await self._fetch(n, None)  # what is there now
        if pull.got:
            return pull.got
        if await self._trouble(pull, deadline):
            return []
        if self.drain and await self._drained():
            self._ended = True
            return []
        remaining = deadline - loop.time()
        if remaining < 0.01:
            return []
        pull = await self._fetch(1, remaining)  # the first to come
        if not pull.got:
            await self._trouble(pull, deadline)
            return []
        got = pull.got
        if n > 1:  # and what came with it
            got += (await self._fetch(n - 1, None)).got
        return got

    async def _fetch(self, n: int, expires: float | None) -> _Pull:
        """One pull request: ``n`` messages at most, what is there now (``expires``
        None) or the first to come within ``expires`` seconds."""
        self._pulls += 1
        pull = _Pull(f"{self._inbox}.{self._pulls}", n)
        request: dict[str, Any] = {"batch": n}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        self._pull = pull
        try:
            await self.conn.client.publish(
                self._next_subject, orjson.dumps(request), reply=pull.reply
            )
            await asyncio.wait_for(pull.done.wait(), (expires or 0) + PULL_MARGIN)
        except TimeoutError:
            pull.status = "no answer"
        except self._nats.errors.Error as exc:
            pull.status = _reason(exc)
        finally:
            self._pull = None
        return pull

    async def _trouble(self, pull: _Pull, deadline: float) -> bool:
        """Whether a pull that brought nothing failed (then wait a backoff first, at most
        until ``deadline``): 404 and 408 are its normal ends."""
        if pull.status in ("404", "408"):
            self._backoff = 0.05
            return False
        self.read_errors += 1
        self.last_error = f"pull: {pull.status}"
        if pull.status is not None and "Consumer Deleted" in pull.status:
            raise InputError(f"{self.name}: the consumer {self.durable!r} was deleted")
        if pull.status is not None and pull.status.startswith("503"):  # no responders
            await self._check_consumer()
        loop = asyncio.get_running_loop()
        pause = min(self._backoff, max(deadline - loop.time(), 0.0))
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        if pause > 0:
            await asyncio.sleep(pause)
        return True

    async def _check_consumer(self) -> None:
        """After a pull nobody answered (503): a consumer that is gone ends the run."""
        js = self.conn.client.jetstream(timeout=API_TIMEOUT)
        try:
            await js.consumer_info(self.stream, self.durable)
        except self._nats.js.errors.NotFoundError:
            raise InputError(
                f"{self.name}: the consumer {self.durable!r} of stream {self.stream!r} "
                "no longer exists"
            ) from None
        except (self._nats.errors.Error, TimeoutError):
            pass  # the server is not ready yet: try again later

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers
        if headers and _STATUS in headers:  # the end of a pull request
            pull = self._pull
            status = headers[_STATUS]
            if pull is not None and msg.subject == pull.reply and status != "100":
                if status in ("404", "408"):
                    pull.status = status
                else:
                    pull.status = f"{status} {headers.get(_DESCRIPTION) or ''}".strip()
                pull.done.set()
            return
        pull = self._pull
        if pull is None or len(pull.got) >= pull.want:  # for a pull given up: hand it back
            self.returned += 1
            with contextlib.suppress(self._nats.errors.Error):
                await self.conn.client.publish(msg.reply, _NAK)
            return
        try:
            deliveries, seq, _pending = _ack_fields(msg.reply)
        except (ValueError, IndexError):
            return  # not a JetStream message: published to the inbox by someone
        pull.got.append((msg.reply, msg.data, seq, deliveries))
        if len(pull.got) >= pull.want:
            pull.done.set()

    async def _on_given_up(self, msg: Any) -> None:
        try:
            event = orjson.loads(msg.data)
            self._given_up.append((int(event["stream_seq"]), int(event.get("deliveries", 0))))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        self.given_up += 1

    async def _given_up_messages(self, n: int) -> list[tuple[str | None, bytes | None, int, int]]:
        taken, self._given_up = self._given_up[:n], self._given_up[n:]
        js = self.conn.client.jetstream(timeout=API_TIMEOUT)
        out: list[tuple[str | None, bytes | None, int, int]] = []
        for seq, deliveries in taken:
            try:
                raw = await js.get_msg(self.stream, seq)
                data: bytes | None = raw.data or b""
            except self._nats.js.errors.NotFoundError:
                data = None  # deleted from the stream meanwhile
            except (self._nats.errors.Error, TimeoutError):
                self._given_up.append((seq, deliveries))  # try again at the next read
                continue
            out.append((None, data, seq, deliveries))
        return out

    async def _refresh(self) -> Any:
        """The consumer's info (None when the server does not answer), which also
        refreshes the lag and the unacknowledged count."""
        self._info_at = asyncio.get_running_loop().time()
        js = self.conn.client.jetstream(timeout=API_TIMEOUT)
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except (self._nats.errors.Error, TimeoutError) as exc:
            self.last_error = f"consumer info: {_reason(exc)}"
            return None
        self._take_info(info)
        return info

    async def _drained(self) -> bool:
        """Whether a drain ends: nothing pending, nothing unacknowledged; or nothing read
        or acknowledged here for so long that a dead run's messages would have come back
        (the unacknowledged are then a live consumer's, or ours stopped with the run)."""
        if self._given_up:
            return False
        if self._unconfirmed and self.conn.client.is_connected:
            await self._ack([])
        info = await self._refresh()
        if info is None or info.num_pending > 0:
            return False
        if info.num_ack_pending == 0 and not self._inflight:
            return True
        idle = asyncio.get_running_loop().time() - self._progress_at
        if idle >= self.ack_wait * 1.5 + 1.0:
            self.left_unacked = info.num_ack_pending
            return True
        return False

    async def _keep_alive(self) -> None:
        """Every ack_wait/4 seconds: "+WPI" for the messages read and not acknowledged
        yet (but those read within the last half of that), which restarts their ack
        timers: a message's first notice goes at most 3/8 of ack_wait after its read."""
        loop = asyncio.get_running_loop()
        errors = self._nats.errors
        while True:
            period = max(self.ack_wait / 4, 0.1)
            await asyncio.sleep(period)
            client = self.conn.client
            if not self._inflight or not client.is_connected:
                continue
            now = loop.time()
            due = [t for t, at in self._inflight.items() if at <= now - period / 2]
            try:
                for token in due:
                    if token in self._inflight:
                        self._inflight[token] = now
                        await client.publish(token, _PROGRESS)
                        self.kept_alive += 1
            except errors.Error as exc:
                self.last_error = f"progress: {_reason(exc)}"

    # -- acknowledging (the writer thread) -----------------------------------------

    def ack(self, tokens: list[Any]) -> None:
        tokens = [t for t in tokens if t is not None]
        if not tokens:
            return
        try:
            self.conn.call(self._ack(tokens), timeout=ACK_TIMEOUT + 5)
        except TimeoutError:
            pass  # cancelled: kept to be sent again (see _ack)
        except RuntimeError:  # the loop is closed: they come again after ack_wait
            self.acks_unconfirmed += len(tokens)

    async def _ack(self, tokens: list[str]) -> None:
        """ "+ACK" for ``tokens``, and again for those not confirmed before, then one
        flush. What is not confirmed is kept to go with the next acknowledgement (or the
        drain's end, or close): at most ``UNCONFIRMED_MAX``, the oldest dropped (their
        messages come again after ack_wait)."""
        client = self.conn.client
        again, self._unconfirmed = self._unconfirmed, []
        confirmed = False
        try:
            if client.is_connected:
                publish = client.publish
                for token in again:
                    await publish(token, _ACK)
                for token in tokens:
                    await publish(token, _ACK)
                await client.flush(timeout=ACK_TIMEOUT)
                confirmed = True
            else:
                self.last_error = "ack: not connected"
        except (self._nats.errors.Error, TimeoutError, OSError) as exc:
            self.last_error = f"ack: {_reason(exc)}"
        finally:
            if confirmed:
                self.acks_resent += len(again)
            else:
                self.acks_unconfirmed += len(tokens)
                kept = again + tokens + self._unconfirmed
                if len(kept) > UNCONFIRMED_MAX:
                    self.acks_dropped += len(kept) - UNCONFIRMED_MAX
                    kept = kept[-UNCONFIRMED_MAX:]
                self._unconfirmed = kept
            inflight = self._inflight
            for token in tokens:
                inflight.pop(token, None)
            self._progress_at = asyncio.get_running_loop().time()

    # -- what it shows -------------------------------------------------------------

    def lag(self) -> int | None:
        return self._lag

    def stats(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "durable": self.durable,
            "ack_pending": self._ack_pending,
            "acks_unconfirmed": self.acks_unconfirmed,
            "acks_resent": self.acks_resent,
            "acks_dropped": self.acks_dropped,
            "kept_alive": self.kept_alive,
            "returned": self.returned,
            "given_up": self.given_up,
            "read_errors": self.read_errors,
            "left_unacked": self.left_unacked,
            "reconnects": self.conn.reconnects,
            "last_error": self.last_error or self.conn.last_error,
        }

    def close(self) -> None:
        """Send what acknowledgements are still unconfirmed (when connected), then close
        the connection."""
        if self._keeper is not None and not self.conn.closed:
            with contextlib.suppress(Exception):
                self.conn.call(_cancel(self._keeper), timeout=ACK_TIMEOUT)
            if self._unconfirmed and self.conn.client.is_connected:
                with contextlib.suppress(Exception):
                    self.conn.call(self._ack([]), timeout=ACK_TIMEOUT + 1)
        self.conn.close()


async def _add_stream(js: Any, errors: Any, name: str, subjects: list[str]) -> None:
    """Create the stream ``name`` taking ``subjects``; one made meanwhile by another run
    will do."""
    try:
        await js.add_stream(name=name, subjects=subjects)
    except errors.BadRequestError as exc:
        why = getattr(exc, "description", None) or _reason(exc)
        try:
            await js.stream_info(name)
        except errors.NotFoundError:
            raise ConfigError(
                f"cannot create the JetStream stream {name!r} taking {', '.join(subjects)}: {why}"
            ) from None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class NatsSink(Sink):
    """Publishes each result to ``subject`` and each failure to ``<subject>.failures``
    with JetStream acknowledgements (see the module docstring). ``stream``: the stream
    that takes them, created if missing (or given the subjects it lacks); without it,
    some stream must take both subjects already. ``key``: how plain items (not
    messages) are keyed."""

    takes_messages = True

    def __init__(
        self,
        conn: NatsConnection,
        *,
        subject: str,
        stream: str | None = None,
        key: KeyFunction = content_key,
        name: str = "",
    ) -> None:
        self._nats = _nats()
        self.conn = conn
        self.subject = subject
        self.failures_subject = f"{subject}.failures"
        self.stream = stream
        self.name = name or f"nats subject {subject!r}"
        self._key = key
        self.written = 0
        self.failed = 0
        #: Publishes acknowledged by JetStream, those it found repeated (its duplicate
        #: window dropped them), those published again for want of an answer.
        self.published = 0
        self.duplicates = 0
        self.republished = 0
        # The loop thread's own: each publish not yet acknowledged, with its future.
        self._unsettled: list[tuple[tuple[str, bytes, str], Any]] = []
        self._js: Any = None
        try:
            conn.call(self._open())
        except ConfigError:
            raise
        except self._nats.js.errors.ServiceUnavailableError:
            raise OutputError(
                f"{self.name}: JetStream does not answer (is the server started with -js?)"
            ) from None
        except (self._nats.errors.Error, OSError, TimeoutError) as exc:
            raise OutputError(f"{self.name}: {_reason(exc)}") from None

    @classmethod
    def open(cls, endpoint: Endpoint, *, key: str | None) -> NatsSink:
        """The sink a URL names (``subject``, ``stream``)."""
        subject = endpoint.need("subject", "a NATS output needs the subject to publish to")
        stream = endpoint.params.get("stream") or None
        if stream is not None:
            _check_name(endpoint, "stream", stream)
        conn = connect_nats(endpoint, OutputError)
        try:
            return cls(
                conn,
                subject=subject,
                stream=stream,
                key=content_key if key is None else field_key(key),
                name=endpoint.name,
            )
        except BaseException:
            conn.close()
            raise

    async def _open(self) -> None:
        errors = self._nats.js.errors
        js = self.conn.client.jetstream(timeout=API_TIMEOUT)
        self._js = js
        subjects = [self.subject, self.failures_subject]
        missing: list[str] = []
        for subject in subjects:
            try:
                owner = await js.find_stream_name_by_subject(subject)
            except errors.NotFoundError:
                missing.append(subject)
                continue
            if self.stream is not None and owner != self.stream:
                raise ConfigError(
                    f"{self.name}: the subject {subject!r} goes to the stream {owner!r}, "
                    f"not {self.stream!r}"
                )
        if not missing:
            return
        if self.stream is None:
            raise ConfigError(
                f"{self.name}: no JetStream stream takes the subject {missing[0]!r}: add "
                "&stream=NAME to the URL to create one"
            )
        try:
            info = await js.stream_info(self.stream)
        except errors.NotFoundError:
            await _add_stream(js, errors, self.stream, subjects)
        else:
            config = info.config
            await js.update_stream(config.evolve(subjects=[*(config.subjects or []), *missing]))

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        keys, items, values = keyed(inputs, values, self._key)
        records: list[tuple[str, bytes, str]] = []
        written = failed = 0
        for key, item, value in zip(keys, items, values, strict=True):
            if type(value) is not Failure:
                data = encode_result(item, value)
                if type(data) is bytes:
                    records.append((self.subject, data, _msg_id(key)))
                    written += 1
                    continue
                value = data
            records.append(
                (self.failures_subject, failure_body(key, item, value), _msg_id(key, "failure:"))
            )
            failed += 1
        try:
            self.conn.call(self._publish(records))
        except RuntimeError as exc:  # the loop is closed
            raise OutputError(f"cannot write to {self.name}: {exc}") from None
        self.written += written
        self.failed += failed

    async def _publish(self, records: list[tuple[str, bytes, str]]) -> None:
        """Publish ``records``, each in flight with its future. One that cannot be sent
        now, and every one after a stall (nats-py holds at most 4,000 publishes in flight,
        and frees room only as acknowledgements come back), gets no future: the commit
        publishes it again."""
        js = self._js
        errors = self._nats.errors
        unsettled = self._unsettled
        stalled = False
        for record in records:
            future = None
            if not stalled:
                subject, data, msg_id = record
                try:
                    future = await js.publish_async(
                        subject, data, wait_stall=REPUBLISH_AFTER, headers={"Nats-Msg-Id": msg_id}
                    )
                except errors.ConnectionClosedError:
                    raise OutputError(
                        f"cannot write to {self.name}: the connection is closed "
                        f"({self.conn.last_error or 'gone'})"
                    ) from None
                except self._nats.js.errors.TooManyStalledMsgsError:
                    stalled = True
                except errors.Error:
                    pass
            unsettled.append((record, future))

    def commit(self) -> None:
        """Return once JetStream acknowledged every publish so far (publishing again
        those it did not answer, for up to ``PUBLISH_TIMEOUT`` seconds)."""
        if self._unsettled:
            try:
                self.conn.call(self._settle())
            except RuntimeError as exc:
                raise OutputError(f"cannot write to {self.name}: {exc}") from None

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        errors = self._nats.errors
        js_errors = self._nats.js.errors
        again = (
            js_errors.NoStreamResponseError,
            js_errors.ServiceUnavailableError,
            errors.TimeoutError,
            errors.NoRespondersError,
            errors.ConnectionReconnectingError,
        )
        deadline = loop.time() + PUBLISH_TIMEOUT
        pause = 0.05
        why = ""
        while self._unsettled:
            futures = [f for _r, f in self._unsettled if f is not None]
            if futures:
                timeout = max(min(REPUBLISH_AFTER, deadline - loop.time()), 0.01)
                await asyncio.wait(futures, timeout=timeout)
            retry: list[tuple[str, bytes, str]] = []
            unsettled, self._unsettled = self._unsettled, []
            for record, future in unsettled:
                if future is None or not future.done() or future.cancelled():
                    if future is not None:
                        future.cancel()
                    retry.append(record)
                    why = why or "no acknowledgement from JetStream"
                    continue
                exc = future.exception()
                if exc is None:
                    self.published += 1
                    self.duplicates += bool(future.result().duplicate)
                elif isinstance(exc, again):
                    retry.append(record)
                    why = _reason(exc)
                else:
                    for _r, f in unsettled:
                        if f is not None:
                            f.cancel()
                    raise OutputError(f"cannot write to {self.name}: {_reason(exc)}")
            if not retry:
                return
            if loop.time() >= deadline:
                raise OutputError(
                    f"cannot write to {self.name}: JetStream did not acknowledge {len(retry):,} "
                    f"of the publishes within {PUBLISH_TIMEOUT:g} s ({why})"
                )
            up = await self.conn.wait_up(deadline - loop.time())
            if self.conn.closed:
                raise OutputError(
                    f"cannot write to {self.name}: the connection is closed "
                    f"({self.conn.last_error or why})"
                )
            await asyncio.sleep(pause)  # JetStream may still be starting after a restart
            pause = min(pause * 2, 1.0)
            if up:
                self.republished += len(retry)
                await self._publish(retry)
            else:
                self._unsettled = [(record, None) for record in retry]

    def stats(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "published": self.published,
            "duplicates": self.duplicates,
            "republished": self.republished,
            "reconnects": self.conn.reconnects,
        }

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.conn.close()


def _msg_id(key: str, prefix: str = "") -> str:
    """The ``Nats-Msg-Id`` of a record: its key, or a digest of a key that cannot be a
    header's value (a line break, a control character)."""
    if not key.isprintable():
        key = "xxh3:" + xxhash.xxh3_128_hexdigest(key.encode("utf-8", "surrogatepass"))
    return prefix + key
