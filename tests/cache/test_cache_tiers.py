"""A cache with a second tier: shared memory in front of a ring (a fake one here; the
Redis ring has its own tests), read first and kept for ``near_ttl``, written through."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from spindle.cache import Cache

RINGS: dict[str, FakeRing] = {}


class FakeRing:
    """A ring in a dict, with the ring's interface; a pickled copy finds the same dict
    (in this process) by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[bytes, tuple[bytes, float | None]] = {}
        self.calls: list[tuple[str, bytes]] = []
        self.closed = 0
        RINGS[name] = self

    def get(self, key: bytes) -> bytes | None:
        self.calls.append(("get", key))
        found = self.data.get(key)
        return None if found is None else found[0]

    def set(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        self.calls.append(("set", key))
        self.data[key] = (value, ttl)

    def delete(self, key: bytes) -> None:
        self.calls.append(("delete", key))
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()

    def stats(self) -> dict[str, Any]:
        return {"keys": len(self.data)}

    def close(self) -> None:
        self.closed += 1

    def __reduce__(self) -> tuple[Any, ...]:
        return (ring_named, (self.name,))


def ring_named(name: str) -> FakeRing:
    return RINGS[name]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    ring = FakeRing("r")
    yield ring
    RINGS.clear()


@pytest.fixture
def cache(ring: FakeRing, clock: FakeTime) -> Iterator[Cache]:
    with Cache("1MB", near_ttl=5.0, _ring=ring, _clock=clock) as c:
        yield c


def test_writes_go_to_both_tiers(cache: Cache, ring: FakeRing) -> None:
    cache.set("k", b"value", ttl=60)
    cache.set("obj", {"a": 1})
    assert ring.data[b"sk"] == (b"\x00value", 60)  # the tag, the payload; the ring's ttl
    assert ring.data[b"sobj"][1] is None
    assert cache.get("k") == b"value"
    assert ("get", b"sk") not in ring.calls  # shared memory answered


def test_a_miss_here_asks_the_ring_and_keeps_the_answer_for_near_ttl(
    cache: Cache, ring: FakeRing, clock: FakeTime
) -> None:
    ring.data[b"sk"] = (b"\x01from another machine", None)
    assert cache.get("k") == "from another machine"
    ring.data[b"sk"] = (b"\x01changed", None)
    clock.now += 4.9
    assert cache.get("k") == "from another machine"  # the near copy, still fresh
    clock.now += 0.2
    assert cache.get("k") == "changed"  # near_ttl is up: asked the ring again
    assert ring.calls.count(("get", b"sk")) == 2


def test_shared_memory_keeps_a_written_value_near_ttl_at_most(
    cache: Cache, ring: FakeRing, clock: FakeTime
) -> None:
    cache.set("k", b"v")  # no ttl: in the ring until evicted there
    clock.now += 5.1
    ring.data[b"sk"] = (b"\x00newer", None)
    assert cache.get("k") == b"newer"


def test_a_miss_in_both_is_a_miss(cache: Cache) -> None:
    assert cache.get("nowhere", "default") == "default"


def test_get_or_set_looks_in_the_ring_before_computing(cache: Cache, ring: FakeRing) -> None:
    ring.data[b"sk"] = (b"\x00ring", None)
    assert cache.get_or_set("k", lambda: b"computed") == b"ring"
    assert cache.get_or_set("fresh", lambda: b"computed") == b"computed"
    assert ring.data[b"sfresh"][0] == b"\x00computed"


def test_delete_clear_and_stats_reach_the_ring(cache: Cache, ring: FakeRing) -> None:
    cache.set("a", b"1")
    cache.set("b", b"2")
    assert cache.delete("a") is True
    assert b"sa" not in ring.data
    assert cache.stats().ring == {"keys": 1}
    cache.clear()
    assert ring.data == {}
    assert "with a Redis ring" in repr(cache)


def test_a_pickled_handle_keeps_its_ring(cache: Cache, ring: FakeRing) -> None:
    copy = pickle.loads(pickle.dumps(cache))
    try:
        ring.data[b"sk"] = (b"\x00from the ring", None)
        assert copy.get("k") == b"from the ring"
    finally:
        copy.close()


def test_close_closes_the_ring(ring: FakeRing) -> None:
    Cache("1MB", _ring=ring).close()
    assert ring.closed == 1


def test_redis_urls_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="list of Redis URLs"):
        Cache("1MB", redis="redis://127.0.0.1:6379")  # type: ignore[arg-type]


def test_the_redis_ring_is_made_on_first_use(ring: FakeRing) -> None:
    import spindle.cache._cache as cache_module

    made: list[tuple[Any, ...]] = []

    class Recorder(FakeRing):
        def __init__(self, urls: Any, *, replicas: int, zookeeper: str | None) -> None:
            super().__init__("recorded")
            made.append((urls, replicas, zookeeper))

    import spindle.cache._ring as ring_module

    original = ring_module.RedisRing
    ring_module.RedisRing = Recorder  # type: ignore[misc]
    try:
        with Cache("1MB", redis=["redis://127.0.0.1:6379/0"], replicas=2) as c:
            assert made == []
            c.set("k", b"v")
            assert made == [(("redis://127.0.0.1:6379/0",), 2, None)]
            assert RINGS["recorded"].data[b"sk"][0] == b"\x00v"
        assert RINGS["recorded"].closed == 1
    finally:
        ring_module.RedisRing = original  # type: ignore[misc]
    assert cache_module.NEAR_TTL == 5.0
