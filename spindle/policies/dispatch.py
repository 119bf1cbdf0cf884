"""Dispatch: which worker gets the next batch.

Two policies, chosen per stage:

* **Least loaded** (the default): the usable worker with the fewest batches sent and
  not yet answered. With a prefetch of two batches per worker this keeps every worker
  busy without a queue building up behind a slow one.
* **Key affinity** (``route=``): items with the same key go to the same worker, so
  that what a worker keeps per key (a connection pool, a rate limit per host, a cache)
  lives in one place. Keys are placed on a :class:`HashRing` of worker slots, so when
  a worker is down (being replaced) only its own keys move, each to the next slot on
  the ring, and they come back when its replacement is up.

Both run in the parent for every batch, so both are plain synchronous code with no
allocation in the common case: the least-loaded pick is one pass over the workers,
and the ring remembers the slot order of each key it has seen.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence, Sized
from typing import Any, Protocol, TypeVar


class Loaded(Protocol):
    """A worker as the least-loaded pick sees it."""

    @property
    def usable(self) -> bool:
        """The worker may be sent a batch now."""
        ...

    @property
    def pending(self) -> Sized:
        """The batches sent to the worker and not yet answered."""
        ...

    @property
    def index(self) -> int:
        """The worker's slot, its place on a :class:`HashRing`."""
        ...


W = TypeVar("W", bound=Loaded)


def least_loaded(workers: Iterable[W]) -> W | None:
    """The usable worker with the fewest pending batches (the first of equals);
    None when no worker is usable."""
    best: W | None = None
    for w in workers:
        if w.usable and (best is None or len(w.pending) < len(best.pending)):
            best = w
    return best


def choose(
    workers: Sequence[W],
    items: Sequence[Any],
    ring: HashRing | None,
    route: Callable[[Any], Any] | None,
) -> W | None:
    """The worker for a batch: with key affinity (a ``ring`` and its ``route``), a
    batch of one item goes to the usable worker that takes its key on the ring;
    otherwise, or when its key cannot be computed, the least-loaded usable worker.
    None when no worker is usable."""
    if ring is not None and route is not None and len(items) == 1:
        try:
            key = route(items[0])
        except Exception:  # the least-loaded worker takes the item
            key = None
        else:
            usable = {w.index: w for w in workers if w.usable}
            slot = ring.place(key, usable)
            if slot is not None:
                return usable[slot]
    return least_loaded(workers)



class HashRing:
    """A consistent-hash ring of slots: a stable slot for every key.

    Each slot owns ``points`` points on a ring of 64-bit hashes (blake2b, so the same
    key lands on the same slot in every process and every run); a key belongs to the
    slot of the first point after the key's own hash. With many points per slot the
    keys spread evenly, and removing a slot moves only the keys it owned.

    >>> ring = HashRing(range(4))
    >>> owner = ring.place("example.org", range(4))
    >>> ring.place("example.org", range(4)) == owner
    True
    >>> others = [s for s in range(4) if s != owner]
    >>> ring.place("example.org", others) == ring.order("example.org")[1]
    True
    """

    #: Points on the ring per slot.
    POINTS = 64
    #: Keys whose slot order is remembered; the memory is emptied when full.
    CACHE = 65_536

    __slots__ = ("_cache", "_hashes", "_slots")

    def __init__(self, slots: Iterable[int], *, points: int = POINTS) -> None:
        if points < 1:
            raise ValueError(f"points must be >= 1, got {points}")
        self._cache: dict[Any, tuple[int, ...]] = {}
        ring = sorted((_hash64(f"{slot}:{i}"), slot) for slot in slots for i in range(points))
        if not ring:
            raise ValueError("a hash ring needs at least one slot")
        self._hashes = [h for h, _ in ring]
        self._slots = [slot for _, slot in ring]

    def walk(self, key: Any) -> Iterator[int]:
        """Every slot once, in ring order from the key's point (``str(key)`` is hashed)."""
        start = bisect.bisect(self._hashes, _hash64(str(key)))
        seen: set[int] = set()
        slots = self._slots
        n = len(slots)
        for i in range(n):
            slot = slots[(start + i) % n]
            if slot not in seen:
                seen.add(slot)
                yield slot

    def order(self, key: Any) -> tuple[int, ...]:
        """Every slot in ring order from the key's point, remembered per key.

        Every item is placed, and a crawl has far fewer hosts than URLs: a lookup in
        the memory replaces a hash and a walk. The memory is emptied when it reaches
        ``CACHE`` keys, so a stream of distinct keys costs no more memory. ``key``
        must be hashable; :meth:`walk` takes any key.
        """
        cache = self._cache
        found = cache.get(key)
        if found is None:
            if len(cache) >= self.CACHE:
                cache.clear()
            found = cache[key] = tuple(self.walk(key))
        return found

    def place(self, key: Any, up: Collection[int]) -> int | None:
        """The slot of ``up`` (the slots that can take work now) that takes ``key``.

        That is the first slot of ``up`` in the key's ring order: the key's owner when
        it is up, else the next one on the ring. A key ``(key, i)``, ``i`` an int,
        spreads one key over several slots: it goes to the i-th slot of ``up`` in
        ``key``'s ring order (modulo ``len(up)``), so ``(host, n % 4)`` spreads a host
        over four workers, always the same four while they are up. None when ``up``
        holds no slot of the ring.
        """
        if not up:
            return None
        share = 0
        if type(key) is tuple and len(key) == 2 and type(key[1]) is int:
            key, share = key
            share %= len(up)
        try:
            order: Iterable[int] = self.order(key)
        except TypeError:  # an unhashable key: walk the ring without the memory
            order = self.walk(key)
        for slot in order:
            if slot in up:
                if not share:
                    return slot
                share -= 1
        return None


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
