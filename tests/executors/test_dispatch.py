"""Dispatch policies: the consistent-hash ring of key affinity, and the least-loaded pick."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from spindle.policies.dispatch import HashRing, least_loaded

KEYS = [f"host{i}.example" for i in range(2000)]


def test_a_key_has_one_slot_in_every_ring_and_every_process() -> None:
    first, second = HashRing(range(4)), HashRing(range(4))

    placed = [first.place(k, range(4)) for k in KEYS]

    assert placed == [second.place(k, range(4)) for k in KEYS]
    assert placed == [first.place(k, range(4)) for k in KEYS]  # remembered: the same
    # blake2b, not hash(): the same in every interpreter, whatever PYTHONHASHSEED says.
    assert [first.place(k, range(4)) for k in ("example.org", "a", "b", 42)] == [3, 0, 1, 3]


def test_order_lists_every_slot_once_from_the_keys_owner() -> None:
    ring = HashRing(range(5))

    for key in KEYS[:200]:
        order = ring.order(key)
        assert sorted(order) == [0, 1, 2, 3, 4]
        assert order == tuple(ring.walk(key)) and order[0] == ring.place(key, range(5))


def test_a_down_slot_gives_its_keys_to_the_next_on_the_ring_and_only_its_own() -> None:
    ring = HashRing(range(4))
    down = 2
    up = [s for s in range(4) if s != down]

    moved = 0
    for key in KEYS:
        owner = ring.place(key, range(4))
        now = ring.place(key, up)
        if owner == down:
            assert now == ring.order(key)[1]
            moved += 1
        else:
            assert now == owner
    assert 0 < moved < len(KEYS) // 2
    assert ring.place("anything", []) is None
    assert ring.place("anything", [9]) is None  # not a slot of this ring


def test_key_and_index_spreads_one_key_over_the_slots_in_its_ring_order() -> None:
    ring = HashRing(range(6))
    up = [0, 1, 3, 4, 5]
    order = [s for s in ring.order("busy.example") if s in up]

    placed = [ring.place(("busy.example", i), up) for i in range(2 * len(up))]

    assert placed == order + order  # the i-th up slot, modulo the slots up
    assert ring.place(("busy.example", 0), up) == ring.place("busy.example", up)
    # Only a (key, int) pair is a share; any other tuple is a key of its own.
    other = ("busy.example", "0")
    assert ring.place(other, up) == next(s for s in ring.order(other) if s in up)


def test_keys_spread_evenly_over_the_slots() -> None:
    ring = HashRing(range(8))

    counts = Counter(ring.place(f"k{i}", range(8)) for i in range(20_000))

    mean = 20_000 / 8
    assert sorted(counts) == list(range(8))
    assert all(0.75 * mean <= n <= 1.25 * mean for n in counts.values()), counts


def test_an_unhashable_key_is_placed_without_the_memory() -> None:
    ring = HashRing(range(3))

    assert ring.place(["a", "list"], range(3)) == next(ring.walk(["a", "list"]))


def test_the_memory_of_key_orders_is_bounded() -> None:
    class Small(HashRing):
        CACHE = 4

    ring = Small(range(3))
    for key in KEYS[:50]:
        ring.order(key)
        assert len(ring._cache) <= 4


def test_a_ring_needs_slots_and_points() -> None:
    with pytest.raises(ValueError, match="slot"):
        HashRing([])
    with pytest.raises(ValueError, match="points"):
        HashRing(range(2), points=0)


@dataclass
class Worker:
    name: str
    usable: bool = True
    pending: dict[int, None] = field(default_factory=dict)

    def load(self, n: int) -> Worker:
        self.pending = dict.fromkeys(range(n))
        return self


def test_least_loaded_picks_the_usable_worker_with_the_fewest_pending_first_of_equals() -> None:
    a, b, c, d = Worker("a").load(2), Worker("b").load(1), Worker("c").load(1), Worker("d")
    d.usable = False

    assert least_loaded([a, b, c, d]) is b
    c.pending.clear()
    assert least_loaded([a, b, c, d]) is c
    assert least_loaded([d]) is None and least_loaded([]) is None
