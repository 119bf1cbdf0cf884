"""Fixtures of the broker and database tests: the local Redis, RabbitMQ, NATS and PostgreSQL
servers.

A test that needs a server it cannot reach (or a client library that is not installed)
is skipped with the reason and the command that starts the server; it never waits long:
connections time out after two seconds. Every test gets names of its own (a stream, a
group, a table), removed afterwards, so tests never see each other's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._servers import (
    NATS_URL,
    POSTGRES_URL,
    RABBITMQ_URL,
    REDIS_URL,
    START_NATS,
    START_POSTGRES,
    START_RABBITMQ,
    START_REDIS,
    delete_queues,
    on_nats,
    on_rabbit,
    unique,
)


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """A client of the local Redis server (closed after the test)."""
    redis = pytest.importorskip("redis", reason="the redis client is not installed")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        pytest.skip(f"no Redis server at {REDIS_URL} ({exc}); start one: {START_REDIS}")
    yield client
    client.close()


@pytest.fixture
def stream(redis_client: Any) -> Iterator[str]:
    """A stream name of this test's own; the stream and its failures go afterwards."""
    name = unique("stream")
    yield name
    redis_client.delete(name, f"{name}:failures")


@pytest.fixture
def pg() -> Iterator[Any]:
    """A connection to the local PostgreSQL server, in autocommit (closed after the test)."""
    psycopg = pytest.importorskip("psycopg", reason="the psycopg client is not installed")
    try:
        conn = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL} ({exc}); start it: {START_POSTGRES}")
    yield conn
    conn.close()


@pytest.fixture
def table(pg: Any) -> Iterator[str]:
    """A table name of this test's own; the table and its failures table go afterwards."""
    name = unique("table")
    yield name
    pg.execute(f"DROP TABLE IF EXISTS {name}, {name}_failures")


@pytest.fixture
def rabbit() -> str:
    """The URL of the local RabbitMQ server; skipped when it or aio-pika is absent."""
    pytest.importorskip("aio_pika", reason="the aio-pika client is not installed")
    import aiormq

    async def nothing(channel: Any) -> None:
        return None

    try:
        on_rabbit(nothing, timeout=2)
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
        pytest.skip(f"no RabbitMQ server at {RABBITMQ_URL} ({exc}); start it: {START_RABBITMQ}")
    return RABBITMQ_URL


@pytest.fixture
def rabbit_queue(rabbit: str) -> Iterator[str]:
    """A queue name of this test's own; the queue and its failures queue go afterwards."""
    name = unique("queue")
    yield name
    delete_queues(name, f"{name}.failures")


@pytest.fixture
def nats() -> str:
    """The URL of the local NATS server with JetStream; skipped when it or nats-py is absent."""
    pytest.importorskip("nats", reason="the nats-py client is not installed")
    import nats as client

    async def account(js: Any) -> Any:
        return await js.account_info()

    try:
        on_nats(account, timeout=2)
    except (OSError, TimeoutError, client.errors.Error) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        pytest.skip(f"no NATS server with JetStream at {NATS_URL} ({why}); start it: {START_NATS}")
    return NATS_URL


@pytest.fixture
def nats_stream(nats: str) -> Iterator[str]:
    """A JetStream stream name of this test's own (also its subject and its durable's
    prefix); the stream and ``<name>_out`` go afterwards."""
    name = unique("stream")
    yield name

    async def delete(js: Any) -> None:
        for stream in (name, f"{name}_out"):
            try:
                await js.delete_stream(stream)
            except Exception as exc:
                if "not found" not in str(exc).lower() and type(exc).__name__ != "NotFoundError":
                    raise

    on_nats(delete)
