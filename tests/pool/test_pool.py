"""spindle.Pool: multiprocessing.pool.Pool's API on a spindle executor."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import Counted

import spindle
from pool import poolfns
from spindle.pool._pool import READ_AHEAD

from .conftest import Gate

pytestmark = pytest.mark.timeout(30)


def test_apply_and_apply_async() -> None:
    with spindle.Pool(2) as pool:
        assert pool.apply(poolfns.add, (1, 2), {"c": 3}) == 6
        result = pool.apply_async(poolfns.square, (7,))
        assert result.get(10) == 49
        assert result.ready() and result.successful()


def test_callbacks_run_before_the_result_is_ready() -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    with spindle.Pool(2) as pool:
        ok = pool.apply_async(poolfns.square, (3,), callback=got.append)
        bad = pool.apply_async(poolfns.fail_on_3, (3,), error_callback=errors.append)
        assert ok.get(10) == 9
        bad.wait(10)
        assert got == [9]
        assert len(errors) == 1 and isinstance(errors[0], ValueError)
        assert not bad.successful()
        with pytest.raises(ValueError, match="three"):
            bad.get(10)
        mapped: list[Any] = []
        pool.map_async(poolfns.square, range(10), callback=mapped.append).get(10)
        assert mapped == [[i * i for i in range(10)]]


def test_get_times_out_with_multiprocessing_timeout_error(gate: Gate) -> None:
    with spindle.Pool(1) as pool:
        result = pool.apply_async(poolfns.read_fifo, (gate.path,))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(0.01)
        assert not result.ready()
        with pytest.raises(ValueError, match="not ready"):
            result.successful()
        gate.open("done")
        assert result.get(10) == "done"


def test_map_and_starmap() -> None:
    with spindle.Pool(2) as pool:
        assert pool.map(poolfns.square, range(1000)) == [i * i for i in range(1000)]
        assert pool.map(poolfns.square, iter(range(10)), chunksize=3) == [i * i for i in range(10)]
        assert pool.map(poolfns.square, []) == []
        pairs = [(i, i) for i in range(50)]
        assert pool.starmap(poolfns.add, pairs) == [2 * i for i in range(50)]
        assert pool.starmap_async(poolfns.add, pairs, 4).get(10) == [2 * i for i in range(50)]
        assert pool.map_async(poolfns.square, range(5)).get(10) == [0, 1, 4, 9, 16]


def test_map_raises_the_first_failure() -> None:
    with spindle.Pool(2) as pool:
        with pytest.raises(ValueError, match="three"):
            pool.map(poolfns.fail_on_3, range(10))
        errors: list[BaseException] = []
        result = pool.map_async(poolfns.fail_on_3, range(10), 1, error_callback=errors.append)
        result.wait(10)
        assert not result.successful() and isinstance(errors[0], ValueError)


def test_imap_is_ordered_and_lazy() -> None:
    endless = Counted(None)
    with spindle.Pool(2) as pool:
        results = pool.imap(poolfns.square, endless)
        assert list(itertools.islice(results, 100)) == [i * i for i in range(100)]
        assert endless.drawn <= 100 + READ_AHEAD
        assert list(pool.imap(poolfns.square, range(20), chunksize=6)) == [i * i for i in range(20)]
        with pytest.raises(ValueError, match="Chunksize must be 1"):
            pool.imap(poolfns.square, range(3), chunksize=0)


def test_imap_raises_a_failure_in_its_place_and_goes_on() -> None:
    with spindle.Pool(2) as pool:
        results = pool.imap(poolfns.fail_on_3, range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            next(results)
        assert list(results) == [4, 5]


class InputError(Exception):
    """Raised by the input iterables of the tests below, not by a task."""


def raising_at(when: int, total: int = 20) -> Iterator[int]:
    """0, 1, 2... up to ``total``, but raise InputError in place of ``when``."""
    for i in range(total):
        if i == when:
            raise InputError(f"no item {i}")
        yield i


class SizedButFailing:
    """An iterable with a length, whose iterator fails at once."""

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[int]:
        return raising_at(0)


def test_an_error_of_the_input_comes_in_its_place() -> None:
    with spindle.Pool(2) as pool:
        results = pool.imap(poolfns.square, raising_at(3))  # reads ahead: must not raise
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        with pytest.raises(InputError, match="no item 3") as caught:
            next(results)
        assert caught.value.__cause__ is None  # the iterable's own error, not a remote one
        with pytest.raises(StopIteration):
            next(results)
        chunked = pool.imap(poolfns.square, raising_at(7), chunksize=2)
        assert [next(chunked) for _ in range(6)] == [i * i for i in range(6)]  # not 6: its chunk
        with pytest.raises(InputError):
            next(chunked)
        unordered = pool.imap_unordered(poolfns.square, raising_at(5))
        with pytest.raises(InputError):
            sorted(unordered)
        errors: list[BaseException] = []
        failed = pool.map_async(poolfns.square, SizedButFailing(), 1, error_callback=errors.append)
        with pytest.raises(InputError):
            failed.get(10)
        assert len(errors) == 1 and isinstance(errors[0], InputError)
        with pytest.raises(InputError):
            pool.map(poolfns.square, raising_at(0))
        assert pool.map(poolfns.square, range(3)) == [0, 1, 4]  # the pool goes on


def test_imap_unordered() -> None:
    with spindle.Pool(2) as pool:
        assert sorted(pool.imap_unordered(poolfns.square, range(500))) == sorted(
            i * i for i in range(500)
        )
        assert sorted(pool.imap_unordered(poolfns.square, range(50), chunksize=7)) == sorted(
            i * i for i in range(50)
        )


def test_imap_next_times_out(gate: Gate) -> None:
    with spindle.Pool(1) as pool:
        results = pool.imap(poolfns.read_fifo, [gate.path])
        with pytest.raises(multiprocessing.TimeoutError):
            results.next(0.01)
        gate.open("x")
        assert results.next(10) == "x"


def test_close_and_join() -> None:
    pool = spindle.Pool(2)
    result = pool.map_async(poolfns.square, range(100))
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(poolfns.square, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(poolfns.square, [1])
    pool.join()
    assert result.ready() and result.get() == [i * i for i in range(100)]


def test_terminate_settles_outstanding_work(gate: Gate) -> None:
    pool = spindle.Pool(1)
    stuck = pool.apply_async(poolfns.read_fifo, (gate.path,))
    pool.terminate()
    assert stuck.ready()
    with pytest.raises((cf.BrokenExecutor, cf.CancelledError)):
        stuck.get(0)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(poolfns.square, [1])
    pool.join()


def test_a_killed_worker_fails_its_task_only() -> None:
    with spindle.Pool(2) as pool:
        with pytest.raises(spindle.WorkerCrashed):
            pool.apply(poolfns.kill_self)
        assert pool.map(poolfns.square, range(100)) == [i * i for i in range(100)]
        assert pool.stats()[0].restarts >= 1


def test_initializer_and_maxtasksperchild() -> None:
    with spindle.Pool(2, poolfns.remember, ("set",), maxtasksperchild=5) as pool:
        assert {pool.apply(poolfns.recall) for _ in range(20)} == {"set"}
    with pytest.raises(ValueError, match="Number of processes"):
        spindle.Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        spindle.Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        spindle.Pool(1, initializer=1)  # type: ignore[arg-type]


def test_repr_and_context_manager_terminates() -> None:
    with spindle.Pool(2) as pool:
        assert "state=RUN pool_size=2" in repr(pool)
    assert "state=TERMINATE" in repr(pool)


def test_the_initializer_runs_in_a_pool_given_no_task(tmp_path: Path) -> None:
    marker = tmp_path / "initialized"
    pool = spindle.Pool(2, initializer=poolfns.touch, initargs=(str(marker),))
    pool.close()
    pool.join()
    assert marker.read_text() == "xx"  # once in each worker
