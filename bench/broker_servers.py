"""The servers of bench/brokers.py: each run's names, and what the harness asks of them.

Every run gets a tag of its own, and everything it makes on a server is named after it
(:class:`Names`): a Redis stream, or the keys of a Celery queue under a key prefix; a
RabbitMQ queue (and Dramatiq's ``.DQ`` and ``.XQ`` beside it); a JetStream stream (its
consumers go with it); a PostgreSQL table (and spindle's ``_failures`` table). The
harness removes them all after the run, whatever happened (:func:`remove`).

A *source* is how a runner's messages wait on the server:

=============  =================================================================
``stream``     a Redis stream, its group ``bench`` made from the stream's start;
               entries ``{data: "<i>"}``
``celery``     Celery's own task messages on the Redis broker (a list per queue)
``queue``      a durable RabbitMQ queue of persistent messages, body ``<i>``
               (JSON), ``message_id`` a random hex string, content type JSON
``dramatiq``   Dramatiq's own messages in a durable RabbitMQ queue
``jetstream``  a JetStream stream on one subject, body ``<i>`` (JSON)
=============  =================================================================

:func:`outstanding` says how many messages are not yet acknowledged, as far as the
server tells: exactly for a Redis group (pending + lag), a Celery queue (listed +
reserved), a JetStream consumer (pending + waiting for an acknowledgement); for
RabbitMQ only the ready messages (a queue's unacknowledged count needs the management
API), so a runner that does not end by itself is done once that reaches zero *and*
its table holds every input (:func:`wait_done`).

Every client is imported inside the function that needs it: the worker modules of
Celery and Dramatiq import this one, and carry nothing they do not use.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

REDIS = os.environ.get("SPINDLE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("SPINDLE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ = os.environ.get("SPINDLE_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
NATS = os.environ.get("SPINDLE_BENCH_NATS", "nats://127.0.0.1:4222")

#: The environment variables that hand a run's tag, and the kill mode, to the worker
#: processes of Celery and Dramatiq (their command lines take a module, not arguments).
TAG_ENV = "SPINDLE_BENCH_TAG"
KILL_ENV = "SPINDLE_BENCH_KILL"

#: The Redis group every Redis-stream runner reads with.
GROUP = "bench"
#: Messages per preload round trip.
PRELOAD_BATCH = 5_000
#: Seconds between two looks at the server by :func:`wait_done`.
POLL = 0.05
#: Seconds :func:`wait_done` waits for missing rows once the broker has nothing left.
STALL = 20.0


@dataclass(frozen=True)
class Names:
    """Everything one run makes on the servers is named after its tag."""

    tag: str

    @classmethod
    def new(cls) -> Names:
        return cls(uuid.uuid4().hex[:10])

    @classmethod
    def from_env(cls) -> Names:
        return cls(os.environ.get(TAG_ENV, "unset"))

    @property
    def table(self) -> str:
        return f"bench_{self.tag}"

    @property
    def stream(self) -> str:
        """The Redis stream."""
        return f"bench:{self.tag}"

    @property
    def queue(self) -> str:
        """The RabbitMQ queue, and the Celery queue on Redis."""
        return f"bench.{self.tag}"

    @property
    def celery_prefix(self) -> str:
        """Kombu's ``global_keyprefix``: every Redis key Celery makes starts with it."""
        return f"bench-{self.tag}/"

    @property
    def jetstream(self) -> str:
        return f"BENCH_{self.tag}"

    @property
    def subject(self) -> str:
        return f"bench.{self.tag}"

    @property
    def durable(self) -> str:
        """The JetStream durable consumer every NATS runner reads with."""
        return f"bench_{self.tag}"


# -- PostgreSQL ---------------------------------------------------------------------------


def create_table(names: Names, keyed: bool) -> None:
    """The table a run writes; without a key, a message written twice shows as two rows."""
    import psycopg

    key = "key text PRIMARY KEY" if keyed else "key text"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {names.table} ({key}, input jsonb, result jsonb)")


def table_counts(names: Names) -> tuple[int, int, int, int, int]:
    """``(rows, distinct inputs, lowest input, highest input, sum of results)``."""
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT input), coalesce(min((input)::bigint), 0), "
            f"coalesce(max((input)::bigint), 0), coalesce(sum((result)::bigint), 0) "
            f"FROM {names.table}"
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3], row[4]


def table_rows(names: Names) -> int:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        try:
            row = conn.execute(f"SELECT count(*) FROM {names.table}").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


# -- preloading (before the clock) ----------------------------------------------------------


async def preload(source: str, names: Names, n: int) -> None:
    """Put ``n`` messages where the runner reads them (Celery and Dramatiq send their
    own: :mod:`bench.brokers_celery`, :mod:`bench.brokers_dramatiq`)."""
    if source == "stream":
        import redis.asyncio as aredis

        client = aredis.Redis.from_url(REDIS)
        try:
            for start in range(0, n, PRELOAD_BATCH):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(n, start + PRELOAD_BATCH)):
                    pipe.xadd(names.stream, {"data": b"%d" % i})
                await pipe.execute()
            await client.xgroup_create(names.stream, GROUP, id="0", mkstream=True)
        finally:
            await client.aclose()
    elif source == "queue":
        import aio_pika

        connection = await aio_pika.connect(RABBITMQ)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(names.queue, durable=True)
            for start in range(0, n, PRELOAD_BATCH):
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(
                                b"%d" % i,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=uuid.uuid4().hex,
                                content_type="application/json",
                            ),
                            routing_key=names.queue,
                        )
                        for i in range(start, min(n, start + PRELOAD_BATCH))
                    )
                )
        finally:
            await connection.close()
    elif source == "jetstream":
        import nats

        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            await js.add_stream(name=names.jetstream, subjects=[names.subject])
            for start in range(0, n, PRELOAD_BATCH):
                acks = [
                    await js.publish_async(names.subject, b"%d" % i)
                    for i in range(start, min(n, start + PRELOAD_BATCH))
                ]
                await asyncio.gather(*acks)
        finally:
            await nc.close()
    else:
        raise ValueError(f"{source}: preloaded by its own module")


# -- what is left on the server ---------------------------------------------------------------


class Watch:
    """Connections kept open to ask, over and over, how far a run is."""

    def __init__(self, source: str, names: Names) -> None:
        self.source = source
        self.names = names
        self.closers: list[Any] = []

    async def __aenter__(self) -> Watch:
        if self.source in ("stream", "celery"):
            import redis.asyncio as aredis

            self.redis = aredis.Redis.from_url(REDIS)
            self.closers.append(self.redis.aclose)
        elif self.source in ("queue", "dramatiq"):
            import aiormq

            self.amqp = await aiormq.connect(RABBITMQ)
            self.closers.append(self.amqp.close)
            self.channel = await self.amqp.channel()
        elif self.source == "jetstream":
            import nats

            self.nats = await nats.connect(NATS)
            self.closers.append(self.nats.close)
            self.js = self.nats.jetstream()
        else:
            raise ValueError(self.source)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for close in reversed(self.closers):
            await close()

    async def outstanding(self) -> int:
        """Messages not acknowledged yet (ready only, for RabbitMQ); -1 if the consumer
        that would tell does not exist yet."""
        names = self.names
        if self.source == "stream":
            for group in await self.redis.xinfo_groups(names.stream):
                if group["name"] == GROUP.encode():
                    return int(group["pending"]) + int(group["lag"] or 0)
            return -1
        if self.source == "celery":
            prefix = names.celery_prefix
            listed = await self.redis.llen(f"{prefix}{names.queue}")
            reserved = await self.redis.hlen(f"{prefix}unacked")
            return int(listed) + int(reserved)
        if self.source in ("queue", "dramatiq"):
            queues = [names.queue] + ([f"{names.queue}.DQ"] if self.source == "dramatiq" else [])
            ready = 0
            for queue in queues:
                declared = await self.channel.queue_declare(queue, passive=True)
                ready += declared.message_count or 0
            return ready
        import nats.js.errors

        try:
            info = await self.js.consumer_info(names.jetstream, names.durable)
        except nats.js.errors.NotFoundError:
            return -1
        return int(info.num_pending) + int(info.num_ack_pending)


async def outstanding(source: str, names: Names) -> int:
    """:meth:`Watch.outstanding`, once."""
    async with Watch(source, names) as watch:
        return await watch.outstanding()


async def dead_lettered(names: Names) -> int:
    """Dramatiq's dead letters: messages it gave up on."""
    import aiormq

    connection = await aiormq.connect(RABBITMQ)
    try:
        channel = await connection.channel()
        result = await channel.queue_declare(f"{names.queue}.XQ", passive=True)
        return result.message_count or 0
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0
    finally:
        await connection.close()


async def wait_done(source: str, names: Names, n: int, limit: float) -> None:
    """Wait until every message is acknowledged and the table holds every input, for
    the runners that do not end by themselves. Raises if ``limit`` seconds go by, or if
    the broker has had nothing left for :data:`STALL` seconds while inputs are missing
    (a message gone from the broker without its row)."""
    import asyncpg

    deadline = time.monotonic() + limit
    empty_since: float | None = None
    conn = await asyncpg.connect(POSTGRES)
    try:
        async with Watch(source, names) as watch:
            while time.monotonic() < deadline:
                if await watch.outstanding() == 0:
                    query = f"SELECT count(DISTINCT input) FROM {names.table}"
                    inputs = await conn.fetchval(query)
                    if inputs >= n:
                        return
                    empty_since = empty_since or time.monotonic()
                    if time.monotonic() - empty_since > STALL:
                        raise RuntimeError(
                            f"nothing left on the broker for {STALL:.0f} s and "
                            f"{n - inputs:,} inputs missing from the table"
                        )
                else:
                    empty_since = None
                await asyncio.sleep(POLL)
        raise RuntimeError(f"not done after {limit:.0f} s")
    finally:
        await conn.close()


# -- removal ------------------------------------------------------------------------------------


def remove(names: Names) -> None:
    """Remove everything a run may have made, on every server; missing things are fine."""
    import psycopg
    import redis

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {names.table}, {names.table}_failures")
    client = redis.Redis.from_url(REDIS)
    try:
        client.delete(names.stream)
        keys = list(client.scan_iter(match=f"{names.celery_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    asyncio.run(_remove_async(names))


async def _remove_async(names: Names) -> None:
    import aiormq
    import nats
    import nats.js.errors

    connection = await aiormq.connect(RABBITMQ)
    try:
        channel = await connection.channel()
        for queue in (names.queue, f"{names.queue}.DQ", f"{names.queue}.XQ"):
            await channel.queue_delete(queue)
    finally:
        await connection.close()
    nc = await nats.connect(NATS)
    try:
        try:
            await nc.jetstream().delete_stream(names.jetstream)
        except nats.js.errors.NotFoundError:
            pass
    finally:
        await nc.close()


async def preloaded(source: str, names: Names) -> int:
    """Messages waiting for a runner right after the preload."""
    if source in ("stream", "celery"):
        import redis.asyncio as aredis

        client = aredis.Redis.from_url(REDIS)
        try:
            if source == "stream":
                return int(await client.xlen(names.stream))
            return int(await client.llen(f"{names.celery_prefix}{names.queue}"))
        finally:
            await client.aclose()
    if source in ("queue", "dramatiq"):
        return await outstanding(source, names)
    if source == "jetstream":
        import nats

        nc = await nats.connect(NATS)
        try:
            info = await nc.jetstream().stream_info(names.jetstream)
            return int(info.state.messages)
        finally:
            await nc.close()
    raise ValueError(source)
