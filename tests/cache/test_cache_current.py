"""The current run's cache (``spindle.cache()``, ``install``) and ``memoize``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachefns import Child

import spindle
import spindle.cache
from spindle import ConfigError
from spindle.cache import Cache, CacheError, install, installed

ROOT = Path(__file__).parents[2]


@pytest.fixture
def cache() -> Iterator[Cache]:
    with Cache("1MB") as c, install(c):
        yield c


def test_outside_a_run_there_is_no_current_cache() -> None:
    assert installed() is None
    with pytest.raises(CacheError, match=r"no cache is installed .* spindle.cache.install"):
        spindle.cache()


def test_install_as_a_context_puts_the_previous_cache_back() -> None:
    with Cache("1MB") as a, Cache("1MB") as b:
        with install(a) as got:
            assert got is a and spindle.cache() is a
            with install(b):
                assert spindle.cache() is b
            assert spindle.cache() is a
        assert installed() is None


def test_install_alone_keeps_the_cache_until_the_next_install() -> None:
    with Cache("1MB") as c:
        install(c)
        try:
            assert spindle.cache() is c
            seen = []
            t = threading.Thread(target=lambda: seen.append(spindle.cache()))
            t.start()
            t.join()
            assert seen == [c]  # one per process: every thread sees it
        finally:
            install(None)
    assert installed() is None


def test_install_takes_a_cache() -> None:
    with pytest.raises(ConfigError, match=r"takes a spindle\.Cache or None, not str"):
        install("/dev/shm/x")  # type: ignore[arg-type]


def test_a_forked_child_keeps_the_installed_cache(cache: Cache) -> None:
    cache.set("k", b"v")
    assert Child(lambda: spindle.cache().get("k")).result() == b"v"


_FRESH = """
import sys
{first}
import spindle
with spindle.Cache("1MB") as c, spindle.cache.install(c):
    c.set("k", b"v")
    assert spindle.cache() is c, "spindle.cache() is not the current cache"
    assert spindle.cache.install is not None
    print(spindle.cache().get("k"))
"""


@pytest.mark.parametrize(
    "first",
    ["", "import spindle.cache", "from spindle import cache", "import spindle.cache._store"],
)
def test_spindle_cache_is_callable_however_it_was_imported(first: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _FRESH.format(first=first)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b'v'"


def test_importing_spindle_does_not_load_the_cache() -> None:
    code = "import sys, spindle; print('lmdb' in sys.modules, 'spindle.cache' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.stdout.split() == ["False", "False"], done.stderr


# ---------------------------------------------------------------------- memoize

calls: list[tuple[object, ...]] = []


@spindle.memoize
def square(x: int) -> int:
    calls.append(("square", x))
    return x * x


@spindle.memoize(ttl=60)
def describe(x: int, *, suffix: str = "") -> str:
    calls.append(("describe", x, suffix))
    return f"{x}{suffix}"


@pytest.fixture(autouse=True)
def no_calls() -> Iterator[None]:
    calls.clear()
    yield
    calls.clear()


def test_memoize_calls_once_per_arguments(cache: Cache) -> None:
    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert describe(1, suffix="!") == describe(1, suffix="!") == "1!"
    assert describe(1) == "1"
    assert calls == [("square", 3), ("square", 4), ("describe", 1, "!"), ("describe", 1, "")]
    assert cache.stats().entries == 4


def test_memoize_keys_name_the_function(cache: Cache) -> None:
    square(2)
    keys = [k for k in _stored_keys(cache) if b"square" in k]
    assert len(keys) == 1
    assert keys[0].startswith(b"bspindle.memoize:" + __name__.encode() + b".square:")


def _stored_keys(cache: Cache) -> list[bytes]:
    store = cache._live()
    with store.env.begin(store._data) as txn:
        return [bytes(k[8:]) for k, _ in txn.cursor()]


def test_memoize_without_a_cache_calls_the_function() -> None:
    assert installed() is None
    assert [square(5), square(5)] == [25, 25]
    assert calls == [("square", 5), ("square", 5)]


def test_memoize_required_without_a_cache_raises() -> None:
    @spindle.memoize(required=True)
    def f(x: int) -> int:
        return x

    with pytest.raises(CacheError, match="no cache is installed"):
        f(1)


def test_memoize_with_unpicklable_arguments_names_the_function(cache: Cache) -> None:
    with pytest.raises(CacheError, match=r"arguments of .*square cannot be pickled"):
        square(threading.Lock())  # type: ignore[arg-type]


def test_memoize_refuses_async_functions() -> None:
    async def fetch(url: str) -> bytes:
        return b""

    with pytest.raises(ConfigError, match="async"):
        spindle.memoize(fetch)


def test_memoize_is_shared_by_processes(cache: Cache) -> None:
    assert square(7) == 49
    assert Child(lambda: (square(7), list(calls))).result() == (49, [("square", 7)])
    assert calls == [("square", 7)]  # the child found it: no second call
