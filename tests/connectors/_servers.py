"""Where the broker and database tests find their servers, and how they name things."""

from __future__ import annotations

import os
import uuid

REDIS_URL = os.environ.get("SPINDLE_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SPINDLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'
)
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def unique(prefix: str) -> str:
    return f"spindle_test_{prefix}_{uuid.uuid4().hex[:10]}"


def redis_url(stream: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"stream": stream, **params}.items())
    return f"{REDIS_URL}?{query}"


def postgres_url(table: str) -> str:
    return f"{POSTGRES_URL}?table={table}"
