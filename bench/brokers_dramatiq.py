"""Dramatiq on the RabbitMQ broker, for bench/brokers.py: an actor runs ``tiny`` on each
message and writes its row.

    SPINDLE_BENCH_TAG=T python -m bench.brokers_dramatiq N    # send N messages: write_row.send(i)
    SPINDLE_BENCH_TAG=T dramatiq bench.brokers_dramatiq --processes CORES --queues QUEUE

Dramatiq's defaults otherwise: its default middleware (retries, time and age limits), 8
threads a process, a prefetch of twice the threads, a message acknowledged once the actor
returned, so once its row is committed (psycopg, a connection per worker thread,
autocommit; the row's key is the message's id, through the ``CurrentMessage``
middleware). The run's tag names the queue (Dramatiq adds ``.DQ`` and ``.XQ`` beside it).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage

from .broker_servers import POSTGRES, RABBITMQ, Names
from .work import tiny

names = Names.from_env()
broker = RabbitmqBroker(url=RABBITMQ)
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)
_local = threading.local()


def _connection() -> Any:
    """This worker thread's connection."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        import psycopg

        conn = _local.conn = psycopg.connect(POSTGRES, autocommit=True)
    return conn


@dramatiq.actor(queue_name=names.queue)
def write_row(i: int) -> None:
    from psycopg.types.json import Jsonb

    message = CurrentMessage.get_current_message()
    assert message is not None
    _connection().execute(
        f"INSERT INTO {names.table} (key, input, result) VALUES (%s, %s, %s)",
        (message.message_id, Jsonb(i), Jsonb(tiny(i))),
    )


def main(argv: list[str]) -> None:
    for i in range(int(argv[0])):
        write_row.send(i)
    broker.close()


if __name__ == "__main__":
    main(sys.argv[1:])
