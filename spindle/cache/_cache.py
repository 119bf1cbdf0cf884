"""``spindle.Cache``: a cache shared in memory by every process of one machine.

```
 Cache.get(key) ──▶ shared memory (LMDB on /dev/shm) ── hit ──▶ value
                         │ miss, and a Redis ring is configured
                         ▼
                    RedisRing.get ── hit ──▶ kept in shared memory for near_ttl ──▶ value
 Cache.set(key, value, ttl) ──▶ shared memory (expiry: ttl, at most near_ttl with a ring)
                            └─▶ RedisRing.set (expiry: ttl)
 Cache.get_or_set(key, fn) ──▶ get ── miss ──▶ lock the key (fcntl: machine-wide; the
                                               kernel frees it if the holder dies)
                                               ──▶ get again ── miss ──▶ fn() ──▶ set
```

A handle is cheap: every handle of one process to one directory shares one opened
store (``_store.attach``). It pickles as its path (fork, spawn, cloudpickle), and the
copy opens the same directory; after a fork, a handle the child inherited opens it
again on first use.
"""

from __future__ import annotations

import os
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

from .._errors import CacheError, ConfigError
from . import _store
from ._codec import decode, encode_key, encode_value, human, parse_size, record, show
from ._store import MIN_MAX_BYTES, MISSING, Store

T = TypeVar("T")

#: Seconds an entry read from (or written to) the Redis ring stays in shared memory.
NEAR_TTL = 5.0
#: The key :meth:`Cache.probe` reads (never written).
_PROBE = b"spindle:probe"
#: Keys whose stored form a handle remembers (then it forgets them all); a key longer
#: than KEY_MEMO_LENGTH bytes is encoded again each time.
KEY_MEMO = 16_384
KEY_MEMO_LENGTH = 256


class Ring(Protocol):
    """What the cache needs of its second tier (:class:`~spindle.cache._ring.RedisRing`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes, ttl: float | None = None) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def clear(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CacheStats:
    """A cache's figures, summed over every process of the machine since it was made.

    ``entries`` and ``bytes_used`` (keys and records, not LMDB's pages around them)
    count entries whose time is up until a write evicts or replaces them; ``expired``
    counts reads that found one (they are misses too). The counts are those of the
    shared memory: with a Redis ring, a value brought from the ring counts as a miss
    and a set here, and ``ring`` holds the ring's own figures.
    """

    hits: int
    misses: int
    sets: int
    deletes: int
    evictions: int
    expired: int
    bytes_used: int
    entries: int
    max_bytes: int
    path: str
    ring: dict[str, Any] | None = field(default=None)

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before the first)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class _Closed:
    """Stands in for the store of a closed handle: it is always stale."""

    stale = True


_CLOSED: Any = _Closed()


def _default_directory() -> str:
    """A new directory for a cache: on the memory file system when there is one."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="spindle-cache-", dir=base)


class Cache:
    """A cache shared in memory by every process of one machine, bounded in bytes.

    ``Cache(max_bytes="256MB")`` makes a new cache in a fresh directory of
    ``/dev/shm`` (removed when this handle is closed); ``Cache(path=DIR)`` opens the
    cache at ``DIR``, making it if needed (it stays until removed). ``max_bytes`` (an
    int, or a string such as ``"256MB"`` or ``"1GiB"``) bounds the keys and values
    stored; over it, the entries read least recently are evicted (sampled, as Redis
    does). ``max_bytes=None`` takes the budget of an existing cache, 256 MiB for a
    new one.

    Keys are ``str`` or ``bytes`` (``"a"`` and ``b"a"`` are two keys). Values of type
    ``bytes`` and ``str`` are stored as they are; anything else is pickled (protocol
    5) and comes back as a copy. ``ttl`` is in seconds.

    A handle pickles to any process of the machine (fork, spawn, cloudpickle) as a
    handle on the same memory; it is safe to share between threads.

    With ``redis=[URL, ...]`` (and ``replicas``, ``zookeeper``: see
    :class:`~spindle.cache._ring.RedisRing`, ``pip install 'spindle[redis]'``), the
    cache has a second tier shared by machines: a read that misses here asks the ring
    and keeps what it finds here for ``near_ttl`` seconds; a write goes to both, so a
    value changed by another machine is seen here within ``near_ttl``.
    """

    _cleanup: weakref.finalize[Any, Any] | None
    _ring_obj: Ring | None

    def __init__(
        self,
        max_bytes: int | str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        redis: Sequence[str] | None = None,
        replicas: int = 1,
        zookeeper: str | None = None,
        near_ttl: float = NEAR_TTL,
        _ring: Ring | None = None,
        _clock: Callable[[], float] = time.time,
    ) -> None:
        budget = None if max_bytes is None else parse_size(max_bytes)
        if budget is not None and budget < MIN_MAX_BYTES:
            raise ConfigError(f"max_bytes must be at least {MIN_MAX_BYTES:,}, got {budget:,}")
        if isinstance(redis, str):
            raise ConfigError("redis= takes a list of Redis URLs, not one string")
        if not near_ttl > 0:
            raise ConfigError(f"near_ttl must be > 0 seconds, got {near_ttl!r}")
        ring_spec: tuple[Any, ...] | None = None
        if _ring is not None:
            ring_spec = ("object", _ring)
        elif redis is not None or zookeeper is not None:
            ring_spec = ("redis", tuple(redis or ()), replicas, zookeeper)
        owner = path is None
        directory = _default_directory() if path is None else os.fspath(path)
        if owner and budget is not None:
            _check_room(directory, budget)
        try:
            store = _store.attach(directory, budget, create=True)
        except BaseException:
            if owner:
                _store.remove_directory(directory, os.getpid())
            raise
        self._setup(store, directory, ring_spec, near_ttl, _clock)
        if _ring is not None:  # the handle owns the ring it was given: close() closes it
            self._ring_obj, self._ring_generation = _ring, _store.generation()
        if owner:  # the directory goes with this handle, even if it is never closed
            self._cleanup = weakref.finalize(
                self, _store.remove_directory, directory, os.getpid()
            )

    def _setup(
        self,
        store: Store,
        path: str,
        ring_spec: tuple[Any, ...] | None,
        near_ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._st: Any = store
        self._path = path
        self._closed = False
        self._clock = clock
        self._near_ttl = near_ttl
        self._ring_spec = ring_spec
        self._ring_obj = None
        self._ring_generation = -1
        self._cleanup = None
        #: key -> (stored key, tagged key, hash): encoding a key is a fifth of a read
        self._keys: dict[Any, tuple[bytes, bytes, int]] = {}

    # ------------------------------------------------------------------ the API

    @property
    def path(self) -> str:
        """The cache's directory."""
        return self._path

    @property
    def max_bytes(self) -> int:
        """The budget of keys and values, in bytes."""
        return int(self._live().max_bytes)

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value cached under ``key``, or ``default``."""
        st = self._st
        if st.stale:
            st = self._revive()
        try:
            encoded = self._keys.get(key)
        except TypeError:  # unhashable: a bytearray
            encoded = None
        lkey, tagged, h = encoded or self._encode(key)
        value = st.get(lkey, h, self._clock())
        if value is MISSING:
            if self._ring_spec is None:
                return default
            value = self._ring_get(st, lkey, tagged, h)
            if value is MISSING:
                return default
        return value

    def probe(self) -> float:
        """Seconds one read of the shared memory takes now, for a key that is not
        there: counted nowhere and never sent to the ring, so that watching the cache
        (a run's snapshot shows this) changes none of its figures."""
        st = self._st
        if st.stale:
            st = self._revive()
        lkey, _, h = self._encode(_PROBE)
        started = time.perf_counter()
        st.get(lkey, h, self._clock(), count_miss=False)
        return time.perf_counter() - started

    def set(self, key: str | bytes, value: Any, ttl: float | None = None) -> None:
        """Cache ``value`` under ``key``, for ``ttl`` seconds (None: until evicted).

        Raises :class:`~spindle.CacheError` for a value pickle refuses, or one larger
        than the whole budget.
        """
        st = self._st
        if st.stale:
            st = self._revive()
        try:
            encoded = self._keys.get(key)
        except TypeError:  # unhashable: a bytearray
            encoded = None
        lkey, tagged, h = encoded or self._encode(key)
        tag, payload = encode_value(key, value)
        now = self._clock()
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be > 0 seconds or None, got {ttl!r}")
        ring = self._ring_spec is not None
        local_ttl = ttl
        if ring:  # shared memory is the near cache: it keeps a value near_ttl at most
            local_ttl = self._near_ttl if ttl is None else min(ttl, self._near_ttl)
        rec = record(tag, payload, None if local_ttl is None else now + local_ttl)
        size = len(lkey) + len(rec)
        if size > st.max_bytes:
            raise CacheError(
                f"the value for key {show(key)} takes {size:,} bytes with its key, more than "
                f"the cache's whole budget of {st.max_bytes:,} bytes (max_bytes): cache "
                "something smaller, or make the cache larger"
            )
        st.put(lkey, h, rec, now)
        if ring:
            self._ring().set(tagged, bytes((tag,)) + payload, ttl)

    def delete(self, key: str | bytes) -> bool:
        """Remove ``key``; whether it was cached here (with a ring, it is removed there
        too)."""
        st = self._live()
        lkey, tagged, _ = self._encode(key)
        found = bool(st.delete(lkey))
        if self._ring_spec is not None:
            self._ring().delete(tagged)
        return found

    def get_or_set(self, key: str | bytes, fn: Callable[[], T], ttl: float | None = None) -> T:
        """The value cached under ``key``; if there is none, ``fn()``, cached and returned.

        On a miss, one process of the machine (one thread in it) calls ``fn``; the
        others wait for the key's lock and read what it cached, without calling ``fn``.
        If the process calling ``fn`` dies, the kernel frees the lock and a waiting
        process calls ``fn`` at once. An exception from ``fn`` is raised to its caller
        and caches nothing (the next waiter calls ``fn`` itself).
        """
        value = self.get(key, MISSING)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]
        st = self._live()
        lkey, tagged, h = self._encode(key)
        with st.key_lock(h):
            value = st.get(lkey, h, self._clock(), count_miss=False)
            if value is MISSING and self._ring_spec is not None:
                value = self._ring_get(st, lkey, tagged, h)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            made = fn()
            self.set(key, made, ttl)
            return made

    def clear(self) -> None:
        """Remove every entry (from the ring too, when there is one)."""
        self._live().clear()
        if self._ring_spec is not None:
            self._ring().clear()

    def stats(self) -> CacheStats:
        """Hits, misses, sets, evictions... of every process, and the occupancy."""
        c = self._live().counts()
        return CacheStats(
            hits=c.hits,
            misses=c.misses,
            sets=c.sets,
            deletes=c.deletes,
            evictions=c.evictions,
            expired=c.expired,
            bytes_used=c.bytes_used,
            entries=c.entries,
            max_bytes=c.max_bytes,
            path=self._path,
            ring=self._ring().stats() if self._ring_spec is not None else None,
        )

    def close(self) -> None:
        """Let go of the cache in this handle. The handle that made a cache with
        ``path=None`` also removes its directory: handles elsewhere keep what they
        opened, and new ones can no longer open it."""
        if not _store.release(self, _CLOSED):
            return
        with _store.registry_lock():
            ring, self._ring_obj = self._ring_obj, None
        try:
            if ring is not None and self._ring_generation == _store.generation():
                ring.close()
        finally:
            if self._cleanup is not None:
                self._cleanup()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise CacheError(f"{self!r} is closed: it cannot be sent to another process")
        return (_reopen, (self._path, self._ring_spec, self._near_ttl))

    def __repr__(self) -> str:
        if self._closed:
            return f"Cache({self._path!r}, closed)"
        try:
            s = self.stats()
        except Exception as exc:  # a repr must not fail
            return f"Cache({self._path!r}, unreadable: {exc})"
        return (
            f"Cache({self._path!r}, {human(s.bytes_used)} of {human(s.max_bytes)}, "
            f"{s.entries:,} entries, {s.hit_rate:.0%} hits"
            + (", with a Redis ring)" if self._ring_spec is not None else ")")
        )

    # ------------------------------------------------------------------ inside

    def _encode(self, key: Any) -> tuple[bytes, bytes, int]:
        """A key's stored form, tagged form and hash, remembered for next time."""
        encoded = encode_key(key)
        if type(key) in (str, bytes) and len(encoded[1]) <= KEY_MEMO_LENGTH:
            keys = self._keys
            if len(keys) >= KEY_MEMO:
                keys.clear()
            keys[key] = encoded
        return encoded

    def _live(self) -> Any:
        st = self._st
        return self._revive() if st.stale else st

    def _revive(self) -> Store:
        """The store again, after a fork (or say the handle is closed)."""
        return _store.reattach(self)

    def _ring(self) -> Ring:
        """This process's ring (a forked child makes its own: a ring's connections and
        thread belong to the process that made them)."""
        ring = self._ring_obj
        if ring is not None and self._ring_generation == _store.generation():
            return ring
        with _store.registry_lock():  # not a lock of the handle's: a fork makes a new one
            if self._closed:
                raise CacheError(f"Cache({self._path!r}) is closed: open the cache again")
            if self._ring_obj is None or self._ring_generation != _store.generation():
                spec = self._ring_spec
                assert spec is not None
                if spec[0] == "object":
                    self._ring_obj = spec[1]
                else:
                    from ._ring import RedisRing

                    _, urls, replicas, zookeeper = spec
                    self._ring_obj = RedisRing(urls, replicas=replicas, zookeeper=zookeeper)
                self._ring_generation = _store.generation()
            assert self._ring_obj is not None
            return self._ring_obj

    def _ring_get(self, st: Store, lkey: bytes, tagged: bytes, h: int) -> Any:
        """Ask the ring; keep what it has here for ``near_ttl``."""
        raw = self._ring().get(tagged)
        if raw is None or len(raw) < 1:
            return MISSING
        now = self._clock()
        tag, payload = raw[0], raw[1:]
        rec = record(tag, payload, now + self._near_ttl)
        if len(lkey) + len(rec) <= st.max_bytes:
            st.put(lkey, h, rec, now)
        return decode(tag, payload)


def _reopen(path: str, ring_spec: tuple[Any, ...] | None, near_ttl: float) -> Cache:
    """A handle on the cache at ``path``, in a process it was pickled to."""
    self = Cache.__new__(Cache)
    self._setup(_store.attach(path, None, create=False), path, ring_spec, near_ttl, time.time)
    return self


def _check_room(directory: str, budget: int) -> None:
    """Refuse a budget the file system of a new cache cannot hold."""
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if budget > free:
        _store.remove_directory(directory, os.getpid())
        raise ConfigError(
            f"max_bytes={budget:,} does not fit in {os.path.dirname(directory)}, which has "
            f"{human(free)} free: give a smaller max_bytes, or path= on a larger file system"
        )
