"""spindle.Cache in one process: values, keys, budget and eviction, TTL, bad input."""

from __future__ import annotations

import os
import pickle
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import spindle
from spindle import ConfigError
from spindle.cache import Cache, CacheError
from spindle.cache._codec import parse_size


class FakeTime:
    """A wall clock that moves only when told."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cache() -> Iterator[Cache]:
    with Cache("1MB") as c:
        yield c


@pytest.fixture
def seeded() -> Iterator[None]:
    """Eviction draws its samples from ``random``: the same draws in every run."""
    state = random.getstate()
    random.seed(20261206)
    yield
    random.setstate(state)


def test_values_come_back_as_they_went_in(cache: Cache) -> None:
    values = {
        "bytes": b"\x00\xffbytes",
        "str": "naïve ☃",
        "empty": b"",
        "none": None,
        "int": 12,
        "dict": {"a": [1, 2.5, ("t",)]},
        "bytearray": bytearray(b"ba"),
    }
    for key, value in values.items():
        cache.set(key, value)
    for key, value in values.items():
        got = cache.get(key, default="missing")
        assert got == value and type(got) is type(value), key


def test_str_and_bytes_keys_are_different_keys(cache: Cache) -> None:
    cache.set("a", b"from str")
    cache.set(b"a", b"from bytes")
    assert cache.get("a") == b"from str"
    assert cache.get(b"a") == b"from bytes"
    assert cache.get(bytearray(b"a")) == b"from bytes"


def test_long_keys_are_stored_by_digest(cache: Cache) -> None:
    long_a, long_b = "k" * 5000, "k" * 4999 + "j"
    cache.set(long_a, b"a")
    cache.set(long_b, b"b")
    assert (cache.get(long_a), cache.get(long_b)) == (b"a", b"b")


def test_missing_keys_give_the_default_and_count_as_misses(cache: Cache) -> None:
    assert cache.get("nope") is None
    assert cache.get("nope", 7) == 7
    cache.set("yes", b"1")
    cache.get("yes")
    s = cache.stats()
    assert (s.hits, s.misses, s.sets) == (1, 2, 1)
    assert s.hit_rate == pytest.approx(1 / 3)


def test_delete_and_clear(cache: Cache) -> None:
    cache.set("a", b"1")
    cache.set("b", b"2")
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.get("a") is None and cache.get("b") == b"2"
    cache.clear()
    s = cache.stats()
    assert cache.get("b") is None
    assert (s.entries, s.bytes_used, s.deletes) == (0, 0, 1)


def test_bytes_used_counts_keys_and_records_and_follows_replacements(cache: Cache) -> None:
    cache.set("k", b"x" * 100)
    first = cache.stats().bytes_used
    assert first == 8 + 1 + 1 + 1 + 100  # hash, tag, key; tag, payload
    cache.set("k", b"x" * 10)
    assert cache.stats().bytes_used == first - 90
    assert cache.stats().entries == 1


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MB", 256_000_000),
        ("256 mb", 256_000_000),
        ("1GiB", 2**30),
        ("1.5KiB", 1536),
        ("64k", 64_000),
        ("4096", 4096),
        (5000, 5000),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", "", "-5MB", 1.5, True])
def test_bad_sizes_say_what_a_size_looks_like(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        Cache(bad)  # type: ignore[arg-type]


def test_a_budget_too_small_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 4,096"):
        Cache(100)


def test_the_budget_is_kept_by_evicting(seeded: None) -> None:
    with Cache(64 * 1024) as c:
        for i in range(500):
            c.set(f"k{i}", os.urandom(1000))
        s = c.stats()
        assert s.bytes_used <= s.max_bytes == 64 * 1024
        assert s.evictions == 500 - s.entries
        assert 50 <= s.entries <= 64
        assert c.get("k499") is not None  # the entry just written is never evicted


def test_entries_read_recently_outlive_the_others(seeded: None) -> None:
    clock = FakeTime()
    with Cache(120 * 1030, _clock=clock) as c:
        for i in range(100):
            clock.now += 1
            c.set(f"cold{i}", b"c" * 1000)
        hot = [f"cold{i}" for i in range(0, 100, 10)]
        for key in hot:
            clock.now += 1
            assert c.get(key) is not None
        for i in range(40):
            clock.now += 1
            c.set(f"new{i}", b"n" * 1000)
        assert c.stats().evictions >= 15
        survivors = [key for key in hot if c.get(key) is not None]
        assert len(survivors) >= 9, survivors
        assert all(c.get(f"new{i}") is not None for i in range(40))


def test_ttl_expires_entries() -> None:
    clock = FakeTime()
    with Cache("1MB", _clock=clock) as c:
        c.set("short", b"s", ttl=10)
        c.set("forever", b"f")
        clock.now += 9.9
        assert c.get("short") == b"s"
        clock.now += 0.2
        assert c.get("short") is None
        assert c.get("forever") == b"f"
        s = c.stats()
        assert (s.expired, s.misses, s.entries) == (1, 1, 2)  # gone at the next eviction
        assert c.get_or_set("short", lambda: b"again", ttl=5) == b"again"
        assert c.get("short") == b"again"


def test_expired_entries_are_evicted_first(seeded: None) -> None:
    clock = FakeTime()
    with Cache(40 * 1030, _clock=clock) as c:
        for i in range(20):
            c.set(f"brief{i}", b"b" * 1000, ttl=1)
        for i in range(15):
            c.set(f"kept{i}", b"k" * 1000)
        clock.now += 2
        for i in range(12):
            c.set(f"more{i}", b"m" * 1000)
        s = c.stats()
        kept = sum(c.get(f"kept{i}") is not None for i in range(15))
        # a sample with an expired entry in it evicts that one; most samples had one
        assert s.evictions >= 7
        assert 15 - kept <= s.evictions // 4, (kept, s.evictions)


@pytest.mark.parametrize("ttl", [0, -1, float("nan")])
def test_a_ttl_must_be_positive(cache: Cache, ttl: float) -> None:
    with pytest.raises(ConfigError, match="ttl must be > 0"):
        cache.set("k", b"v", ttl=ttl)


def test_an_unpicklable_value_is_an_error_naming_the_key(cache: Cache) -> None:
    with pytest.raises(CacheError, match=r"key 'the-key' cannot be cached: pickle refused"):
        cache.set("the-key", threading.Lock())
    assert cache.get("the-key") is None


def test_a_value_larger_than_the_budget_is_refused_with_both_sizes() -> None:
    with Cache(8192) as c:
        with pytest.raises(CacheError, match=r"key 'big' takes 10,013 bytes .* budget of 8,192"):
            c.set("big", b"x" * 10_000)
        assert c.stats().entries == 0


def test_keys_must_be_str_or_bytes(cache: Cache) -> None:
    with pytest.raises(TypeError, match="str or bytes, not int"):
        cache.get(5)  # type: ignore[arg-type]


def test_a_closed_handle_says_so() -> None:
    c = Cache("1MB")
    c.set("k", b"v")
    c.close()
    c.close()  # twice is fine
    for use in (lambda: c.get("k"), lambda: c.set("k", b"v"), c.stats, c.clear):
        with pytest.raises(CacheError, match="is closed"):
            use()
    with pytest.raises(CacheError, match="is closed"):
        pickle.dumps(c)
    assert "closed" in repr(c)


def test_the_directory_of_a_cache_made_without_path_goes_with_it() -> None:
    with Cache("1MB") as c:
        path = c.path
        assert path.startswith("/dev/shm/spindle-cache-")
        assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb", "locks", "side"]
    assert not os.path.exists(path)


def test_a_cache_at_a_path_stays_and_opens_again(tmp_path: Path) -> None:
    where = tmp_path / "c"
    with Cache("1MB", path=where) as c:
        c.set("k", b"kept")
    assert where.is_dir()
    with Cache(path=where) as c:  # max_bytes=None: the cache's own budget
        assert c.max_bytes == 1_000_000
        assert c.get("k") == b"kept"
    with pytest.raises(ConfigError, match="has max_bytes=1,000,000, not 2,000,000"):
        Cache("2MB", path=where)


def test_a_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("not a directory")
    with pytest.raises(CacheError, match="cannot be made or opened"):
        Cache("1MB", path=tmp_path / "f")


def test_two_handles_in_one_process_share_one_store(tmp_path: Path) -> None:
    with Cache("1MB", path=tmp_path / "c") as a, Cache(path=tmp_path / "c") as b:
        a.set("k", b"v")
        assert b.get("k") == b"v"
        assert a._st is b._st
        b.close()
        assert a.get("k") == b"v"  # the store stays open for the other handle


def test_a_handle_unpickled_in_the_same_process_shares_the_store(cache: Cache) -> None:
    copy = pickle.loads(pickle.dumps(cache))
    try:
        cache.set("k", b"v")
        assert copy.get("k") == b"v"
        assert copy.path == cache.path
    finally:
        copy.close()


def test_a_handle_of_a_cache_that_is_gone_says_so() -> None:
    c = Cache("1MB")
    data = pickle.dumps(c)
    c.close()
    with pytest.raises(CacheError, match="no longer exists"):
        pickle.loads(data)


def test_repr_and_stats_show_the_figures(cache: Cache) -> None:
    cache.set("k", b"x" * 1000)
    cache.get("k")
    assert repr(cache) == f"Cache({cache.path!r}, 1.0 KB of 1.0 MB, 1 entries, 100% hits)"
    s = cache.stats()
    assert (s.max_bytes, s.path, s.ring) == (1_000_000, cache.path, None)


def test_get_or_set_computes_once_across_threads(cache: Cache) -> None:
    calls = []
    started = threading.Barrier(8)

    def compute() -> bytes:
        calls.append(threading.get_ident())
        return b"computed"

    results: list[object] = []

    def worker() -> None:
        started.wait(timeout=10)
        results.append(cache.get_or_set("once", compute))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [b"computed"] * 8
    assert len(calls) == 1


def test_get_or_set_caches_nothing_when_the_function_raises(cache: Cache) -> None:
    def boom() -> bytes:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        cache.get_or_set("k", boom)
    assert cache.get("k") is None
    assert cache.get_or_set("k", lambda: b"second") == b"second"


def test_get_or_set_may_nest_for_other_keys(cache: Cache) -> None:
    def outer() -> str:
        return "outer+" + cache.get_or_set("inner", lambda: "inner")

    assert cache.get_or_set("outer", outer) == "outer+inner"
    assert cache.get("inner") == "inner"


def test_cache_is_exported_from_spindle() -> None:
    assert spindle.Cache is Cache
    assert issubclass(CacheError, spindle.SpindleError)
