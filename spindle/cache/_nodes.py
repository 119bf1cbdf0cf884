"""One Redis server of the ring: its connections, the raw commands sent on them, its counters.

The ring speaks the Redis protocol (RESP) itself: each command is packed once
(:func:`_pack`), several go out in one payload, and their replies are read back in order,
so a write to every copy of a key, with its hints, costs one round trip:

```
  _pack(SET k v) + _pack(SADD h k) + _pack(SCARD h)
        │ send(): on a connection from the free list
        ▼
     server ──▶ receive(conn, 3): three replies, in order; the connection goes back
                (a connection with replies left unread is closed, never reused)
```

- **Connections** are redis-py ``Connection`` objects kept in a free list per server
  (no pool lock, no retry layer: a failed command marks the server down and the
  caller moves on), with short socket timeouts (the ring's ``timeout``).
- **Counters** are plain integers updated without a lock: under many threads a count
  may miss an increment, never more. Latency is a window of the last :data:`SAMPLES`
  commands timed.
- **What the ring keeps on a server**, all under ``namespace:`` (:class:`_Keys`): the
  cached values, the hints and flags kept for servers that are down, and the marks a
  repair reads (see :mod:`spindle.cache._repair`).
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Iterator
from typing import Any

# A server's state. Reads go to UP servers, and to REPAIRING ones only when no copy of
# the key is up; writes go to UP and REPAIRING servers; DOWN servers are skipped.
UP, REPAIRING, DOWN = "up", "repairing", "down"

#: Idle connections kept per server; more are closed when given back.
MAX_IDLE = 32
#: Latency samples kept per server (the most recent).
SAMPLES = 1024
#: Keys per round trip when a command walks many: the COUNT of each SCAN, the count of
#: each SPOP (by a repair, and by ``clear()``).
BATCH = 256


def _pack(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


_PING = _pack(b"PING")


class _Keys:
    """The Redis keys a ring writes on its servers, each under ``namespace:``.

    - ``prefix`` + the caller's key: a cached value.
    - ``hint_prefix`` + a server's tag: the set of keys that server missed while it was
      down, on each server that took those writes.
    - ``flag_prefix`` + a server's tag: that server missed more than its hints can say
      (they overflowed, or a ``clear()`` ran without it): wipe it and resync it whole.
    - ``sentinel``: on a server that holds the ring's keys; without it, the server is
      new or restarted empty and is resynced whole.
    - ``left``: on a server that left the ring; if it comes back it is wiped and refilled.
    - ``resync_lock``: on a server being resynced whole, held by the client doing it.
    """

    __slots__ = ("flag_prefix", "hint_prefix", "left", "prefix", "resync_lock", "sentinel")

    def __init__(self, namespace: str) -> None:
        ns = namespace.encode()
        self.prefix = ns + b":k:"
        self.hint_prefix = ns + b":h:"
        self.flag_prefix = ns + b":o:"
        self.sentinel = ns + b":sentinel"
        self.left = ns + b":left"
        self.resync_lock = ns + b":resync"


class _Node:
    """One Redis server: its connections, state and counters.

    ``slot`` is its place on the ring (:func:`~spindle.cache._layout._slot_of`);
    ``make()`` returns a new, unconnected redis-py connection to it.
    """

    __slots__ = (
        "_all",
        "_closed",
        "_idle",
        "_lat",
        "_lat_n",
        "_lock",
        "_make",
        "deletes",
        "errors",
        "fallbacks",
        "gets",
        "hints",
        "hits",
        "last_error",
        "name",
        "repairs",
        "sets",
        "slot",
        "state",
        "tag",
    )

    def __init__(self, name: str, make: Callable[[], Any], slot: int) -> None:
        self.name = name
        self.slot = slot
        self.tag = b"%016x" % self.slot
        self.state = REPAIRING
        self._make = make
        self._idle: list[Any] = []
        self._all: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.gets = self.hits = self.sets = self.deletes = 0
        self.errors = self.fallbacks = self.hints = self.repairs = 0
        self.last_error: str | None = None
        self._lat = [0] * SAMPLES
        self._lat_n = 0

    # -- connections: a free list (pop and append are atomic), every one tracked --

    def acquire(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        conn = self._make()
        with self._lock:
            self._all.add(conn)
        return conn

    def release(self, conn: Any) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE:
            self.discard(conn)
        else:
            self._idle.append(conn)

    def discard(self, conn: Any) -> None:
        conn.disconnect()
        with self._lock:
            self._all.discard(conn)

    def send(self, payload: bytes) -> Any:
        """Send ``payload`` on a connection of this server's; the connection to read from."""
        conn = self.acquire()
        try:
            conn.send_packed_command((payload,), check_health=False)
        except BaseException:
            self.discard(conn)
            raise
        return conn

    def receive(self, conn: Any, replies: int) -> list[Any]:
        """Read ``replies`` replies from ``conn``, then give it back."""
        try:
            out = [conn.read_response() for _ in range(replies)]
        except BaseException:
            self.discard(conn)  # replies left unread: the connection cannot be reused
            raise
        self.release(conn)
        return out

    def call(self, payload: bytes, replies: int = 1) -> list[Any]:
        return self.receive(self.send(payload), replies)

    def scan(self, pattern: bytes) -> Iterator[list[bytes]]:
        """The keys matching ``pattern`` here, a batch per round trip."""
        cursor = b"0"
        while True:
            command = _pack(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"%d" % BATCH)
            ((cursor, keys),) = self.call(command)
            if keys:
                yield keys
            if cursor in (b"0", 0):
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all.clear()
            self._idle.clear()
        for conn in conns:
            conn.disconnect()

    # -- figures --

    def record(self, ns: int) -> None:
        n = self._lat_n
        self._lat[n % SAMPLES] = ns
        self._lat_n = n + 1

    def stats(self) -> dict[str, Any]:
        samples = sorted(self._lat[: min(self._lat_n, SAMPLES)])
        latency: dict[str, float | None] = {"median": None, "p99": None}
        if samples:
            latency = {
                "median": round(statistics.median(samples) / 1000, 1),
                "p99": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000, 1),
            }
        return {
            "state": self.state,
            "up": self.state == UP,
            "gets": self.gets,
            "hits": self.hits,
            "sets": self.sets,
            "deletes": self.deletes,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "hints": self.hints,
            "repairs": self.repairs,
            "latency_us": latency,
            "last_error": self.last_error,
        }
