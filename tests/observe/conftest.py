"""Fixtures of the observe tests: a scripted fake of the engine's snapshot()."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from spindle.observe import LatencyHistogram


class FakeRun:
    """A run whose counters rise by a fixed step on every ``snapshot()`` call.

    Each call advances the run by ``step_seconds``; after ``fail_after`` calls a
    failure with a traceback appears. ``caches`` adds two caches (one with a Redis ring),
    ``stream`` a stream run's source and sink. Fully deterministic: no clock is read.
    """

    def __init__(
        self,
        *,
        total: int | None = 10_000,
        step_items: int = 100,
        step_seconds: float = 1.0,
        fail_after: int | None = 3,
        hosts: bool = True,
        caches: bool = False,
        stream: bool = False,
        wave: bool = False,
    ) -> None:
        self.calls = 0
        self.done = 0
        self.wave = wave
        self.total = total
        self.step_items = step_items
        self.step_seconds = step_seconds
        self.fail_after = fail_after
        self.hosts = hosts
        self.caches = caches
        self.stream = stream
        self.commit_latency = LatencyHistogram()
        self.status = "running"
        self.fetch_latency = LatencyHistogram()
        self.parse_latency = LatencyHistogram()

    def snapshot(self) -> dict[str, Any]:
        self.calls += 1
        n = self.calls
        # With wave=True the rate and the latencies swing, for charts worth looking at.
        swing = 1 + 0.5 * math.sin(n / 4) if self.wave else 1.0
        step = round(self.step_items * swing)
        self.done += step
        done = self.done
        # Latencies of the items finished in this step: fetch ~ 20..60 ms, parse ~ 1..3 ms.
        slow = (2 - swing) if self.wave else 1.0
        self.fetch_latency.record_many(
            [slow * (0.02 + 0.04 * (i / step) ** 3) for i in range(step)]
        )
        self.parse_latency.record_many([0.001 + 0.002 * (i / step) for i in range(step)])
        failures: list[dict[str, Any]] = []
        failed = 0
        if self.fail_after is not None and n > self.fail_after:
            failed = 1
            failures.append(
                {
                    "time": self.fail_after * self.step_seconds + 0.5,
                    "stage": "fetch",
                    "item": "'http://example.test/boom'",
                    "error": "ConnectionResetError",
                    "message": "peer reset the connection",
                    "traceback": (
                        "Traceback (most recent call last):\n"
                        '  File "jobs.py", line 12, in fetch\n'
                        "    body = await response.read()\n"
                        "ConnectionResetError: peer reset the connection\n"
                    ),
                }
            )
        snap: dict[str, Any] = {
            "elapsed": n * self.step_seconds,
            "status": self.status,
            "total": self.total,
            "stages": [
                {
                    "name": "fetch",
                    "kind": "io",
                    "done": done + 5,
                    "failed": failed,
                    "retried": 2 * failed,
                    "in_flight": 40,
                    "queued": 12,
                    "workers": 1,
                    "restarts": 0,
                    "latency": self.fetch_latency.snapshot(),
                },
                {
                    "name": "parse",
                    "kind": "cpu",
                    "done": done,
                    "failed": 0,
                    "retried": 0,
                    "in_flight": 3,
                    "queued": 2,
                    "workers": 4,
                    "restarts": 1,
                    "latency": self.parse_latency.snapshot(),
                },
            ],
            "workers": [
                {
                    "stage": "fetch",
                    "index": 0,
                    "pid": None,
                    "state": "busy",
                    "jobs": done,
                    "restarts": 0,
                },
                *(
                    {
                        "stage": "parse",
                        "index": i,
                        "pid": 4000 + i,
                        "state": ("busy", "busy", "idle", "starting")[i],
                        "jobs": done // 4,
                        "restarts": 1 if i == 3 else 0,
                    }
                    for i in range(4)
                ),
            ],
            "failures": failures,
            "extra_key_ignored": {"anything": 1},
        }
        if self.hosts:
            snap["hosts"] = [
                {
                    "host": "example.test",
                    "requests": done,
                    "errors": failed,
                    "latency_mean": 0.04,
                    "limit": 8,
                },
                {
                    "host": "other.test",
                    "requests": done // 2,
                    "errors": 0,
                    "latency_mean": 0.09,
                    "limit": 4,
                },
            ]
        if self.caches:
            snap["caches"] = cache_rows(done)
        if self.stream:
            self.commit_latency.record_many([0.004 + 0.001 * (i % 5) for i in range(10)])
            snap["connectors"] = stream_rows(done, self.commit_latency.snapshot())
        return snap


def cache_rows(done: int) -> list[dict[str, Any]]:
    """A run's ``caches`` as the engine gives them: one cache in shared memory, and one
    with a Redis ring behind it (with a key the observers do not know)."""
    hits, misses = 3 * done // 4, done - 3 * done // 4
    return [
        {
            "path": "/dev/shm/spindle-cache-a",
            "stages": "fetch, parse",
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / done if done else 0.0,
            "sets": misses,
            "evictions": 2,
            "expired": 1,
            "entries": misses - 2,
            "bytes_used": 1_580 * misses,
            "max_bytes": 16_000_000,
            "get_us": 8.5,
        },
        {
            "path": "/dev/shm/spindle-cache-ring",
            "stages": "parse",
            "hits": 10,
            "misses": 30,
            "hit_rate": 0.25,
            "sets": 30,
            "evictions": 0,
            "expired": 0,
            "entries": 30,
            "bytes_used": 950,
            "max_bytes": 64_000_000,
            "get_us": 12.25,
            "ring_members": 3,
            "ring_down": 1,
            "ring_get_us": 420.0,
            "shard_map": {"not": "shown"},
        },
    ]


def stream_rows(done: int, commit_latency: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream run's ``connectors`` as the engine gives them, with figures of the
    connectors' own (plain ones are kept, the nested one is dropped)."""
    return [
        {
            "role": "source",
            "name": "redis://127.0.0.1:6379/0 events",
            "read": done + 20,
            "redelivered": 3,
            "acked": done,
            "unacked": 20,
            "peak_unacked": 512,
            "max_unacked": 1_024,
            "intake_waits": 4,
            "lag": 7,
            "consumer": "worker-1",
            "claimed": 3,
            "group_pending": None,
            "nested": {"dropped": True},
        },
        {
            "role": "sink",
            "name": "postgres://db/results",
            "written": done - 2,
            "failed": 2,
            "commits": commit_latency["count"],
            "commit_latency": commit_latency,
            "duplicates": 1,
        },
    ]


@pytest.fixture
def fake_run() -> FakeRun:
    return FakeRun()


@pytest.fixture
def make_run() -> Callable[..., FakeRun]:
    return FakeRun
