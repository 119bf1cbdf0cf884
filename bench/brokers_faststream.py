"""The FastStream subscribers of bench/brokers.py, the way its documentation shows them.

One process on uvloop, one asyncpg pool (2 to 4 connections), one broker object per run:

* Redis Streams: the **batch** subscriber (``StreamSub(batch=True, max_records=1000)``, in
  the group ``bench``), a batch's rows written by ``executemany`` in one transaction; and,
  as FastStream's page on claiming shows ("dedicated claiming worker"), a second
  subscriber of the group with ``min_idle_time`` (10 s) that claims, one at a time, the
  entries a dead consumer left pending.
* RabbitMQ: a subscriber function **per message** (FastStream 0.7 has neither a batch
  subscriber nor ``max_workers`` for RabbitMQ), an INSERT per message, a channel
  prefetch of 100 (without one the broker pushes the whole queue at once).
* NATS: the **batch** pull subscriber (``PullSub(batch_size=1000, batch=True)``, durable),
  a batch's rows written by ``executemany`` in one transaction.

FastStream acknowledges a message once its handler returned (its default policy), so once
its row is committed. Its per-message log lines ("Received", "Processed") go at DEBUG
(``log_level=logging.DEBUG``), which its default logger does not print.

No ``from __future__ import annotations`` here: FastStream reads the handlers'
annotations (through pydantic) when the subscriber is made, and they are local names.
"""

import logging
from typing import Annotated, Any

import orjson
from faststream import Context

from .broker_servers import GROUP, NATS, RABBITMQ, REDIS, Names
from .work import tiny

#: Messages per batch of the batch subscribers.
BATCH = 1000
#: The RabbitMQ subscriber's channel prefetch.
PREFETCH = 100
#: The claiming subscriber: how long an entry is pending before it is claimed.
CLAIM_IDLE_MS = 10_000

INSERT = "INSERT INTO {table} (key, input, result) VALUES ($1, $2, $3)"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def faststream_broker(broker: str, names: Names, pool: Any) -> Any:
    """A FastStream broker with its subscriber(s), not started."""
    insert = INSERT.format(table=names.table)
    quiet = {"log_level": logging.DEBUG}

    if broker == "redis":
        from faststream.redis import RedisBroker, StreamSub
        from faststream.redis.message import RedisBatchStreamMessage, RedisStreamMessage

        redis_app = RedisBroker(REDIS, **quiet)

        @redis_app.subscriber(
            stream=StreamSub(
                names.stream, group=GROUP, consumer="faststream", batch=True, max_records=BATCH
            )
        )
        async def handle_batch(
            body: list[dict[str, str]],
            msg: Annotated[RedisBatchStreamMessage, Context("message")],
        ) -> None:
            ids = msg.raw_message["message_ids"]
            rows = [
                (i.decode(), entry["data"], _dumps(tiny(orjson.loads(entry["data"]))))
                for i, entry in zip(ids, body, strict=True)
            ]
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(insert, rows)

        @redis_app.subscriber(
            stream=StreamSub(
                names.stream, group=GROUP, consumer="faststream-claim", min_idle_time=CLAIM_IDLE_MS
            )
        )
        async def handle_claimed(
            body: int, msg: Annotated[RedisStreamMessage, Context("message")]
        ) -> None:
            # A single entry's body is its ``data`` field, decoded (a batch's is the
            # entry's fields).
            (i,) = msg.raw_message["message_ids"]
            raw = msg.raw_message["data"][b"data"].decode()
            await pool.execute(insert, i.decode(), raw, _dumps(tiny(body)))

        return redis_app

    if broker == "rabbitmq":
        from faststream.rabbit import RabbitBroker, RabbitQueue
        from faststream.rabbit.message import RabbitMessage
        from faststream.rabbit.schemas import Channel

        rabbit_app = RabbitBroker(
            RABBITMQ, default_channel=Channel(prefetch_count=PREFETCH), **quiet
        )

        @rabbit_app.subscriber(RabbitQueue(names.queue, durable=True))
        async def handle(body: int, msg: Annotated[RabbitMessage, Context("message")]) -> None:
            await pool.execute(insert, msg.message_id, msg.body.decode(), _dumps(tiny(body)))

        return rabbit_app

    if broker == "nats":
        from faststream.nats import NatsBroker, PullSub
        from faststream.nats.message import NatsBatchMessage

        nats_app = NatsBroker(NATS, **quiet)
        stream = names.jetstream

        @nats_app.subscriber(
            names.subject,
            stream=stream,
            durable=names.durable,
            pull_sub=PullSub(batch_size=BATCH, batch=True),
        )
        async def handle_nats_batch(
            body: list[int], msg: Annotated[NatsBatchMessage, Context("message")]
        ) -> None:
            rows = [
                (f"{stream}:{m.metadata.sequence.stream}", m.data.decode(), _dumps(tiny(x)))
                for m, x in zip(msg.raw_message, body, strict=True)
            ]
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(insert, rows)

        return nats_app

    raise ValueError(broker)
