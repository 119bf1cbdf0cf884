"""Helpers of the cache tests: forked children that report through a pipe, and jobs that
spawned workers import (this module is on the sys.path they inherit)."""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

from spindle.cache import Cache


class Child:
    """A forked child running ``fn(*args)``; its return value comes back pickled."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(r)
            try:
                try:
                    outcome: tuple[str, Any] = ("ok", fn(*args))
                except BaseException:
                    outcome = ("error", traceback.format_exc())
                data = pickle.dumps(outcome)
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
            finally:
                os._exit(0)
        os.close(w)
        self.pid = pid
        self._r = r
        self._reaped = False

    def result(self, timeout: float = 30.0) -> Any:
        """The child's return value (its traceback is an AssertionError)."""
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._r], [], [], max(left, 0))
            if not ready:
                self.kill()
                raise AssertionError(f"child {self.pid} gave no result in {timeout} s")
            chunk = os.read(self._r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        self.wait()
        if not chunks:
            raise AssertionError(f"child {self.pid} died without a result")
        status, value = pickle.loads(b"".join(chunks))
        if status != "ok":
            raise AssertionError(f"child {self.pid} failed:\n{value}")
        return value

    def kill(self) -> None:
        if not self._reaped:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()

    def wait(self) -> None:
        if not self._reaped:
            os.waitpid(self.pid, 0)
            self._reaped = True
            os.close(self._r)


def signal_fd(fd: int, byte: bytes = b"!") -> None:
    os.write(fd, byte)


def wait_fd(fd: int, timeout: float = 30.0) -> bytes:
    """One byte from ``fd``, or an AssertionError after ``timeout`` seconds."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        raise AssertionError(f"nothing came through fd {fd} in {timeout} s")
    return os.read(fd, 1)


# ---------------------------------------------------------------------- self-checking values

_STAMP = struct.Struct("<IIQ")  # crc32 of the rest, length of the payload, writer's seq


def make_value(key: str, seq: int, size: int, seed: int) -> bytes:
    """A value that says whether it was read whole: its key, a sequence and a checksum."""
    payload = key.encode() + b"|" + bytes((seed + i) % 251 for i in range(size))
    body = struct.pack("<Q", seq) + payload
    return struct.pack("<II", zlib.crc32(body), len(body)) + body


def check_value(key: str, value: bytes) -> None:
    """Raise AssertionError unless ``value`` is one :func:`make_value` wrote for ``key``."""
    crc, length = struct.unpack_from("<II", value)
    body = value[8:]
    assert len(body) == length, f"{key}: {len(body)} bytes of {length}"
    assert zlib.crc32(body) == crc, f"{key}: checksum differs"
    assert body[8:].split(b"|", 1)[0] == key.encode(), f"{key}: another key's value"


# ---------------------------------------------------------------------- jobs for spindle.map

def read_and_write(item: tuple[Cache, int]) -> tuple[Any, int]:
    """In a worker: read what the parent wrote, write a value of its own."""
    cache, i = item
    cache.set(f"from-worker-{i}", {"i": i, "pid": os.getpid()})
    return cache.get("from-parent"), os.getpid()


def _computed(path: str, key: str) -> str:
    """Note one computation of ``key`` (a line appended to ``path``): the tests count them."""
    with open(path, "a") as f:
        f.write(key + "\n")
    return key.upper()


def run_cache_lookup(item: tuple[int, str]) -> str:
    """A job: the value of ``x``'s key (one of 100), from the run's cache."""
    import spindle

    x, path = item
    key = f"k{x % 100}"
    return str(spindle.cache().get_or_set(key, lambda: _computed(path, key)))


async def async_run_cache_lookup(item: tuple[int, str]) -> str:
    return run_cache_lookup(item)


def _memoized(path: str, key: str) -> str:
    return _computed(path, key)


def memoized_lookup(item: tuple[int, str]) -> str:
    """A job calling a function memoized through the run's cache."""
    import spindle

    x, path = item
    return str(spindle.memoize(_memoized)(path, f"k{x % 100}"))
