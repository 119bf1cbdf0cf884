"""spindle.Cache across processes: handles that travel (fork, spawn, cloudpickle),
processes writing the same keys at once, and get_or_set's one computation per machine."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from cachefns import Child, check_value, make_value, read_and_write, signal_fd, wait_fd

import spindle
from spindle.cache import Cache

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.fixture
def cache() -> Iterator[Cache]:
    with Cache("4MB") as c:
        yield c


# ---------------------------------------------------------------------- handles that travel


def _use_pickled(data: bytes) -> tuple[object, int]:
    c = pickle.loads(data)
    c.set("from-child", {"pid": os.getpid()})
    got = c.get("from-parent"), os.getpid()
    c.close()
    return got


def test_a_pickled_handle_reaches_the_same_memory_from_a_forked_child(cache: Cache) -> None:
    cache.set("from-parent", b"hello")
    got, pid = Child(_use_pickled, pickle.dumps(cache)).result()
    assert got == b"hello"
    assert cache.get("from-child") == {"pid": pid}


def _use_inherited(cache: Cache) -> object:
    # the handle was made before the fork: it opens the cache again on first use
    cache.set("from-child", b"inherited")
    return cache.get("from-parent"), cache.stats().entries


def test_a_handle_inherited_by_a_forked_child_opens_the_cache_again(cache: Cache) -> None:
    cache.set("from-parent", b"hello")
    assert Child(_use_inherited, cache).result() == (b"hello", 2)
    assert cache.get("from-child") == b"inherited"
    cache.set("after", b"the parent's store is untouched by the child's")
    assert cache.get("after") is not None


_SPAWNED = """
import os, pickle, sys
import cloudpickle
cache = {loads}(sys.stdin.buffer.read())
cache.set("from-child", os.getpid())
sys.stdout.write(repr(cache.get("from-parent")))
cache.close()
"""


@pytest.mark.parametrize("loads", ["pickle.loads", "cloudpickle.loads"])
def test_a_handle_reaches_the_same_memory_from_a_new_interpreter(cache: Cache, loads: str) -> None:
    cache.set("from-parent", "hello")
    dumps = cloudpickle.dumps if loads.startswith("cloud") else pickle.dumps
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SPAWNED.format(loads=loads)],
        input=dumps(cache),
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == "'hello'"
    assert isinstance(cache.get("from-child"), int)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_of_a_run_share_the_cache(cache: Cache, start_method: str) -> None:
    cache.set("from-parent", b"shared")
    results = list(
        spindle.map(
            read_and_write,
            [(cache, i) for i in range(6)],
            kind="cpu",
            workers=2,
            start_method=start_method,
        )
    )
    assert [got for got, _ in results] == [b"shared"] * 6
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids
    for i in range(6):
        assert cache.get(f"from-worker-{i}")["i"] == i


# ---------------------------------------------------------------------- processes at once

KEYS = [f"key{i}" for i in range(20)]


def _hammer(cache: Cache, seed: int, ops: int, go: int) -> dict[str, int]:
    wait_fd(go)
    rng = random.Random(seed)
    counts = {"hits": 0, "misses": 0, "sets": 0, "deletes": 0}
    for seq in range(ops):
        key = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.45:
            value = cache.get(key)
            if value is None:
                counts["misses"] += 1
            else:
                check_value(key, value)
                counts["hits"] += 1
        elif roll < 0.9:
            cache.set(key, make_value(key, seq, rng.randrange(10, 4000), seed))
            counts["sets"] += 1
        elif roll < 0.97:
            cache.delete(key)
            counts["deletes"] += 1
        else:
            value = cache.get_or_set(key, lambda k=key, s=seq: make_value(k, s, 100, seed))
            check_value(key, value)
    return counts


def test_processes_writing_the_same_keys_read_only_whole_values() -> None:
    with Cache(64 * 1024) as cache:  # small: the writers evict all the time
        r, w = os.pipe()
        try:
            children = [Child(_hammer, cache, seed, 3000, r) for seed in range(4)]
            os.write(w, b"go" * 2)
            totals = [child.result(timeout=120) for child in children]
        finally:
            os.close(r)
            os.close(w)
        s = cache.stats()
        assert s.bytes_used <= s.max_bytes
        assert s.entries <= len(KEYS)
        assert s.sets >= sum(t["sets"] for t in totals)
        assert s.hits >= sum(t["hits"] for t in totals)
        for key in KEYS:
            value = cache.get(key)
            if value is not None:
                check_value(key, value)


# ---------------------------------------------------------------------- get_or_set, machine-wide


def _compute_once(cache: Cache, key: str, log: str, ready: int, go: int) -> bytes:
    def compute() -> bytes:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # a slow computation, so that the others come while it runs
        return f"computed by {os.getpid()}".encode()

    signal_fd(ready)
    wait_fd(go)
    return cache.get_or_set(key, compute)


def test_get_or_set_computes_once_across_processes(cache: Cache, tmp_path: Path) -> None:
    for round_ in range(5):
        log = str(tmp_path / f"computed-{round_}")
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        try:
            children = [
                Child(_compute_once, cache, f"once-{round_}", log, ready_w, go_r)
                for _ in range(4)
            ]
            for _ in children:
                wait_fd(ready_r)
            os.write(go_w, b"g" * len(children))
            results = [child.result(timeout=60) for child in children]
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)
        computed_by = Path(log).read_text().split()
        assert len(computed_by) == 1, computed_by
        assert results == [f"computed by {computed_by[0]}".encode()] * 4


def _compute_forever(cache: Cache, computing: int, never: int) -> object:
    def compute() -> bytes:
        signal_fd(computing)
        os.read(never, 1)  # blocks until the test kills this process
        return b"never"

    return cache.get_or_set("stuck", compute)


def _compute_after(cache: Cache, calling: int) -> tuple[bytes, float]:
    signal_fd(calling)
    value = cache.get_or_set("stuck", lambda: f"taken over by {os.getpid()}".encode())
    return value, time.monotonic()


def test_a_process_dying_in_get_or_set_hands_the_key_to_a_waiting_one(cache: Cache) -> None:
    computing_r, computing_w = os.pipe()
    calling_r, calling_w = os.pipe()
    never_r, never_w = os.pipe()
    try:
        first = Child(_compute_forever, cache, computing_w, never_r)
        wait_fd(computing_r)  # the first holds the key's lock, computing
        second = Child(_compute_after, cache, calling_w)
        wait_fd(calling_r)  # the second is about to wait for the lock
        killed_at = time.monotonic()
        first.kill()
        value, done_at = second.result(timeout=10)
    finally:
        for fd in (computing_r, computing_w, calling_r, calling_w, never_r, never_w):
            os.close(fd)
    assert value == f"taken over by {second.pid}".encode()
    assert done_at - killed_at < 1.0
    assert cache.get("stuck") == value


def _hold_then_want(cache: Cache, mine: str, theirs: str, holding: int, go: int) -> object:
    def compute_mine() -> str:
        signal_fd(holding)
        wait_fd(go)
        # the other process holds `theirs` and is about to want `mine`: a cycle
        return f"{mine}+" + cache.get_or_set(theirs, lambda: f"{theirs} by {mine}'s process")

    return cache.get_or_set(mine, compute_mine)


def test_two_processes_waiting_for_each_others_key_do_not_deadlock(cache: Cache) -> None:
    holding_r, holding_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        first = Child(_hold_then_want, cache, "A", "B", holding_w, go_r)
        second = Child(_hold_then_want, cache, "B", "A", holding_w, go_r)
        wait_fd(holding_r)
        wait_fd(holding_r)  # each holds its own key's lock
        os.write(go_w, b"gg")
        results = {first.result(timeout=30), second.result(timeout=30)}
    finally:
        for fd in (holding_r, holding_w, go_r, go_w):
            os.close(fd)
    # the kernel refused one of the two waits (EDEADLK): that process computed the
    # other's key without its lock, and both finished
    assert len(results) == 2
    assert all(r.startswith(("A+", "B+")) for r in results)
