"""A ring of Redis servers: the cache's second tier, shared by the machines of a run.

Keys are sharded on the client by consistent hashing, with copies, so losing a server
loses no replicated key and no server needs to know about the others (no Redis Cluster,
no failover to wait for):

```
                     key ──▶ its copies: the first 1 + replicas distinct servers on the
                             ring from the key's point, the owner first (_layout.py)
  get ──▶ owner (1st copy) ── up? ── GET ──▶ value or None
              │ down (refused, timed out: marked at once, skipped after)
              └──▶ next copy that is up (a "fallback") ──▶ value or None

  set / delete ──▶ every copy that is not down, sent to all of them before any reply is
                   read (one round trip) ──┐
                   a copy that is down: the key is added to its *hint* set on each copy
                   that took the write, in the same round trip
                                           ▼
  health thread ── PING every health_interval ── down node answers ──▶ repairing:
        resynced whole or replayed from its hints, then read again (_repair.py)
```

Its parts: this module (the API, reads, the write path and its hints, membership
changes), :mod:`~spindle.cache._layout` (where a key lives), :mod:`~spindle.cache._nodes`
(one server: connections, raw commands, counters), :mod:`~spindle.cache._repair` (the
health thread: servers down, up, and repaired) and :mod:`~spindle.cache._membership`
(which servers are members).

Decisions and limits:

- **Writes** go to every copy that is not known to be down, sent to all before any
  reply is read, so a write with one copy costs about one round trip. A copy that
  fails during the write is marked down and hinted in a second round trip. A write
  that reaches no copy raises :class:`~spindle.CacheError`. Hints are bounded
  (:data:`MAX_HINTS` keys per server on each holder); past that the server is flagged
  and resynced whole when it is back.
- **Reads** go to the owner only; a miss there is a miss (no second round trip). A
  read that finds every copy down is a miss too (counted in the servers' errors), so
  a cache in front of a computation keeps working.
- **Membership.** A server new to the ring has no sentinel and is filled before it
  is read. A server that leaves (its ZooKeeper registration ends) is marked as left
  on itself when it can be reached, and is wiped and refilled if it comes back. Not
  covered: a server that left the ring while unreachable and comes back with its old
  data is read as it is; when a server leaves, the servers that take over its copies
  are not filled (the first remaining copy of each key still has it).
- **Processes.** A ring crosses into another process pickled (it reconnects there
  from its constructor's arguments); a forked child must not use its parent's ring.

redis-py is imported when a ring is made (``pip install 'spindle[redis]'``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from .._errors import CacheError, ConfigError
from ._layout import _Layout, _name_of, _slot_of
from ._membership import DEFAULT_PATH, Membership, ZooKeeperMembership
from ._nodes import DOWN, REPAIRING, UP, _Keys, _Node, _pack
from ._repair import _Health

log = logging.getLogger(__name__)

#: Keys remembered for a server that is down, on each server holding one of their
#: copies; past this the server is wiped and resynced whole when it comes back.
MAX_HINTS = 100_000


class RedisRing:
    """Redis servers sharing one cache: each key on its owner and ``replicas`` more.

    ``urls`` are ``redis://``, ``rediss://`` or ``unix://`` URLs. With ``zookeeper``
    (``"HOST:PORT"``) the servers registered under ``zk_path`` (see
    :func:`~spindle.cache._membership.register_node`) are members too, and the ring
    follows them as they come and go. Keys and values are bytes; every Redis key the
    ring writes starts with ``namespace:``, and :meth:`clear` removes only those.

    Thread-safe; a background thread checks the servers every ``health_interval``
    seconds until :meth:`close`. Picklable: a copy in another process connects anew.

    - ``replicas``: copies of each key besides its owner's, on the next distinct
      servers of the ring (capped by the number of servers).
    - ``vnodes``: points on the ring per server; more spread keys more evenly.
    - ``timeout``: seconds a connect, a send or a reply may take before the server is
      marked down; a down server is skipped (no wait) until the health check sees it.
    - ``namespace`` and ``zk_path``: the prefix of the ring's Redis keys, and where
      servers are registered in ZooKeeper.

    A server that cannot be reached at start is marked down with a warning naming
    it; when none can, :class:`~spindle.CacheError` names each with its error.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        replicas: int = 1,
        zookeeper: str | None = None,
        vnodes: int = 64,
        timeout: float = 0.5,
        health_interval: float = 1.0,
        namespace: str = "spindle",
        zk_path: str = DEFAULT_PATH,
    ) -> None:
        if isinstance(urls, str):
            raise ConfigError("urls must be a list of Redis URLs, not one string")
        urls = tuple(urls)
        if not urls and zookeeper is None:
            raise ConfigError("a Redis ring needs at least one Redis URL, or zookeeper=")
        if replicas < 0:
            raise ConfigError(f"replicas must be >= 0, got {replicas}")
        if vnodes < 1:
            raise ConfigError(f"vnodes must be >= 1, got {vnodes}")
        if timeout <= 0 or health_interval <= 0:
            raise ConfigError("timeout and health_interval must be > 0 seconds")
        if not namespace or ":" in namespace:
            raise ConfigError(f"namespace must be a non-empty name without ':', got {namespace!r}")
        self._urls = urls
        self._options: dict[str, Any] = {
            "replicas": replicas,
            "zookeeper": zookeeper,
            "vnodes": vnodes,
            "timeout": timeout,
            "health_interval": health_interval,
            "namespace": namespace,
            "zk_path": zk_path,
        }
        redis = _load_redis()
        self._node_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._connection_args: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self._parse_url: Callable[[str], dict[str, Any]] = redis.connection.parse_url
        self._default_class = redis.connection.Connection
        self._copies = 1 + replicas
        self._vnodes = vnodes
        self._keys = _Keys(namespace)

        statics: dict[str, _Node] = {}
        for url in urls:
            node = self._node_for(url)
            if node.name in statics:
                raise ConfigError(f"Redis server {node.name} is listed twice")
            statics[node.name] = node
        self._nodes: dict[str, _Node] = dict(statics)  # every server ever a member
        self._lock = threading.Lock()  # node states (the health thread's too), the layout's swap
        self._installing = threading.Lock()  # one membership change at a time
        self._closed = False
        self._layout = _Layout((), vnodes, "the Redis ring is starting")
        self._health = _Health(
            lambda: self._layout,
            keys=self._keys,
            copies=self._copies,
            errors=self._node_errors,
            lock=self._lock,
            interval=health_interval,
        )
        self._membership: Membership = (
            ZooKeeperMembership(zookeeper, urls, path=zk_path)
            if zookeeper is not None
            else Membership(urls)
        )
        try:
            self._membership.start(self._on_members)
            self._install()
            if not self._layout.members:
                raise CacheError(f"no Redis server in the ring ({self._membership.describe()})")
            self._health.probe()
            self._health.start()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the API

    def get(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None (a miss, or every copy of it is down)."""
        layout = self._layout
        walk = layout.walk(key)
        node = layout.nodes[next(walk)]
        if node.state == UP:
            t0 = time.perf_counter_ns()
            try:
                conn = node.send(_pack(b"GET", self._keys.prefix + key))
                (value,) = node.receive(conn, 1)
            except Exception as exc:
                self._failed(node, exc)
            else:
                node.record(time.perf_counter_ns() - t0)
                node.gets += 1
                if value is not None:
                    node.hits += 1
                return value  # type: ignore[no-any-return]
        return self._get_fallback(key, layout, node, walk)

    def set(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` on its copies, for ``ttl`` seconds (None: no expiry).

        Raises :class:`~spindle.CacheError` when no copy of the key could take it.
        """
        pkey = self._keys.prefix + key
        if ttl is None:
            command = _pack(b"SET", pkey, value)
        else:
            if not ttl > 0:
                raise ConfigError(f"ttl must be > 0 seconds or None, got {ttl!r}")
            command = _pack(b"SET", pkey, value, b"PX", b"%d" % max(1, round(ttl * 1000)))
        self._write(key, command, "sets")

    def delete(self, key: bytes) -> None:
        """Remove ``key`` from its copies (a copy that is down is told when it is back)."""
        self._write(key, _pack(b"DEL", self._keys.prefix + key), "deletes")

    def clear(self) -> None:
        """Remove every key of this ring's namespace from its servers.

        Only the ring's own keys go (a server may hold others). A server that is down is
        flagged, on the servers that are up, to be wiped and refilled when it is back.
        """
        layout = self._layout
        pattern = self._keys.prefix[: -len(b"k:")] + b"[kho]:*"
        live = [n for n in layout.members if n.state != DOWN]
        for node in live:
            try:
                for batch in node.scan(pattern):
                    node.call(_pack(b"UNLINK", *batch))
            except Exception as exc:
                self._failed(node, exc)
        down = [n for n in layout.members if n.state == DOWN]
        if down:
            flags = b"".join(_pack(b"SET", self._keys.flag_prefix + n.tag, b"1") for n in down)
            for node in live:
                try:
                    node.call(flags, len(down))
                except Exception as exc:
                    self._failed(node, exc)

    def locate(self, key: bytes) -> list[str]:
        """The servers that hold ``key``'s copies, its owner first, whatever their state."""
        return [node.name for node in self._layout.copies(key, self._copies)]

    def stats(self) -> dict[str, Any]:
        """Per server: state, counts, latency median and p99 (µs); the ring's members."""
        layout = self._layout
        return {
            "membership": self._membership.describe(),
            "replicas": self._copies - 1,
            "vnodes": self._vnodes,
            "namespace": self._options["namespace"],
            "members": [n.name for n in layout.members],
            "nodes": {n.name: n.stats() for n in layout.members},
        }

    def close(self) -> None:
        """Stop the health thread and the membership watch, close every connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._layout = _Layout((), self._vnodes, "the Redis ring is closed")
            nodes = list(self._nodes.values())
        self._membership.close()
        self._health.stop()
        for node in nodes:
            node.close()

    def __enter__(self) -> RedisRing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[..., RedisRing], tuple[Any, ...]]:
        return _reopen, (self._urls, self._options)

    def __repr__(self) -> str:
        members = self._layout.members
        counts = {state: sum(n.state == state for n in members) for state in (UP, REPAIRING, DOWN)}
        return (
            f"RedisRing({len(members)} servers: {counts[UP]} up, {counts[REPAIRING]} repairing, "
            f"{counts[DOWN]} down; replicas={self._copies - 1}, {self._membership.describe()})"
        )

    # ------------------------------------------------------------------ reads and writes

    def _get_fallback(
        self, key: bytes, layout: _Layout, owner: _Node, walk: Iterator[int]
    ) -> bytes | None:
        """The owner is not up: the first copy that is up, then those being repaired."""
        copies = [owner, *(layout.nodes[s] for s in itertools.islice(walk, self._copies - 1))]
        order = [n for n in copies if n.state == UP] + [n for n in copies if n.state == REPAIRING]
        command = _pack(b"GET", self._keys.prefix + key)
        for node in order:
            t0 = time.perf_counter_ns()
            try:
                (value,) = node.call(command)
            except Exception as exc:
                self._failed(node, exc)
                continue
            node.record(time.perf_counter_ns() - t0)
            node.gets += 1
            if node is not owner:
                node.fallbacks += 1
            if value is not None:
                node.hits += 1
                return value  # type: ignore[no-any-return]
            if node.state == UP:
                return None  # an up copy's miss is a miss
        return None

    def _write(self, key: bytes, command: bytes, counter: str) -> None:
        copies = self._layout.copies(key, self._copies)
        missed = [n for n in copies if n.state == DOWN]  # read once: each is hinted or sent
        targets = [n for n in copies if n not in missed]
        hints = self._hints(key, missed)
        payload = command + hints
        replies = 1 + 2 * len(missed)
        sent: list[tuple[_Node, Any]] = []
        failed: list[_Node] = []
        problem: Exception | None = None
        t0 = time.perf_counter_ns()
        for node in targets:
            try:
                sent.append((node, node.send(payload)))
            except Exception as exc:
                problem = problem or self._note_failure(node, exc, failed)
        done: list[_Node] = []
        for node, conn in sent:
            try:
                answers = node.receive(conn, replies)
            except Exception as exc:
                problem = problem or self._note_failure(node, exc, failed)
                continue
            node.record(time.perf_counter_ns() - t0)
            setattr(node, counter, getattr(node, counter) + 1)
            done.append(node)
            if missed:
                self._count_hints(node, missed, answers[2::2])
        if problem is not None:
            raise CacheError(f"Redis refused a write of the ring: {problem}") from problem
        if not done:
            names = ", ".join(n.name for n in copies)
            raise CacheError(
                f"cannot write {key[:60]!r}: none of its copies answers ({names}); "
                "see stats() for each server's last error"
            )
        if failed:  # copies lost during this write: hint them where the write went
            late = self._hints(key, failed)
            for node in done:
                try:
                    answers = node.call(late, 2 * len(failed))
                except Exception as exc:
                    self._failed(node, exc)
                else:
                    self._count_hints(node, failed, answers[1::2])

    def _hints(self, key: bytes, missed: Sequence[_Node]) -> bytes:
        """Commands adding ``key`` to each missed server's hint set (and its size)."""
        out: list[bytes] = []
        for node in missed:
            hint = self._keys.hint_prefix + node.tag
            out += (_pack(b"SADD", hint, key), _pack(b"SCARD", hint))
            node.hints += 1
        return b"".join(out)

    def _count_hints(self, holder: _Node, missed: Sequence[_Node], sizes: Sequence[Any]) -> None:
        """A hint set past MAX_HINTS becomes a flag: wipe and resync that server."""
        for node, size in zip(missed, sizes, strict=True):
            if int(size) > MAX_HINTS:
                flag = _pack(b"SET", self._keys.flag_prefix + node.tag, b"1")
                try:
                    holder.call(flag + _pack(b"DEL", self._keys.hint_prefix + node.tag), 2)
                except Exception as exc:
                    self._failed(holder, exc)

    def _note_failure(self, node: _Node, exc: Exception, failed: list[_Node]) -> Exception | None:
        """A server failed during a write: down (returns None), or a refusal to report."""
        if isinstance(exc, self._node_errors):
            self._health.mark_down(node, exc)
            failed.append(node)
            return None
        node.errors += 1
        return exc

    def _failed(self, node: _Node, exc: Exception) -> None:
        """A command to ``node`` raised: a server that cannot be reached is marked down;
        anything else (an error reply) is the caller's error."""
        if isinstance(exc, self._node_errors):
            self._health.mark_down(node, exc)
            return
        node.errors += 1
        raise CacheError(f"Redis server {node.name} refused a command: {exc}") from exc

    # ------------------------------------------------------------------ membership

    def _node_for(self, url: str) -> _Node:
        try:
            args = self._parse_url(url)
        except ValueError as exc:
            raise ConfigError(f"not a Redis URL: {url!r} ({exc})") from exc
        cls = args.pop("connection_class", self._default_class)
        for option, value in self._connection_args.items():
            args.setdefault(option, value)
        name = _name_of(url, args)
        make = partial(cls, **args)
        try:
            make()  # checks the URL's options now; connects only when used
        except TypeError as exc:
            raise ConfigError(f"bad option in Redis URL {url!r}: {exc}") from exc
        return _Node(name, make, _slot_of(name))

    def _install(self) -> list[_Node]:
        """Make the membership's latest list the ring's members; the servers that left.

        The list is read and installed under one lock, so two changes in a row cannot
        leave the older one installed. A server new to the ring, or back in it, is
        repairing: the health thread checks it (and fills it) before it is read.
        """
        with self._installing:
            members: dict[str, _Node] = {}
            for url in self._membership.members():
                node = self._node_for(url)
                with self._lock:
                    node = self._nodes.setdefault(node.name, node)
                members[node.name] = node
            with self._lock:
                if self._closed:
                    return []
                before = self._layout.members
                for node in members.values():
                    if node not in before and node.state == UP:
                        node.state = REPAIRING  # back: what did it miss?
                why = f"no Redis server in the ring ({self._membership.describe()})"
                self._layout = _Layout(members.values(), self._vnodes, why)
                return [n for n in before if n.name not in members]

    def _on_members(self) -> None:
        """The membership changed (kazoo's thread): a new layout, and a health check now.

        A server that left is marked as such on itself (when it can be reached): writes
        go elsewhere while it is out, so if it comes back it is wiped and refilled.
        """
        left = self._install()
        for node in left:
            try:
                node.call(_pack(b"SET", self._keys.left, b"1"))
            except Exception as exc:  # it may be gone for good: noted, the ring goes on
                node.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not mark Redis server %s as left: %s", node.name, exc)
        if left:
            log.info("Redis servers left the ring: %s", ", ".join(n.name for n in left))
        self._health.wake()


def _reopen(urls: Sequence[str], options: dict[str, Any]) -> RedisRing:
    return RedisRing(urls, **options)


def _load_redis() -> Any:
    try:
        import redis.backoff
        import redis.connection
        import redis.exceptions
        import redis.retry
    except ImportError as exc:
        raise CacheError("the Redis ring needs redis-py: pip install 'spindle[redis]'") from exc
    return redis
