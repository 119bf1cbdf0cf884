"""An event loop in a thread of its own, for the connectors whose clients are asyncio only.

The connectors' callers are plain threads (a stream run reads in the source thread and
acknowledges in the thread that writes the sink), while aio-pika and nats-py speak only
asyncio, and a RabbitMQ delivery tag or a JetStream message must be acknowledged by the
connection that delivered it. So each such connector owns one loop thread that holds its
connection: both callers hand it coroutines (:meth:`LoopThread.call`) and wait for them.

::

    source thread ──call(read())──┐
                                  ├──▶ loop thread: the client's connection, one socket
    writer thread ──call(ack())───┘

The thread is a daemon so that a process that forgets :meth:`LoopThread.close` can
still exit; :meth:`close` stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..executors._eventloop import new_event_loop

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """One event loop running in one daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (or its exception).

        ``timeout``: seconds to wait; past it the coroutine is cancelled and
        :class:`TimeoutError` raised."""
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the connector's event loop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout} s") from None
        except BaseException:
            future.cancel()
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop (its tasks are cancelled) and join the thread. Idempotent."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
