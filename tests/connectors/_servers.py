"""Where the broker and database tests find their servers, and how they name things."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

REDIS_URL = os.environ.get("SPINDLE_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SPINDLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'
)
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
RABBITMQ_URL = os.environ.get("SPINDLE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")
START_RABBITMQ = "rabbitmq-server -detached"
RABBITMQCTL = os.environ.get("SPINDLE_TEST_RABBITMQCTL", "/usr/sbin/rabbitmqctl")
NATS_URL = os.environ.get("SPINDLE_TEST_NATS", "nats://127.0.0.1:4222")
NATS_SERVER = os.environ.get("SPINDLE_TEST_NATS_SERVER", "/usr/sbin/nats-server")
START_NATS = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)


def unique(prefix: str) -> str:
    return f"spindle_test_{prefix}_{uuid.uuid4().hex[:10]}"


def redis_url(stream: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **params}.items())
    return f"{REDIS_URL}?{query}"


def postgres_url(table: str) -> str:
    return f"{POSTGRES_URL}?table={table}"


def amqp_url(queue: str) -> str:
    return f"{RABBITMQ_URL}?queue={queue}"


def on_rabbit(work: Callable[[Any], Awaitable[T]], timeout: float = 60) -> T:
    """Run ``work(channel)`` (an aiormq channel) on a connection of its own to the local
    RabbitMQ server, closed afterwards: each call survives the tests that close every
    connection of the broker. Connecting times out after two seconds."""
    import aio_pika

    async def main() -> T:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=2)
        try:
            channel = connection.channel()
            await channel.initialize()
            return await asyncio.wait_for(work(await channel.get_underlay_channel()), timeout)
        finally:
            await connection.close()

    return asyncio.run(main())


def delete_queues(*names: str) -> None:
    async def delete(channel: Any) -> None:
        for name in names:
            await channel.queue_delete(name)

    on_rabbit(delete)


def nats_url(server: str = NATS_URL, **params: str) -> str:
    return f"{server}?" + "&".join(f"{k}={v}" for k, v in params.items())


def on_nats(work: Callable[[Any], Awaitable[T]], url: str = NATS_URL, timeout: float = 60) -> T:
    """Run ``work(js)`` (a nats-py JetStream context) on a connection of its own to the
    NATS server at ``url``, closed afterwards. Connecting times out after two seconds and
    is not retried."""
    import nats

    async def quiet(exc: Exception) -> None:
        return None

    async def main() -> T:
        nc = await nats.connect(
            url,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.1,
            error_cb=quiet,
        )
        try:
            return await asyncio.wait_for(work(nc.jetstream(timeout=10)), timeout)
        finally:
            await nc.close()

    return asyncio.run(main())
