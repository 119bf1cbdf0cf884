"""Dispatch: which worker gets the next batch.

A cpu stage's ``dispatch=`` option names its policy, as a string (the form the
command line and configuration files use too):

* ``"least-loaded"`` (the default): the usable worker with the fewest batches sent
  and not yet answered. With a prefetch of two batches per worker this keeps every
  worker busy without a queue building up behind a slow one: a worker that is five
  times slower simply gets about a fifth of the batches. A worker that has been on
  one batch longer than :data:`STUCK` (a long job among quick ones) counts as the
  most loaded, so quick batches go to the others instead of waiting behind it. The
  right choice whenever the workers are interchangeable: for throughput, and for
  the latency of the quick jobs when job times vary.
* ``"round-robin"``: the usable workers in turn, by slot, skipping those that are
  not usable (starting, being replaced, retiring). Every worker gets the same share
  whatever its speed: for work whose per-worker cost must be even (a quota or a
  connection per worker), or to compare workers. A worker slower than its share
  holds the stage up: the batches sent to it wait there, up to the stage's capacity.
* ``"weighted:3,1"`` (or a list of numbers): smooth weighted round-robin, nginx's
  algorithm, one positive weight per worker slot: over any run of picks each worker's
  share is its weight over the total, and the picks of a heavy worker are spread
  between the others' rather than sent in a burst. For workers of known, unequal
  capacity (Ray actors on machines of different speeds) or a canary that should see
  a small share; like round-robin, it does not look at load. A worker that is not
  usable is passed over and the others share its turns, in proportion to their
  weights, until it is back.
* ``"key:FIELD"``: key affinity on the field ``FIELD`` of dict items: items with the
  same key go to the same worker, so that what a worker keeps per key (a connection
  pool, a rate limit per host, a cache) lives in one place. It is the stage option
  ``route=`` with ``item[FIELD]`` as the key function; an item that is
  not a dict, or lacks the field, goes to the least-loaded worker. Keys are placed on
  a :class:`HashRing` of worker slots, so when a worker is down (being replaced) only
  its own keys move, each to the next slot on the ring, and they come back when its
  replacement is up.

::

    "weighted:3,1" ── Dispatch.parse ──▶ Dispatch (frozen: on the stage and its WorkSpec)
                                             │ .chooser(slots, route)   once per run
                                             ▼
    executor._pick(items) ──▶ chooser.pick(workers, items) ──▶ a worker, or None (wait)

:class:`Dispatch` is the parsed option, plain data that a stage keeps and pickles; its
:meth:`~Dispatch.chooser` makes the per-run state (the round-robin turn, the weighted
counters, the ring) for the process and Ray executors alike. Every ``pick`` runs in
the parent for every batch, so each is plain synchronous code that builds no list,
dict or set: one pass over the workers (two for a spread key), and the ring remembers
the slot order of each key it has seen.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from .._errors import ConfigError


class Loaded(Protocol):
    """A worker as the dispatch policies see it."""

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
        """The worker's slot: its turn, its weight, its place on a :class:`HashRing`."""
        ...


W = TypeVar("W", bound=Loaded)

#: What a stage's ``dispatch=`` takes: a policy's string form, a list of weights, or
#: a parsed :class:`Dispatch`.
DispatchSpec: TypeAlias = "str | Sequence[float] | Dispatch"

#: The forms of ``dispatch=``, for messages.
DISPATCH_FORMS = "'least-loaded', 'round-robin', 'weighted:W1,W2,...' or 'key:FIELD'"

POLICIES: tuple[str, ...] = ("least-loaded", "round-robin", "weighted", "key")


#: Seconds a worker may spend on one batch before it counts as stuck (see
#: :func:`least_loaded`): twice the 20 ms that adaptive batches of quick jobs aim at,
#: and more.
STUCK = 0.05
#: What each :data:`STUCK` period on one batch adds to a worker's load: more than any
#: number of pending batches.
_STUCK_LOAD = 1 << 16


def least_loaded(workers: Iterable[W]) -> W | None:
    """The usable worker with the fewest pending batches (the first of equals);
    None when no worker is usable.

    A worker that has been on its current batch longer than :data:`STUCK` counts as
    more loaded than any other: a batch sent to it would wait behind a long job (a
    request of half a second among quick ones) while another worker gets through
    several. Workers say when they began their current batch in ``since``
    (``time.monotonic()``, 0.0 when idle); one without it is never stuck. When every
    worker is stuck, the one stuck for the fewest :data:`STUCK` periods comes first (a
    worker 60 ms into a batch before one held for a minute by a job that may never
    return), then the fewest pending batches, as without the rule."""
    best: W | None = None
    best_load = 0
    now = 0.0
    for w in workers:
        if not w.usable:
            continue
        load = len(w.pending)
        since = getattr(w, "since", 0.0)
        if since:
            if not now:
                now = time.monotonic()
            over = now - since
            if over > STUCK:
                load += min(int(over / STUCK), 1 << 30) * _STUCK_LOAD
        if best is None or load < best_load:
            best, best_load = w, load
    return best


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A stage's dispatch policy, parsed from its ``dispatch=`` option.

    >>> Dispatch.parse("weighted: 3, 1")
    Dispatch(policy='weighted', weights=(3, 1), field=None)
    >>> str(Dispatch.parse([0.5, 2]))
    'weighted:0.5,2'
    >>> str(Dispatch.parse("key:user"))
    'key:user'
    """

    #: One of :data:`POLICIES`.
    policy: str = "least-loaded"
    #: ``"weighted"``: one positive weight per worker slot.
    weights: tuple[float, ...] = ()
    #: ``"key"``: the field of dict items that is the key.
    field: str | None = None

    @classmethod
    def parse(cls, value: DispatchSpec | None) -> Dispatch:
        """The policy ``value`` names (None: the default, least loaded); a
        :class:`~spindle.ConfigError` says what is wrong with it."""
        if value is None:
            return LEAST_LOADED
        if isinstance(value, Dispatch):
            return value
        if not isinstance(value, str):
            if isinstance(value, Sequence):
                return cls("weighted", _weights(list(value), value, text=False))
            raise ConfigError(f"dispatch must be {DISPATCH_FORMS}; got {value!r}")
        text = value.strip()
        if text in ("least-loaded", "round-robin"):
            return cls(text)
        name, colon, rest = text.partition(":")
        name = name.strip()
        if name == "weighted" and colon:
            return cls("weighted", _weights(rest.split(","), value, text=True))
        if name == "key" and colon:
            field = rest.strip()
            if not field:
                raise ConfigError(
                    f"dispatch={value!r} names no field: 'key:FIELD' routes dict items by "
                    "their field FIELD, e.g. 'key:user'"
                )
            return cls("key", field=field)
        hint = ""
        if name == "weighted":
            hint = ": weighted dispatch takes one weight per worker, e.g. 'weighted:3,1'"
        elif name == "key":
            hint = ": key dispatch takes the field of the items' key, e.g. 'key:user'"
        raise ConfigError(f"dispatch must be {DISPATCH_FORMS}; got {value!r}{hint}")

    def __str__(self) -> str:
        if self.policy == "weighted":
            return "weighted:" + ",".join(str(w) for w in self.weights)
        if self.policy == "key":
            return f"key:{self.field}"
        return self.policy

    def check_workers(self, workers: int) -> None:
        """Weighted dispatch has one weight per worker: a
        :class:`~spindle.ConfigError` naming both numbers when it has not."""
        if self.policy == "weighted" and len(self.weights) != workers:
            raise ConfigError(
                f"dispatch={str(self)!r} gives {len(self.weights)} weights for {workers} "
                f"workers: give one weight per worker (or leave workers= out: "
                f"{len(self.weights)} weights make {len(self.weights)} workers)"
            )

    def chooser(self, slots: int, route: Callable[[Any], Any] | None = None) -> Chooser:
        """The policy's state for one run over ``slots`` worker slots (0 to
        ``slots - 1``); ``route`` is the stage's key function (``route=``), which
        goes with the default policy only."""
        if route is not None:
            if self.policy != "least-loaded":
                raise ConfigError(
                    f"route= is key affinity: it cannot go with dispatch={str(self)!r}"
                )
            return ByKey(HashRing(range(slots)), route=route)
        if self.policy == "round-robin":
            return RoundRobin(slots)
        if self.policy == "weighted":
            self.check_workers(slots)
            return Weighted(self.weights)
        if self.policy == "key":
            return ByKey(HashRing(range(slots)), field=self.field)
        return LeastLoaded()


#: The default policy.
LEAST_LOADED = Dispatch()


def _weights(parts: list[Any], value: Any, *, text: bool) -> tuple[float, ...]:
    """Positive finite weights (numbers, or with ``text`` their strings), ints kept as
    ints so that shares add up exactly."""
    weights: list[float] = []
    for part in parts:
        weight: float
        if text and isinstance(part, str):
            string = part.strip()
            try:
                weight = int(string)
            except ValueError:
                try:
                    weight = float(string)
                except ValueError:
                    weight = math.nan
        elif isinstance(part, (int, float)) and not isinstance(part, bool):
            weight = part
        else:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(
                f"dispatch={value!r}: weights are positive numbers, one per worker "
                f"(e.g. 'weighted:3,1'); {part!r} is not"
            )
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        weights.append(weight)
    if not weights:
        raise ConfigError(
            f"dispatch={value!r} gives no weight: give one per worker, e.g. 'weighted:3,1'"
        )
    return tuple(weights)


class Chooser(Protocol):
    """One run's dispatch: the worker for each batch."""

    def pick(self, workers: Sequence[W], items: Sequence[Any]) -> W | None:
        """The worker of ``workers`` that takes the batch ``items``; None when no
        worker is usable (the executor waits for one)."""
        ...


class LeastLoaded:
    """``"least-loaded"``: see :func:`least_loaded`."""

    __slots__ = ()

    def pick(self, workers: Sequence[W], items: Sequence[Any]) -> W | None:
        return least_loaded(workers)


class RoundRobin:
    """``"round-robin"``: the usable worker whose slot comes first from the turn on,
    cyclically; the turn then passes to the slot after it."""

    __slots__ = ("_next", "_slots")

    def __init__(self, slots: int) -> None:
        self._slots = max(1, slots)
        self._next = 0

    def pick(self, workers: Sequence[W], items: Sequence[Any]) -> W | None:
        n, start = self._slots, self._next
        best: W | None = None
        distance = n
        for w in workers:
            if w.usable:
                d = (w.index - start) % n
                if d < distance:
                    best, distance = w, d
                    if not d:
                        break
        if best is not None:
            self._next = (best.index + 1) % n
        return best


class Weighted:
    """``"weighted:..."``: smooth weighted round-robin (nginx's).

    Each pick adds every usable worker's weight to its counter and takes the worker
    with the highest counter (the first of equals), whose counter then drops by the
    total of the weights added. Over ``sum(weights)`` picks with every worker usable,
    each worker is picked exactly ``weight`` times, evenly spread: weights 5,1,1 give
    ``a a b a c a a``, not ``a a a a a b c``. A worker not usable is left out of the
    pick (its counter waits), so its turns go to the others.
    """

    __slots__ = ("_current", "_weights")

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = tuple(weights)
        self._current: list[float] = [0] * len(self._weights)

    def pick(self, workers: Sequence[W], items: Sequence[Any]) -> W | None:
        weights, current = self._weights, self._current
        best: W | None = None
        top: float = 0
        total: float = 0
        for w in workers:
            if w.usable:
                i = w.index
                weight = weights[i]
                c = current[i] = current[i] + weight
                total += weight
                if best is None or c > top:
                    best, top = w, c
        if best is not None:
            current[best.index] -= total
        return best


#: A key function's answer for an item without a key: it goes by load.
_NO_KEY: Any = object()


class ByKey:
    """``"key:FIELD"`` and ``route=``: a batch of one item goes to the usable worker
    that takes its key on the ring (see :meth:`HashRing.place`); a batch of several,
    or an item without a key, goes to the least-loaded worker."""

    __slots__ = ("_field", "_ring", "_route")

    def __init__(
        self,
        ring: HashRing,
        *,
        field: str | None = None,
        route: Callable[[Any], Any] | None = None,
    ) -> None:
        if (field is None) == (route is None):
            raise ValueError("key affinity takes a field or a route, one of them")
        self._ring = ring
        self._field = field
        self._route = route

    def pick(self, workers: Sequence[W], items: Sequence[Any]) -> W | None:
        if len(items) == 1:
            key = self.key(items[0])
            if key is not _NO_KEY:
                found = self._place(key, workers)
                if found is not None:
                    return found
        return least_loaded(workers)

    def key(self, item: Any) -> Any:
        """The item's key, or :data:`_NO_KEY`."""
        field = self._field
        if field is not None:
            return item.get(field, _NO_KEY) if isinstance(item, dict) else _NO_KEY
        assert self._route is not None
        try:
            return self._route(item)
        except Exception:  # the least-loaded worker takes the item
            return _NO_KEY

    def _place(self, key: Any, workers: Sequence[W]) -> W | None:
        """:meth:`HashRing.place` over workers in place of slots: the first usable
        worker in the key's ring order (the ``share``-th for a key ``(key, share)``)."""
        share = 0
        if type(key) is tuple and len(key) == 2 and type(key[1]) is int:
            key, share = key
            up = 0
            for w in workers:
                if w.usable:
                    up += 1
            if not up:
                return None
            share %= up
        try:
            order: Iterable[int] = self._ring.order(key)
        except TypeError:  # an unhashable key: walk the ring without the memory
            order = self._ring.walk(key)
        for slot in order:
            for w in workers:
                if w.index == slot and w.usable:
                    if not share:
                        return w
                    share -= 1
                    break
        return None


def choose(
    workers: Sequence[W],
    items: Sequence[Any],
    ring: HashRing | None,
    route: Callable[[Any], Any] | None,
) -> W | None:
    """One pick without a run's state: with key affinity (a ``ring`` and its
    ``route``), a batch of one item goes to the usable worker that takes its key on
    the ring; otherwise, or when its key cannot be computed, the least-loaded usable
    worker. None when no worker is usable. (Executors keep a :meth:`Dispatch.chooser`.)"""
    if ring is None or route is None:
        return least_loaded(workers)
    return ByKey(ring, route=route).pick(workers, items)


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
