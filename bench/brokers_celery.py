"""Celery on the Redis broker, for bench/brokers.py: a task per message runs ``tiny`` and
writes its row.

    SPINDLE_BENCH_TAG=T python -m bench.brokers_celery N     # send N tasks: write_row.delay(i)
    SPINDLE_BENCH_TAG=T celery -A bench.brokers_celery worker --concurrency=CORES \\
        --prefetch-multiplier=128 --without-gossip --without-mingle --without-heartbeat \\
        --loglevel=WARNING

The worker's settings (bench/brokers.py starts it): the prefork pool, a process per core;
a prefetch multiplier of 128, what Celery's "Optimizing" guide suggests ("64, or 128")
for many short tasks (measured here: 4, its default, and 16 gave 10-30 % less); no
gossip, mingle or heartbeat (the events a single worker needs no one to hear; mingle
also waits at start); log level WARNING (INFO writes two lines a task).

The task is ``acks_late=True``: its message is acknowledged once it returned, so once its
row is committed (psycopg, a connection per worker process, autocommit; the row's key is
the task's id). No result backend (``task_ignore_result``). The run's tag names the queue,
and every Redis key kombu makes starts with a prefix of the run's own
(``global_keyprefix``), so the harness can find and remove them all.

With ``SPINDLE_BENCH_KILL`` set, the messages a killed worker had reserved are handed out
again after 10 s (``visibility_timeout``; kombu's default is an hour) and the worker looks
for them every second (``unacked_restore_interval``, ``unacked_restore_throttle``).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from typing import Any

from celery import Celery

from .broker_servers import KILL_ENV, POSTGRES, REDIS, Names
from .work import tiny

names = Names.from_env()
transport: dict[str, Any] = {"global_keyprefix": names.celery_prefix}
if os.environ.get(KILL_ENV):
    transport |= {
        "visibility_timeout": 10,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }

app = Celery("bench_brokers", broker=REDIS)
app.conf.update(
    task_default_queue=names.queue,
    task_ignore_result=True,
    broker_transport_options=transport,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@cache
def _connection() -> Any:
    """This worker process's connection (opened at its first task, after the fork)."""
    import psycopg

    return psycopg.connect(POSTGRES, autocommit=True)


@app.task(name="bench.write_row", bind=True, acks_late=True)
def write_row(self: Any, i: int) -> None:
    from psycopg.types.json import Jsonb

    _connection().execute(
        f"INSERT INTO {names.table} (key, input, result) VALUES (%s, %s, %s)",
        (self.request.id, Jsonb(i), Jsonb(tiny(i))),
    )


def main(argv: list[str]) -> None:
    for i in range(int(argv[0])):
        write_row.delay(i)


if __name__ == "__main__":
    main(sys.argv[1:])
