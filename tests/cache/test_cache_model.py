"""The cache against a dict, with hypothesis: operations from this process and from a
forked one, in any order, on a budget small enough that most writes evict.

The model allows what the bound forces and nothing else: a read finds the value last
written (by either process) or nothing (evicted); an entry the model does not hold is
never read; the bytes in use stay within the budget, and the entries never outnumber
the model's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from spindle.cache import Cache

BUDGET = 16 * 1024
MISSING = ("<missing>",)
KEYS = st.sampled_from(["a", b"a", "b", b"b", "c", "d", "e", "f", "g", "\u2603", "k" * 600, b""])
VALUES = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=600),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=50),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=5),
)


class Remote:
    """A forked process that runs cache operations sent to it over a pipe."""

    def __init__(self, cache: Cache) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(down_w)
            os.close(up_r)
            try:
                _serve(cache, Connection(down_r, writable=False), Connection(up_w, readable=False))
            finally:
                os._exit(0)
        os.close(down_r)
        os.close(up_w)
        self.pid = pid
        self.down = Connection(down_w, readable=False)
        self.up = Connection(up_r, writable=False)

    def call(self, op: str, *args: Any) -> Any:
        self.down.send((op, args))
        if not self.up.poll(30):
            raise AssertionError(f"the remote process did not answer {op}{args!r:.80}")
        status, value = self.up.recv()
        if status != "ok":
            raise AssertionError(f"the remote process failed: {value}")
        return value

    def close(self) -> None:
        self.down.send(None)
        os.waitpid(self.pid, 0)
        self.down.close()
        self.up.close()


def _serve(cache: Cache, down: Connection, up: Connection) -> None:  # pragma: no cover
    while True:
        message = down.recv()
        if message is None:
            return
        op, args = message
        try:
            if op == "get_or_set":
                key, value = args
                result = cache.get_or_set(key, lambda: value)  # noqa: B023
            else:
                result = getattr(cache, op)(*args)
            up.send(("ok", result))
        except Exception as exc:
            up.send(("error", f"{type(exc).__name__}: {exc}"))


@pytest.fixture
def cache_and_remote() -> Iterator[tuple[Cache, Remote]]:
    with Cache(BUDGET) as cache:
        remote = Remote(cache)
        try:
            yield cache, remote
        finally:
            remote.close()


def test_the_cache_behaves_like_a_dict_that_may_forget(
    cache_and_remote: tuple[Cache, Remote],
) -> None:
    cache, remote = cache_and_remote

    class CacheModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            cache.clear()
            self.model: dict[str | bytes, Any] = {}

        def run(self, remotely: bool, op: str, *args: Any) -> Any:
            if remotely:
                return remote.call(op, *args)
            if op == "get_or_set":
                key, value = args
                return cache.get_or_set(key, lambda: value)
            return getattr(cache, op)(*args)

        @rule(key=KEYS, value=VALUES, remotely=st.booleans())
        def set(self, key: str | bytes, value: Any, remotely: bool) -> None:
            self.run(remotely, "set", key, value)
            self.model[key] = value

        @rule(key=KEYS, remotely=st.booleans())
        def get(self, key: str | bytes, remotely: bool) -> None:
            got = self.run(remotely, "get", key, MISSING)
            if got == MISSING:
                self.model.pop(key, None)  # never written, or evicted
            else:
                assert key in self.model, f"{key!r} read back after it was deleted"
                assert got == self.model[key]
                assert type(got) is type(self.model[key])

        @rule(key=KEYS, remotely=st.booleans())
        def delete(self, key: str | bytes, remotely: bool) -> None:
            found = self.run(remotely, "delete", key)
            assert not found or key in self.model
            self.model.pop(key, None)

        @rule(key=KEYS, value=VALUES, remotely=st.booleans())
        def get_or_set(self, key: str | bytes, value: Any, remotely: bool) -> None:
            got = self.run(remotely, "get_or_set", key, value)
            if key in self.model and got == self.model[key]:
                return
            assert got == value  # computed: the key was missing (or evicted)
            self.model[key] = value

        @rule(remotely=st.booleans())
        def clear(self, remotely: bool) -> None:
            self.run(remotely, "clear")
            self.model.clear()

        @invariant()
        def within_bounds(self) -> None:
            s = cache.stats()
            assert s.bytes_used <= BUDGET
            assert s.entries <= len(self.model)

    run_state_machine_as_test(
        CacheModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
