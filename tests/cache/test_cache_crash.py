"""Writers SIGKILLed at random moments: nothing torn is ever read, no lock stays held.

Each round forks a child that writes, deletes and get_or_sets self-checking values
(their key, length and CRC inside) into a small cache, so that nearly every write also
evicts; the test kills it at a random moment of that work (in a write transaction, in
LMDB's reader or writer mutex, holding a key's lock in get_or_set, opening the cache),
then checks that every key reads whole or not at all, that the bytes in use add up to
the entries there, and that its own next write and get_or_set finish within a second.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cachefns import check_value, make_value, wait_fd

from spindle.cache import Cache

ROUNDS = 1000
KEYS = [f"key{i}" for i in range(24)]
BUDGET = 20 * 1024


def _writer(cache: Cache, seed: int, started: int) -> None:  # pragma: no cover - the child
    rng = random.Random(seed)
    try:
        cache.get(KEYS[0])  # opens the cache in this process
        os.write(started, b"s")
        seq = 0
        while True:
            seq += 1
            key = rng.choice(KEYS)
            roll = rng.random()
            if roll < 0.8:
                cache.set(key, make_value(key, seq, rng.randrange(1, 3000), seed))
            elif roll < 0.9:
                cache.delete(key)
            else:
                cache.get_or_set(key, lambda k=key, s=seq: make_value(k, s, 500, seed))  # type: ignore[misc]
    finally:
        os._exit(0)


def _check(cache: Cache) -> None:
    expected_bytes = 0
    present = 0
    for key in KEYS:
        value = cache.get(key)
        if value is not None:
            check_value(key, value)
            present += 1
            expected_bytes += 8 + 1 + len(key) + 1 + len(value)
    s = cache.stats()
    assert s.entries == present
    assert s.bytes_used == expected_bytes <= BUDGET


@pytest.mark.slow  # 1,000 rounds, about 7 s
def test_a_writer_killed_at_any_moment_leaves_whole_entries_and_no_lock() -> None:
    rng = random.Random(7)
    slowest = 0.0
    with Cache(BUDGET) as cache:
        for round_ in range(ROUNDS):
            started_r, started_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(started_r)
                _writer(cache, round_, started_w)
            os.close(started_w)
            try:
                wait_fd(started_r)
                # the kill lands anywhere in the first four milliseconds of writing
                deadline = time.perf_counter() + rng.random() * 0.004
                while time.perf_counter() < deadline:
                    pass
                assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the writer stopped by itself"
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(started_r)
            _check(cache)
            key = rng.choice(KEYS)
            t0 = time.monotonic()
            cache.set(key, make_value(key, round_, 100, -1))
            other = rng.choice(KEYS)
            cache.get_or_set(other, lambda: make_value(other, round_, 1, -1))  # noqa: B023
            slowest = max(slowest, time.monotonic() - t0)
        assert slowest < 1.0
        s = cache.stats()
        assert s.sets > ROUNDS * 10  # the children did write (and were killed writing)
        assert s.evictions > ROUNDS


def _die_in_a_write(cache: Cache, holding: int, never: int) -> None:  # pragma: no cover
    try:
        store = cache._live()
        txn = store.env.begin(write=True)  # LMDB's writer mutex, held
        txn.put(b"\x00" * 8 + b"shalf", b"\x00" * 9 + b"half written", db=store._data)
        os.write(holding, b"h")
        os.read(never, 1)  # nothing comes: the test kills this process here
    finally:
        os._exit(0)


def test_a_writer_killed_holding_the_write_lock_blocks_no_one() -> None:
    with Cache("1MB") as cache:
        cache.set("before", b"kept")
        ends, never = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _die_in_a_write(cache, ends[1], never[0])
        try:
            wait_fd(ends[0])
            assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # alive, holding the lock
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            for fd in (*ends, *never):
                os.close(fd)
        t0 = time.monotonic()
        cache.set("after", b"written")
        assert time.monotonic() - t0 < 1.0
        assert cache.get("half") is None  # the killed transaction left nothing
        assert (cache.get("before"), cache.get("after")) == (b"kept", b"written")
        assert cache.stats().entries == 2


_FILL = """
import os, sys
from spindle.cache import Cache, CacheError
cache = Cache(max_bytes="8MB", path=sys.argv[1])
try:
    for i in range(10_000):
        cache.set(f"k{i}", os.urandom(1000))
except CacheError as exc:
    print("refused:", exc)
for i in range(10_000):
    cache.get(f"k{i}")  # reads mark their entries' last access: no SIGBUS either
cache.delete("k0")
cache.set("after", b"room again")
print(cache.get("after"))
cache.close()
"""


def test_a_full_file_system_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """On a memory file system, a page first written through a map when the file system
    is full is a SIGBUS: the cache's mapped files are allocated when they are made, and
    its data is written with pwrite, so a full file system is a CacheError."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FILL, str(small / "cache")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            check=False,
        )
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "refused: the file system of the cache at" in done.stdout
    assert done.stdout.strip().endswith("b'room again'")
