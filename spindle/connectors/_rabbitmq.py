"""RabbitMQ: a durable queue as a source and as a sink (``pip install 'spindle[rabbitmq]'``).

aio-pika is asyncio only, and a delivery tag can be acknowledged only on the channel that
delivered it, so each connector owns a :class:`~spindle.connectors._loop_thread.LoopThread`
holding its one connection and channel; the run's threads hand it coroutines::

    broker ──basic.deliver──▶ loop thread: buffer (never more than the prefetch)
                                     │
    source thread: read(n, wait) ────┴─ takes up to n ─▶ Messages (parsed in the caller's thread)
    writer thread: ack(tokens) ──▶ loop thread: basic.ack(T, multiple=True), T the highest tag
                                   below which every tag is durable; tags above T one by one
    connection or channel lost ──▶ generation + 1: buffer and ack state dropped, reconnect
                                   with backoff, consume again (the broker redelivers)

The source consumes a durable queue (declared if missing; an existing one is used as it is,
so a quorum queue or one with a TTL works too). The prefetch (``basic.qos``) is the run's
bound (:meth:`RabbitSource.set_bound`, at most 65,535): the broker never holds more of this
consumer's messages unacknowledged, so the buffer is bounded by it, and the source's count
of messages delivered and not acknowledged (``unacked``) is the broker's. With ``drain``
the source ends once its buffer is empty, none of its own messages is unacknowledged (a
connection lost before their acknowledgements would bring them back) and the queue has no
ready message (two passive declares in a row, the second a barrier behind any delivery
already on its way). Messages another consumer holds unacknowledged are not waited for.
So a drain's :meth:`~RabbitSource.read` may wait past its ``wait`` for the run's
acknowledgements; a stopped run (a Ctrl-C, which drops messages that are then never
acknowledged) wakes it with :meth:`~RabbitSource.stop_reading`, and
:meth:`~RabbitSource.close` does too.

Acknowledging (``ack``): a token is ``(generation, delivery_tag)``. Results come back out of
order (an unordered pipeline, or chunks of different speeds), and ``basic.ack(multiple=True)``
acknowledges every tag up to the one it names, so it may only name the highest tag ``T``
below which every tag is durable (the *frontier*); tags acknowledged above the frontier go
singly at once. A multiple ack must name a tag still unacknowledged (RabbitMQ closes the
channel with ``PRECONDITION_FAILED - unknown delivery tag`` otherwise, checked against
RabbitMQ 3.10), so it names the highest tag of the newly covered range that did not go
singly, or nothing if all did. A token of a dead channel (another generation) is dropped:
the broker requeued that message when the channel died and gives it again, marked
redelivered. Tags acknowledged twice or never delivered are ignored. Nothing about a
stale token ever reaches the new channel.

Keys: the message's ``message_id`` property when set. spindle's sink sets it to the
record's key, and aio-pika and aiormq set a random one at each publish that travels with
the message, so it is the same at every redelivery. A message without one is keyed by the
XXH3-128 digest of its body, which is :func:`~spindle.connectors._keys.content_key` of the
body's text: the key a line of a text file with that content gets. Two messages without an
id and with the same body are therefore one record, which for a keyed sink is right (the
same input gives the same result). A delivery tag is no key: it is per channel and starts
again at 1 on each. ``key=FIELD`` keys by a field of the body, as for Redis.

The sink publishes each result (its JSON, what a next ``spindle map`` reading the queue
gets) to a durable queue, persistent (``delivery_mode=2``), ``mandatory`` (a queue deleted
meanwhile is an error, not a silent loss), ``message_id`` = the record's key; failures go
to ``<queue>.failures`` as a JSON object with ``key``, ``input``, ``error``, ``message``,
``traceback``, ``attempts``. ``write`` publishes a chunk pipelined (every publish sent,
then the confirms come), ``commit`` waits for every publisher confirm (for as long as the
broker holds publishers back: a memory or disk alarm); publishes lost with a connection
are published again once it is back (at least once: the same ``message_id`` may then come
twice). A run that never commits (a file into a queue) waits for the confirms once 10,000
are outstanding, and at ``close``.

Client, by measurement (2-core VM, RabbitMQ 3.10 on the same machine, 20,000 messages,
persistent): aio-pika's own ``Queue.consume`` (an ``IncomingMessage`` and a task a message)
consumed and acknowledged 14,200-14,800 messages/s, the same channel's aiormq
``basic_consume`` underneath 20,700-20,900/s; publishing with confirms, 1,000 at once,
aio-pika's ``Exchange.publish`` 8,600-9,100/s against aiormq's ``basic_publish``
11,000-11,300/s. So aio-pika opens the connection and the channel, and the deliveries,
acknowledgements and publishes go through its aiormq channel.

Figures (same machine, shared with other work, load average 1.5-2.5; two runs each, fresh
interpreters): 100,000 persistent messages read and acknowledged by this source alone, a
read of up to 1,024 then its ack, as a stream run does: 18,900 and 19,000 msg/s (5.3 s).
``spindle map bench.work:tiny amqp://...?queue=Q -o postgresql://...?table=T --drain`` of
100,000 messages: 17,700 and 15,000 msg/s over the whole command (5.7 and 6.7 s, start-up
included), every row written and the queue empty after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from .._errors import ConfigError, SpindleError
from .._failure import Failure
from ._base import AckSource, Message, Sink
from ._bodies import decode_body, encode_result, failure_body, keyed_body
from ._errors import InputError, OutputError
from ._keys import KeyFunction, content_key, field_key, keyed
from ._loop_thread import LoopThread
from ._urls import Endpoint, redact

if TYPE_CHECKING:
    import aio_pika.abc
    import aiormq.abc

__all__ = ["RabbitSink", "RabbitSource"]

T = TypeVar("T")

#: Seconds to open a connection (and its channel, and declare the queue).
CONNECT_TIMEOUT = 5.0
#: Seconds a lost connection is tried again before the connector gives up.
RECONNECT_FOR = 60.0
#: The first pause between two attempts to reconnect, doubled up to the last.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: Seconds to close a connection before leaving it.
CLOSE_TIMEOUT = 5.0
#: The prefetch when the run never told its bound (:meth:`RabbitSource.set_bound`).
PREFETCH = 1024
#: RabbitMQ's largest prefetch (``basic.qos`` takes a short integer).
MAX_PREFETCH = 65_535
#: Seconds between two refreshes of the queue's ready count (lag).
LAG_EVERY = 1.0
#: Publishes a sink holds unconfirmed before ``write`` waits for their confirms (a run
#: without commits: a file into a queue).
MAX_UNCONFIRMED = 10_000


def _modules() -> tuple[Any, Any]:
    try:
        import aio_pika
        import aiormq
    except ImportError:
        raise ConfigError(
            "RabbitMQ needs the aio-pika client: pip install 'spindle[rabbitmq]'"
        ) from None
    for client in ("aiormq", "aio_pika"):
        # What these clients log (a refused connection, one closed by the broker) spindle
        # says itself, in its one-line errors and its stats. Without a handler of the
        # program's, Python's last-resort handler would print their records on standard
        # error beside spindle's; a NullHandler stops only that: a program that configures
        # logging still gets them through its own handlers.
        logger = logging.getLogger(client)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
    return aio_pika, aiormq


def _link_errors() -> tuple[type[BaseException], ...]:
    """What a lost connection or closed channel raises."""
    _, aiormq = _modules()
    return (
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        OSError,
        TimeoutError,
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Link:
    """One connection and one channel to the broker, held by a loop thread, opened again
    with backoff when the broker closes either.

    On each new connection: ``setup(connection, channel)`` declares what the owner needs
    and returns the channel to go on with; then :attr:`channel` and :attr:`generation`
    are set, and ``started(channel)`` runs (a source consumes). ``lost()`` runs when the
    current channel dies, before any reconnection, so that the owner drops what belonged
    to it. The owner reads :attr:`channel` and :attr:`generation` on the loop thread only.
    """

    def __init__(
        self,
        url: str,
        name: str,
        role: type[InputError] | type[OutputError],
        *,
        confirms: bool,
        setup: Callable[[Any, Any], Awaitable[Any]],
        started: Callable[[Any], Awaitable[None]] | None = None,
        lost: Callable[[], None] | None = None,
        give_up_after: float = RECONNECT_FOR,
    ) -> None:
        self.aio_pika, self.aiormq = _modules()
        self.errors = _link_errors()
        self.url = url
        self.name = name
        self.role = role
        self.confirms = confirms
        self.give_up_after = give_up_after
        self._setup = setup
        self._started = started
        self._lost = lost
        #: The aiormq channel of the live connection; None while there is none.
        self.channel: aiormq.abc.AbstractChannel | None = None
        #: Counts the channels: a token of another generation is of a dead channel.
        self.generation = 0
        #: Connections opened again after a loss.
        self.reconnects = 0
        #: Set once the connection is lost for good; the owner raises it.
        self.failed: SpindleError | None = None
        self.closing = False
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._closed = False
        self.loop = LoopThread("spindle-rabbitmq")

    def open(self) -> None:
        """Open the first connection: an error of ``role`` (or ConfigError) naming the
        URL when it cannot be opened, the loop thread then closed."""
        name, role = self.name, self.role
        try:
            self.loop.call(self._first(), timeout=CONNECT_TIMEOUT * 4)
        except TimeoutError:
            self.loop.close()
            raise role(
                f"cannot connect to {name}: no answer within {CONNECT_TIMEOUT * 4:g} s"
            ) from None
        except BaseException:
            self.loop.close()
            raise

    # -- on the loop thread ------------------------------------------------------------

    async def _first(self) -> None:
        self._changed = asyncio.Event()
        try:
            await self._connect()
        except ValueError as exc:  # a URL the client cannot take
            raise ConfigError(f"{self.name}: {_reason(exc)}") from None
        except self.errors as exc:
            raise self.role(f"cannot connect to {self.name}: {_reason(exc)}") from None

    async def _connect(self) -> None:
        connection = await asyncio.wait_for(
            self.aio_pika.connect(
                self.url,
                timeout=CONNECT_TIMEOUT,
                client_properties={"connection_name": f"spindle {self.name}"},
            ),
            CONNECT_TIMEOUT * 2,
        )
        try:
            channel = await self.open_channel(connection)
            channel = await asyncio.wait_for(self._setup(connection, channel), CONNECT_TIMEOUT)
        except BaseException:
            await self._close_quietly(connection)
            raise
        self.generation += 1
        self._connection = connection
        self.channel = channel
        connection.close_callbacks.add(partial(self._on_close, connection))
        channel.on_consumer_cancel_callbacks.add(partial(self._on_close, channel))
        if self._started is not None:
            try:
                await asyncio.wait_for(self._started(channel), CONNECT_TIMEOUT)
            except BaseException:
                self.channel = self._connection = None
                await self._close_quietly(connection)
                raise

    async def open_channel(self, connection: Any) -> Any:
        """A new channel of ``connection`` (aiormq's, under aio-pika's), whose closing
        counts as the connection's loss once it is the current one."""
        opened = connection.channel(
            publisher_confirms=self.confirms, on_return_raises=self.confirms
        )
        await opened.initialize()
        channel = await opened.get_underlay_channel()
        opened.close_callbacks.add(partial(self._on_close, channel))
        return channel

    async def _close_quietly(self, connection: Any) -> None:
        with contextlib.suppress(*self.errors):
            await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)

    def _on_close(self, what: object, *args: Any) -> None:
        """The connection, the channel or the consumer ``what`` is gone: if it is the
        current one, drop it and reconnect."""
        if self.closing or self.channel is None:
            return
        if what is not self.channel and what is not self._connection:
            return  # one of an earlier generation, or a channel replaced at setup
        self.channel = None
        if self._lost is not None:
            self._lost()
        self.wake()
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        old, self._connection = self._connection, None
        if old is not None:
            await self._close_quietly(old)
        started = time.monotonic()
        pause = BACKOFF_FIRST
        while not self.closing:
            try:
                await self._connect()
            except self.errors as exc:
                if time.monotonic() - started >= self.give_up_after:
                    self.failed = self.role(
                        f"lost the connection to {self.name} and could not open it again "
                        f"within {self.give_up_after:g} s: {_reason(exc)}"
                    )
                    self.wake()
                    return
                await asyncio.sleep(pause)  # the backoff between two attempts
                pause = min(pause * 2, BACKOFF_MAX)
            else:
                self.reconnects += 1
                self.wake()
                return

    def drop(self) -> None:
        """Give up the current channel, which did not answer in time (a late answer
        would be taken for the next one's): reconnect."""
        if self.channel is not None:
            self._on_close(self.channel)

    def wake(self) -> None:
        """Wake whoever waits in :meth:`changed`."""
        if self._changed is not None:
            self._changed.set()

    def wake_from_any_thread(self) -> None:
        """:meth:`wake`, handed to the loop thread (a no-op once it has stopped)."""
        with contextlib.suppress(RuntimeError):
            self.loop.loop.call_soon_threadsafe(self.wake)

    def clear(self) -> None:
        """Called by a waiter before it looks at the state it waits on."""
        if self._changed is not None:
            self._changed.clear()

    async def changed(self, within: float | None) -> None:
        """Wait for :meth:`wake` (a delivery, an acknowledgement, a lost or reopened
        connection, closing), at most ``within`` seconds (None: no limit)."""
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    async def _shutdown(self) -> None:
        self.closing = True
        self.wake()
        task = self._reconnecting
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        self.channel = None
        if connection is not None:
            await self._close_quietly(connection)

    # -- from any thread ---------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait for it."""
        return self.loop.call(coro, timeout)

    def close(self) -> None:
        """Close the connection and join the loop thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.call(self._shutdown(), timeout=CLOSE_TIMEOUT * 2)
        except TimeoutError:
            pass  # left to the broker, which sees the socket close with the loop
        finally:
            self.loop.close()


async def _declared(link: _Link, connection: Any, channel: Any, queue: str) -> tuple[Any, int]:
    """Use ``queue`` as it is when it exists (whatever its arguments: a quorum queue, a
    TTL), else declare it durable. Returns the channel to go on with (a passive declare
    of a missing queue closes the channel it was sent on) and the queue's ready count."""
    try:
        ok = await channel.queue_declare(queue, passive=True)
    except link.aiormq.exceptions.ChannelNotFoundEntity:
        channel = await link.open_channel(connection)
        ok = await channel.queue_declare(queue, durable=True)
    return channel, int(ok.message_count or 0)


#: A delivery as the loop thread keeps it: body, message_id, delivery tag, redelivered.
_Delivery = tuple[bytes, "str | None", int, bool]


class RabbitSource(AckSource):
    """A consumer of a durable RabbitMQ queue (see the module docstring).

    ``url``: the broker's (``amqp://USER:PASS@HOST:PORT/VHOST``, or ``amqps://``), without
    spindle's parameters. ``fmt``: ``"jsonl"`` (each body parsed as JSON) or ``"text"``.
    ``key``: the field of the body that keys each record in a keyed sink (default: the
    message's id, else a digest of its body). ``give_up_after``: seconds a lost connection
    is tried again before :meth:`read` raises :class:`~spindle.connectors.InputError`.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        fmt: str = "jsonl",
        key: str | None = None,
        drain: bool = False,
        name: str = "",
        give_up_after: float = RECONNECT_FOR,
    ) -> None:
        self.queue = queue
        self.fmt = fmt
        self.drain = drain
        self.name = name or f"{redact(url)} queue {queue!r}"
        #: The prefetch asked of the broker (the run's bound, see :meth:`set_bound`).
        self.prefetch = PREFETCH
        self._json = fmt == "jsonl"
        self._key: KeyFunction | None = (
            None if key is None else field_key(key, without="messages by their id")
        )
        # The loop thread's state: deliveries not read yet, and the current channel's
        # acknowledgements (see the module docstring).
        self._buffer: deque[_Delivery] = deque()
        self._consuming = False
        #: The run takes no more messages (see stop_reading).
        self._stopped = False
        self._frontier = 0  # every tag up to it is acknowledged
        self._delivered = 0  # the highest tag delivered
        self._done: set[int] = set()  # acknowledged, above the frontier
        self._single: set[int] = set()  # of those, the ones sent to the broker singly
        self._ack_lock = asyncio.Lock()
        self._lag: int | None = None
        self._lag_at = 0.0
        #: Messages delivered on the current channel and not acknowledged, the buffer's
        #: included: what the broker holds for this consumer (at most the prefetch).
        self.unacked = 0
        #: Messages read that the broker marked redelivered.
        self.redelivered = 0
        #: Acknowledgements dropped because their channel had died (the messages come again).
        self.stale_acks = 0
        #: ``basic.ack`` frames sent with multiple=True, and singly.
        self.multiple_acks = 0
        self.single_acks = 0
        self._link = _Link(
            url,
            self.name,
            InputError,
            confirms=False,
            setup=self._setup,
            started=self._started,
            lost=self._lost,
            give_up_after=give_up_after,
        )
        self._link.open()

    @classmethod
    def open(cls, endpoint: Endpoint, *, fmt: str, key: str | None, drain: bool) -> RabbitSource:
        """The source a URL names (``queue``)."""
        queue = endpoint.need("queue", "a RabbitMQ source needs the queue to consume")
        return cls(
            endpoint.client_url, queue=queue, fmt=fmt, key=key, drain=drain, name=endpoint.name
        )

    def stop_reading(self) -> None:
        """A read returns now, a drain's too, rather than wait for the acknowledgements
        of messages the stop dropped."""
        self._stopped = True
        self._link.wake_from_any_thread()

    def set_bound(self, max_unacked: int) -> None:
        """The prefetch: the run's bound (at most 65,535, RabbitMQ's most). It takes effect
        when the consumer starts, at the first :meth:`read`, and at each reconnection."""
        self.prefetch = max(1, min(max_unacked, MAX_PREFETCH))

    # -- on the loop thread ------------------------------------------------------------

    async def _setup(self, connection: Any, channel: Any) -> Any:
        channel, self._lag = await _declared(self._link, connection, channel, self.queue)
        self._lag_at = time.monotonic()
        return channel

    async def _started(self, channel: Any) -> None:
        if self._consuming:
            await self._consume(channel)

    async def _consume(self, channel: Any) -> None:
        await channel.basic_qos(prefetch_count=self.prefetch, timeout=CONNECT_TIMEOUT)
        await channel.basic_consume(
            self.queue, partial(self._deliver, channel), timeout=CONNECT_TIMEOUT
        )

    def _deliver(self, channel: Any, message: Any) -> None:
        if channel is not self._link.channel:
            return  # of a channel that died meanwhile: the broker gives it again
        delivery = message.delivery
        tag = delivery.delivery_tag
        self._buffer.append(
            (message.body, message.header.properties.message_id, tag, delivery.redelivered)
        )
        self._delivered = tag
        self.unacked += 1
        self._link.wake()

    def _lost(self) -> None:
        self._buffer.clear()
        self._frontier = self._delivered = 0
        self._done.clear()
        self._single.clear()
        self.unacked = 0

    async def _take(self, max_n: int, wait: float) -> tuple[int, list[_Delivery]]:
        """Up to ``max_n`` deliveries and their generation, waiting at most ``wait``
        seconds for the first; with ``drain``, waiting until there is one or the end."""
        link = self._link
        if not self._consuming:
            self._consuming = True
            if link.channel is not None:
                try:
                    await self._consume(link.channel)
                except TimeoutError:
                    link.drop()  # the reconnection consumes
                except link.errors:
                    pass  # the channel died: the reconnection consumes
        deadline = time.monotonic() + wait
        next_look = 0.0
        while True:
            link.clear()
            if link.failed is not None:
                raise link.failed
            if link.closing or self._stopped:
                return link.generation, []
            now = time.monotonic()
            if link.channel is not None and now >= self._lag_at + LAG_EVERY:
                await self._refresh_lag()
                continue
            buffer = self._buffer
            if buffer:
                return link.generation, [buffer.popleft() for _ in range(min(max_n, len(buffer)))]
            if not self.drain:
                if now >= deadline:
                    return link.generation, []
                await link.changed(deadline - now)
            elif link.channel is not None and self.unacked == 0 and now >= next_look:
                next_look = now + wait
                if await self._queue_empty():
                    return link.generation, []
            elif link.channel is None:
                await link.changed(None)  # woken once it is open again, or given up
            else:
                # Woken by a delivery or the last acknowledgement; meanwhile the queue is
                # looked at every ``wait`` seconds when idle, its lag every second.
                await link.changed(max(next_look - now, 0.0) if self.unacked == 0 else LAG_EVERY)

    async def _queue_empty(self) -> bool:
        """Whether the queue has no ready message and none is on its way here. The
        broker answers the second passive declare after any delivery it had sent before
        its answer to the first, so an empty buffer after it means none is in transit."""
        try:
            for _ in range(2):
                if await self._ready() or self._buffer or self.unacked:
                    return False
        except self._link.errors:
            return False  # the channel died: a reconnection follows
        return True

    async def _ready(self) -> int:
        channel = self._link.channel
        if channel is None:
            raise self._link.aiormq.exceptions.ChannelInvalidStateError("no channel")
        try:
            ok = await channel.queue_declare(self.queue, passive=True, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            self._link.drop()
            raise
        self._lag = int(ok.message_count or 0)
        self._lag_at = time.monotonic()
        return self._lag

    async def _refresh_lag(self) -> None:
        self._lag_at = time.monotonic()
        with contextlib.suppress(*self._link.errors):
            await self._ready()

    async def _ack(self, tokens: list[Any]) -> None:
        # One at a time, decided and sent: frames sent out of the order they were decided
        # in could name a tag another frame already acknowledged.
        async with self._ack_lock:
            await self._ack_now(tokens)

    async def _ack_now(self, tokens: list[Any]) -> None:
        link = self._link
        channel = link.channel
        generation = link.generation
        frontier = self._frontier
        delivered = self._delivered
        done = self._done
        fresh: list[int] = []
        for token_generation, tag in tokens:
            if token_generation != generation or channel is None:
                self.stale_acks += 1
            elif frontier < tag <= delivered and tag not in done:
                fresh.append(tag)  # else acknowledged already: never twice
        if not fresh or channel is None:
            return
        done.update(fresh)
        self.unacked -= len(fresh)
        top = frontier
        while top + 1 in done:
            top += 1
        single = self._single
        # Decided here, sent below: the frontier's multiple ack names the highest tag of
        # (frontier, top] that did not go singly, and the tags above top go singly.
        named = top
        while named > frontier and named in single:
            named -= 1
        for tag in range(frontier + 1, top + 1):
            done.discard(tag)
            single.discard(tag)
        self._frontier = top
        singles = [tag for tag in fresh if tag > top]
        single.update(singles)
        try:
            await asyncio.wait_for(
                self._send_acks(channel, named if named > frontier else 0, singles),
                CONNECT_TIMEOUT,
            )
        except TimeoutError:
            link.drop()  # the connection takes no frame: open another
        except link.errors:
            pass  # the channel died: its messages come again, redelivered
        if self.unacked == 0:
            link.wake()  # a drain waits for its own messages' acknowledgements

    async def _send_acks(self, channel: Any, multiple: int, singles: list[int]) -> None:
        if multiple:
            await channel.basic_ack(multiple, multiple=True, wait=False)
            self.multiple_acks += 1
        for tag in singles:
            await channel.basic_ack(tag, wait=False)
            self.single_acks += 1

    # -- from the run's threads ----------------------------------------------------------

    def read(self, max_n: int, wait: float) -> list[Message]:
        # A drain waits for its own messages' acknowledgements (their thread gives them)
        # or for close(), which wakes it; otherwise ``wait`` bounds the read.
        timeout = None if self.drain else wait + CONNECT_TIMEOUT * 4
        try:
            generation, raw = self._link.call(self._take(max_n, wait), timeout)
        except (RuntimeError, concurrent.futures.CancelledError):
            if self._link.closing:
                return []  # closed while reading
            raise
        except TimeoutError:
            raise InputError(f"cannot read {self.name}: its connection is stuck") from None
        return self._messages(generation, raw)

    def _messages(self, generation: int, raw: list[_Delivery]) -> list[Message]:
        out: list[Message] = []
        digest = xxhash.xxh3_128_hexdigest
        for data, message_id, tag, redelivered in raw:
            mid = message_id or digest(data)
            body = decode_body(data, mid, self._json)
            body, key = keyed_body(body, mid, self._key)
            if redelivered:
                self.redelivered += 1
            out.append(Message(body, key, (generation, tag), redelivered))
        return out

    def ack(self, tokens: list[Any]) -> None:
        """Acknowledge (see the module docstring). A token of a dead channel is dropped,
        never sent: that message comes again."""
        if not tokens or self._link.closing:
            return
        try:
            self._link.call(self._ack(tokens))
        except RuntimeError:
            if not self._link.closing:
                raise

    # -- what it shows -------------------------------------------------------------------

    def lag(self) -> int | None:
        """The queue's ready messages, refreshed at most once a second (a passive declare,
        also while the run reads nothing: its intake full)."""
        link = self._link
        if time.monotonic() >= self._lag_at + LAG_EVERY and not link.closing:
            with contextlib.suppress(TimeoutError, RuntimeError, concurrent.futures.CancelledError):
                link.call(self._refresh_lag(), CONNECT_TIMEOUT * 2)
        return self._lag

    def stats(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "prefetch": self.prefetch,
            "delivered_unacked": self.unacked,
            "reconnects": self._link.reconnects,
            "redelivered": self.redelivered,
            "stale_acks": self.stale_acks,
            "multiple_acks": self.multiple_acks,
            "single_acks": self.single_acks,
        }

    def close(self) -> None:
        """Close the connection: what was delivered and not acknowledged goes back to
        the queue. A drain :meth:`read` waiting meanwhile returns an empty list."""
        self._link.close()


#: A message for the sink to publish: queue, body, message_id.
_Record = tuple[str, bytes, str]


class RabbitSink(Sink):
    """Publishes each result to a durable RabbitMQ queue and each failure to
    ``<queue>.failures``, with publisher confirms (see the module docstring). ``key``:
    how plain items (not messages) are keyed."""

    takes_messages = True

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        key: KeyFunction = content_key,
        name: str = "",
        give_up_after: float = RECONNECT_FOR,
    ) -> None:
        self.queue = queue
        self.failures_queue = f"{queue}.failures"
        self.name = name or f"{redact(url)} queue {queue!r}"
        self._key = key
        self.written = 0
        self.failed = 0
        #: Publishes lost with a connection and published again; confirms waited for.
        self.republished = 0
        self.confirmed = 0
        #: Messages published and not confirmed yet.
        self.unconfirmed = 0
        # The loop thread's: the publishes not confirmed yet, a chunk at a time with the
        # channel they went on, each with its task (None: not sent, no channel).
        self._unconfirmed: list[tuple[Any, list[tuple[_Record, asyncio.Task[Any] | None]]]] = []
        self._link = _Link(
            url,
            self.name,
            OutputError,
            confirms=True,
            setup=self._setup,
            give_up_after=give_up_after,
        )
        self._link.open()
        self._properties = self._link.aiormq.spec.Basic.Properties
        self._nack = self._link.aiormq.spec.Basic.Nack
        self._returned = self._link.aiormq.exceptions.PublishError

    @classmethod
    def open(cls, endpoint: Endpoint, *, key: str | None) -> RabbitSink:
        """The sink a URL names (``queue``)."""
        queue = endpoint.need("queue", "a RabbitMQ output needs the queue to publish to")
        return cls(
            endpoint.client_url,
            queue=queue,
            key=content_key if key is None else field_key(key),
            name=endpoint.name,
        )

    async def _setup(self, connection: Any, channel: Any) -> Any:
        for queue in (self.queue, self.failures_queue):
            channel, _ = await _declared(self._link, connection, channel, queue)
        return channel

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        keys, items, values = keyed(inputs, values, self._key)
        records: list[_Record] = []
        written = failed = 0
        for key, item, value in zip(keys, items, values, strict=True):
            if type(value) is not Failure:
                data = encode_result(item, value)
                if type(data) is bytes:
                    records.append((self.queue, data, key))
                    written += 1
                    continue
                value = data
            records.append((self.failures_queue, failure_body(key, item, value), key))
            failed += 1
        self._link.call(self._send(records))
        self.written += written
        self.failed += failed
        if self.unconfirmed >= MAX_UNCONFIRMED:
            self.commit()  # a run that never commits (a file into a queue): bounded

    def commit(self) -> None:
        """Return once the broker confirmed every message published so far.

        Raises :class:`~spindle.connectors.OutputError` when it refused one (nack, or
        returned: the queue is gone) or the connection could not be opened again."""
        if self.unconfirmed:
            self._link.call(self._confirm())

    # -- on the loop thread ------------------------------------------------------------

    async def _send(self, records: list[_Record]) -> None:
        channel = self._link.channel
        if channel is None or channel.is_closed:
            self._unconfirmed.append((None, [(record, None) for record in records]))
        else:
            loop = asyncio.get_running_loop()
            publish = self._publish
            tasks: list[tuple[_Record, asyncio.Task[Any] | None]] = [
                (r, loop.create_task(publish(channel, r))) for r in records
            ]
            self._unconfirmed.append((channel, tasks))
        self.unconfirmed += len(records)

    async def _publish(self, channel: Any, record: _Record) -> Any:
        queue, body, key = record
        properties = self._properties(
            delivery_mode=2, message_id=key, content_type="application/json"
        )
        return await channel.basic_publish(
            body, routing_key=queue, properties=properties, mandatory=True, wait=False
        )

    async def _confirm(self) -> None:
        link = self._link
        while self._unconfirmed:
            batches, self._unconfirmed = self._unconfirmed, []
            self.unconfirmed = 0
            again: list[_Record] = []
            refused: list[str] = []
            for channel, publishes in batches:
                tasks = [task for _, task in publishes if task is not None]
                if tasks:
                    await _settled(channel, tasks)
                for record, task in publishes:
                    if task is None or task.cancelled():
                        again.append(record)
                        continue
                    exc = task.exception()
                    if exc is None:
                        if isinstance(task.result(), self._nack):
                            refused.append(f"{record[0]!r} nacked a message")
                        else:
                            self.confirmed += 1
                    elif isinstance(exc, self._returned):
                        refused.append(f"no queue {record[0]!r} took a message")
                    elif isinstance(exc, link.errors):
                        again.append(record)  # lost with the connection
                    else:
                        raise OutputError(f"cannot publish to {self.name}: {_reason(exc)}") from exc
            if refused:
                raise OutputError(
                    f"cannot publish to {self.name}: {refused[0]} ({len(refused)} refused in all)"
                )
            if again:
                await self._reconnected()
                self.republished += len(again)
                await self._send(again)

    async def _reconnected(self) -> None:
        """Wait for a live channel (raise once the link gave up)."""
        link = self._link
        while True:
            link.clear()
            if link.failed is not None:
                raise link.failed
            channel = link.channel
            if channel is not None and not channel.is_closed:
                return
            if channel is not None:
                link.drop()  # closed, and not told yet: open another
            await link.changed(None)

    # -- what it shows -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "confirmed": self.confirmed,
            "unconfirmed": self.unconfirmed,
            "republished": self.republished,
            "reconnects": self._link.reconnects,
        }

    def close(self) -> None:
        """Wait for the last confirms, then close the connection."""
        try:
            self.commit()
        finally:
            self._link.close()


async def _settled(channel: Any, tasks: list[asyncio.Task[Any]]) -> None:
    """Wait until every publish of ``tasks`` is confirmed or has failed, or ``channel``
    closes: a publish that was under way when its channel closed may never end (aiormq
    leaves it waiting for room in the dead connection's frame buffer, or for a confirm),
    so the rest are then cancelled (and published again)."""
    everything = asyncio.gather(*tasks, return_exceptions=True)
    closing = channel.closing
    try:
        await asyncio.wait([everything, closing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()  # the observer only
    if not everything.done():
        for task in tasks:
            task.cancel()
        await everything
