"""An acknowledging source in memory: the fake of a broker, for tests.

It behaves as a consumer group does: each message is given once, stays pending until it
is acknowledged, and :meth:`MemoryAckSource.redeliver` gives the pending ones again
(marked ``redelivered``), as a broker does after a consumer died. It records every
acknowledgement, and the most messages that were ever pending at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ._base import AckSource, Message

__all__ = ["MemoryAckSource"]


class MemoryAckSource(AckSource):
    """Messages held in memory, given to one consumer.

    ``bodies``: the messages' bodies; message ``i`` has the token ``i`` and the key
    ``str(i)`` (or ``key(body)``). ``drain``: end once every message was given (else
    :meth:`read` waits for :meth:`push`, up to its ``wait``).
    """

    def __init__(
        self,
        bodies: Iterable[Any] = (),
        *,
        drain: bool = True,
        key: Callable[[Any], str] | None = None,
        name: str = "memory",
    ) -> None:
        self.drain = drain
        self.name = name
        self._key = key
        self._cond = threading.Condition()
        self._queue: deque[Message] = deque()
        self._next = 0
        self._pending: dict[Any, Message] = {}
        #: Every token acknowledged, in order, and the calls to :meth:`ack`.
        self.acked: list[Any] = []
        self.ack_calls: list[list[Any]] = []
        #: Tokens acknowledged that were not pending (acknowledged twice, or unknown).
        self.unknown_acks: list[Any] = []
        #: The most messages pending (given, not acknowledged) at once.
        self.max_pending = 0
        self.closed = False
        self.push(*bodies)

    def push(self, *bodies: Any) -> None:
        """Add messages at the end (a producer's XADD)."""
        with self._cond:
            for body in bodies:
                token = self._next
                self._next += 1
                key = str(token) if self._key is None else self._key(body)
                self._queue.append(Message(body, key, token))
            self._cond.notify_all()

    def read(self, max_n: int, wait: float) -> list[Message]:
        with self._cond:
            if not self._queue and not self.drain:
                self._cond.wait_for(lambda: bool(self._queue), timeout=wait)
            out: list[Message] = []
            while self._queue and len(out) < max_n:
                out.append(self._queue.popleft())
            for m in out:
                self._pending[m.token] = m
            self.max_pending = max(self.max_pending, len(self._pending))
            return out

    def ack(self, tokens: list[Any]) -> None:
        with self._cond:
            self.ack_calls.append(list(tokens))
            for token in tokens:
                if self._pending.pop(token, None) is None:
                    self.unknown_acks.append(token)
                else:
                    self.acked.append(token)

    def pending(self) -> list[Any]:
        """Tokens given and not acknowledged."""
        with self._cond:
            return list(self._pending)

    def redeliver(self) -> int:
        """Give every pending message again, first, marked ``redelivered`` (what a broker
        does once the consumer that had them is gone); return how many."""
        with self._cond:
            again = [
                Message(m.body, m.key, m.token, redelivered=True) for m in self._pending.values()
            ]
            self._pending.clear()
            self._queue.extendleft(reversed(again))
            self._cond.notify_all()
            return len(again)

    def lag(self) -> int | None:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        self.closed = True
