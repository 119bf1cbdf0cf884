"""The hand-written consumers of bench/brokers.py.

Hand-written consumers (``asyncio``, ``asyncio-pool``), one shape for every broker::

    reader task ──batch──▶ asyncio.Queue(maxsize=4) ──▶ writer task: tiny on each body
    (a read of up to 1,000)                              (inline, or a batch per call on a
                                                          ProcessPoolExecutor), COPY into a
                                                          temporary table, INSERT ... ON
                                                          CONFLICT DO NOTHING, commit, then
                                                          acknowledge the batch

* Redis: redis-py's asyncio client, ``XREADGROUP COUNT 1000``, first its own pending entries
  (from id 0: what a killed run of the same consumer left), then new ones (``>``); ``XACK``
  of the batch's ids. It ends at the first read that finds nothing new.
* RabbitMQ: aio-pika, prefetch 4,000, deliveries gathered into batches of at most 1,000 in
  delivery order, the batch acknowledged with ``ack(multiple=True)`` on its last message. It
  ends once it has taken as many messages as the queue held when it started and, every
  batch written and acknowledged, a passive declare finds the queue empty.
* NATS: nats-py, a durable pull consumer (explicit acks, no limit on unacknowledged
  messages), ``fetch(1000)``; ``+ACK`` for each message of the batch, then one flush. It
  ends once a fetch comes back short or its last message has nothing behind it
  (``metadata.num_pending``), every batch is acknowledged and the consumer has nothing
  pending and nothing unacknowledged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from .broker_servers import GROUP, NATS, POSTGRES, RABBITMQ, REDIS, Names
from .work import tiny

#: Messages per read of the hand-written consumers.
READ = 1000
#: The hand-written RabbitMQ consumer's prefetch: the batches in its queue, and two more.
RABBIT_PREFETCH = 4 * READ
#: The hand-written consumer name (the same in a run started again after a kill).
CONSUMER = "asyncio"


def _tiny_batch(values: list[Any]) -> list[int]:
    return [tiny(v) for v in values]


# -- hand-written: a reader per broker, one writer ------------------------------------------

#: A batch as a reader hands it on: keys, raw JSON bodies, and what acknowledges it.
Batch = tuple[list[str], list[bytes], Callable[[], Awaitable[None]]]


class _Reader:
    """What a hand-written consumer needs of a broker: batches, then None at the end."""

    async def open(self) -> None:
        raise NotImplementedError

    async def read(self, settled: Callable[[], Awaitable[None]]) -> Batch | None:
        """The next batch; ``settled()`` waits until every batch so far is acknowledged."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _RedisReader(_Reader):
    def __init__(self, names: Names) -> None:
        self.names = names
        self.after = "0"  # own pending entries first, then ">"

    async def open(self) -> None:
        import redis.asyncio as aredis

        self.client = aredis.Redis.from_url(REDIS)

    async def read(self, settled: Callable[[], Awaitable[None]]) -> Batch | None:
        stream = self.names.stream
        while True:
            reply = await self.client.xreadgroup(GROUP, CONSUMER, {stream: self.after}, count=READ)
            entries = reply[0][1] if reply else []
            if entries:
                break
            if self.after == ">":
                return None
            self.after = ">"
        if self.after != ">":
            self.after = entries[-1][0].decode()
        ids = [entry[0] for entry in entries]

        async def ack() -> None:
            await self.client.xack(stream, GROUP, *ids)

        return [i.decode() for i in ids], [entry[1][b"data"] for entry in entries], ack

    async def close(self) -> None:
        await self.client.aclose()


class _RabbitReader(_Reader):
    def __init__(self, names: Names) -> None:
        self.names = names
        self.buffer: deque[Any] = deque()
        self.arrived = asyncio.Event()

    async def open(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(RABBITMQ)
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=RABBIT_PREFETCH)
        self.queue = await self.channel.declare_queue(self.names.queue, durable=True)
        self.expected = self.queue.declaration_result.message_count or 0
        self.taken = 0
        await self.queue.consume(self._deliver)

    async def _deliver(self, message: Any) -> None:
        self.buffer.append(message)
        self.arrived.set()

    async def read(self, settled: Callable[[], Awaitable[None]]) -> Batch | None:
        while not self.buffer:
            if self.taken >= self.expected:
                await settled()
                ready = (await self.queue.declare()).message_count or 0
                if ready == 0 and not self.buffer:
                    return None
                self.expected += ready
            self.arrived.clear()
            if not self.buffer:
                await self.arrived.wait()
        batch = [self.buffer.popleft() for _ in range(min(READ, len(self.buffer)))]
        self.taken += len(batch)

        async def ack() -> None:
            await batch[-1].ack(multiple=True)

        return [m.message_id for m in batch], [m.body for m in batch], ack

    async def close(self) -> None:
        await self.connection.close()


class _NatsReader(_Reader):
    def __init__(self, names: Names) -> None:
        self.names = names
        self.tail = False

    async def open(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        self.nc = await nats.connect(NATS)
        self.js = self.nc.jetstream()
        config = ConsumerConfig(
            durable_name=self.names.durable,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=-1,
            filter_subject=self.names.subject,
        )
        await self.js.add_consumer(self.names.jetstream, config)
        self.sub = await self.js.pull_subscribe_bind(self.names.durable, self.names.jetstream)

    async def read(self, settled: Callable[[], Awaitable[None]]) -> Batch | None:
        import nats.errors

        while True:
            if self.tail:
                # The last fetch came back short: once every batch is acknowledged, the
                # consumer says whether anything is left (a killed run's messages come
                # back after ack_wait).
                self.tail = False
                await settled()
                info = await self.js.consumer_info(self.names.jetstream, self.names.durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return None
            try:
                msgs = await self.sub.fetch(READ, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either
                msgs = []
            # The last message says how many are left behind it for this consumer.
            self.tail = len(msgs) < READ or msgs[-1].metadata.num_pending == 0
            if msgs:
                return self._batch(msgs)

    def _batch(self, msgs: list[Any]) -> Batch:
        stream = self.names.jetstream

        async def ack() -> None:
            for m in msgs:
                await m.ack()
            await self.nc.flush()

        keys = [f"{stream}:{m.metadata.sequence.stream}" for m in msgs]
        return keys, [m.data for m in msgs], ack

    async def close(self) -> None:
        await self.nc.close()


READERS: dict[str, Callable[[Names], _Reader]] = {
    "redis": _RedisReader,
    "rabbitmq": _RabbitReader,
    "nats": _NatsReader,
}


async def consume(broker: str, names: Names, pool: Executor | None) -> int:
    """The hand-written consumer: a reader task, a bounded queue, a writer task."""
    import asyncpg
    import orjson

    reader = READERS[broker](names)
    await reader.open()
    conn = await asyncpg.connect(POSTGRES)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=4)
    done = 0
    try:
        await conn.execute(
            "CREATE TEMP TABLE incoming (key text, input jsonb, result jsonb) ON COMMIT DELETE ROWS"
        )
        insert = (
            f"INSERT INTO {names.table} SELECT key, input, result FROM incoming "
            "ON CONFLICT DO NOTHING"
        )

        async def read() -> None:
            while (batch := await reader.read(queue.join)) is not None:
                await queue.put(batch)
            await queue.put(None)

        async def write() -> None:
            nonlocal done
            while (batch := await queue.get()) is not None:
                keys, raw, ack = batch
                values = [orjson.loads(r) for r in raw]
                if pool is None:
                    results = [tiny(v) for v in values]
                else:
                    results = await loop.run_in_executor(pool, _tiny_batch, values)
                records = [
                    (k, r.decode(), orjson.dumps(x).decode())
                    for k, r, x in zip(keys, raw, results, strict=True)
                ]
                async with conn.transaction():
                    await conn.copy_records_to_table("incoming", records=records)
                    await conn.execute(insert)
                await ack()
                done += len(keys)
                queue.task_done()

        await asyncio.gather(read(), write())
    finally:
        await conn.close()
        await reader.close()
    return done
