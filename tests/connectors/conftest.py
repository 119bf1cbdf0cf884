"""Fixtures of the broker and database tests: the local Redis and PostgreSQL servers.

A test that needs a server it cannot reach (or a client library that is not installed)
is skipped with the reason and the command that starts the server; it never waits long:
connections time out after two seconds. Every test gets names of its own (a stream, a
group, a table), removed afterwards, so tests never see each other's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ._servers import POSTGRES_URL, REDIS_URL, START_POSTGRES, START_REDIS, unique


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
