"""spindle.Executor: the concurrent.futures contract, and what spindle adds to it."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Literal

import pytest
from _support import Counted

import spindle
from pool import poolfns

from .conftest import Gate

pytestmark = pytest.mark.timeout(30)


def test_submit_gives_results_and_keyword_arguments() -> None:
    with spindle.Executor(2) as ex:
        futures = [ex.submit(poolfns.add, i, b=1, c=10) for i in range(100)]
        assert [f.result(10) for f in futures] == [i + 11 for i in range(100)]
        assert isinstance(ex, cf.Executor)
        assert ex.stats()[0].done == 100


def test_a_failing_task_raises_its_own_exception_with_the_remote_traceback() -> None:
    with spindle.Executor(2) as ex:
        bad, good = ex.submit(poolfns.fail_on_3, 3), ex.submit(poolfns.fail_on_3, 4)
        with pytest.raises(ValueError, match="three is not allowed") as info:
            bad.result(10)
        assert isinstance(info.value.__cause__, spindle.RemoteTraceback)
        assert "fail_on_3" in info.value.__cause__.tb
        assert good.result(10) == 4


def test_as_completed_and_wait() -> None:
    with spindle.Executor(2) as ex:
        futures = {ex.submit(poolfns.square, i): i for i in range(50)}
        seen = {futures[f]: f.result() for f in cf.as_completed(futures, timeout=10)}
        assert seen == {i: i * i for i in range(50)}
        more = [ex.submit(poolfns.square, i) for i in range(10)]
        done, not_done = cf.wait(more, timeout=10, return_when=cf.ALL_COMPLETED)
        assert len(done) == 10 and not not_done


def test_run_in_executor() -> None:
    async def main(ex: spindle.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(ex, poolfns.square, i) for i in range(5)))
        )

    with spindle.Executor(2) as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9, 16]


def _blocked_thread_executor(
    event: threading.Event, behind: int
) -> tuple[spindle.Executor, cf.Future[str], list[cf.Future[int]]]:
    """A one-thread executor whose thread waits on ``event``, with ``behind`` tasks
    queued after it: more than the run can hold, so the last ones are not taken in."""
    ex = spindle.Executor(1, kind="thread")
    blocker = ex.submit(poolfns.wait_event, event)
    queued = [ex.submit(poolfns.square, i) for i in range(behind)]
    return ex, blocker, queued


def test_cancel_before_running() -> None:
    event = threading.Event()
    ex, blocker, queued = _blocked_thread_executor(event, 4_000)
    try:
        last = queued[-1]
        assert last.cancel()
        assert last.cancelled()
    finally:
        event.set()
        ex.shutdown()
    assert blocker.result() == "released"
    assert all(f.result() == i * i for i, f in enumerate(queued[:-1]))
    with pytest.raises(cf.CancelledError):
        last.result()


def test_shutdown_cancel_futures_cancels_what_was_not_taken_in() -> None:
    event = threading.Event()
    ex, _, queued = _blocked_thread_executor(event, 4_000)
    try:
        ex.shutdown(wait=False, cancel_futures=True)
    finally:
        event.set()
    ex.shutdown(wait=True)
    cancelled = [f for f in queued if f.cancelled()]
    assert cancelled and cancelled[-1] is queued[-1]
    assert all(f.done() for f in queued)
    assert all(f.result() == i * i for i, f in enumerate(queued) if not f.cancelled())
    # Cancelled futures are notified, so waiting on all of them returns.
    assert not cf.wait(queued, timeout=10).not_done


def test_submit_after_shutdown() -> None:
    ex = spindle.Executor(1)
    ex.submit(poolfns.square, 2).result(10)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(poolfns.square, 2)
    never_started = spindle.Executor(1)
    never_started.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        never_started.submit(poolfns.square, 2)


def test_map_keeps_order_with_any_chunksize() -> None:
    with spindle.Executor(2) as ex:
        assert list(ex.map(poolfns.add, range(100), range(100))) == [2 * i for i in range(100)]
        assert list(ex.map(poolfns.square, range(100), chunksize=7)) == [i * i for i in range(100)]
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(poolfns.square, [1], chunksize=0)
        with pytest.raises(ValueError, match="buffersize"):
            ex.map(poolfns.square, [1], buffersize=0)


def test_map_with_buffersize_reads_an_endless_input_lazily() -> None:
    endless = Counted(None)
    with spindle.Executor(2) as ex:
        results = ex.map(poolfns.square, endless, buffersize=8)
        assert list(itertools.islice(results, 50)) == [i * i for i in range(50)]
        assert endless.drawn <= 50 + 8
        results.close()  # type: ignore[attr-defined]


def test_map_raises_a_task_exception_in_its_place() -> None:
    with spindle.Executor(2) as ex:
        results = ex.map(poolfns.fail_on_3, range(6))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            next(results)


def test_a_killed_worker_fails_only_its_task_and_the_executor_goes_on() -> None:
    with spindle.Executor(2) as ex:
        with pytest.raises(spindle.WorkerCrashed):
            ex.submit(poolfns.kill_self).result(20)
        futures = [ex.submit(poolfns.square, i) for i in range(1000)]
        assert [f.result(20) for f in futures] == [i * i for i in range(1000)]
        assert ex.stats()[0].restarts >= 1


@pytest.mark.slow
def test_a_stuck_task_with_a_timeout_fails_alone(gate: Gate) -> None:
    with spindle.Executor(2, timeout=0.5) as ex:
        stuck = ex.submit(poolfns.read_fifo, gate.path)
        others = [ex.submit(poolfns.square, i) for i in range(100)]
        with pytest.raises(spindle.Timeout):
            stuck.result(20)
        assert [f.result(20) for f in others] == [i * i for i in range(100)]


def test_unpicklable_argument_and_result_fail_their_own_future() -> None:
    with spindle.Executor(2) as ex:
        bad_argument = ex.submit(poolfns.identity, threading.Lock())
        bad_result = ex.submit(poolfns.make_lock)
        fine = [ex.submit(poolfns.identity, i) for i in range(20)]
        with pytest.raises(spindle.Unpicklable):
            bad_argument.result(20)
        with pytest.raises(spindle.Unpicklable):
            bad_result.result(20)
        assert [f.result(20) for f in fine] == list(range(20))


def test_initializer_runs_in_each_worker_process() -> None:
    with spindle.Executor(2, initializer=poolfns.remember, initargs=("ready",)) as ex:
        assert {ex.submit(poolfns.recall).result(10) for _ in range(10)} == {"ready"}


def test_an_initializer_that_fails_breaks_the_executor() -> None:
    with spindle.Executor(1, initializer=poolfns.broken_init) as ex:
        first = ex.submit(poolfns.square, 2)
        with pytest.raises(cf.BrokenExecutor) as info:
            first.result(20)
        assert "initializer failed on purpose" in repr(info.value.__cause__)
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(poolfns.square, 2)


def test_thread_kind_runs_in_threads_with_an_initializer() -> None:
    poolfns.initialized.clear()
    with spindle.Executor(3, kind="thread", initializer=poolfns.note_thread) as ex:
        main = threading.get_ident()
        idents = {ex.submit(threading.get_ident).result(10) for _ in range(20)}
        assert main not in idents
        assert [f.result() for f in [ex.submit(poolfns.square, i) for i in range(10)]] == [
            i * i for i in range(10)
        ]
    assert len(set(poolfns.initialized)) == 3


def test_terminate_workers_fails_running_tasks(gate: Gate) -> None:
    ex = spindle.Executor(1)
    running = ex.submit(poolfns.read_fifo, gate.path)
    ex.terminate_workers()
    ex.shutdown(wait=True)
    with pytest.raises((cf.BrokenExecutor, cf.CancelledError)):
        running.result(20)
    with pytest.raises(RuntimeError):
        ex.submit(poolfns.square, 1)


def test_stats_and_snapshot() -> None:
    ex = spindle.Executor(2)
    assert ex.snapshot() == {}
    assert ex.stats()[0].done == 0
    with ex:
        for f in [ex.submit(poolfns.fail_on_3, i) for i in range(5)]:
            f.exception(10)
        snap = ex.snapshot()
        assert snap["stages"][0]["done"] == 4  # type: ignore[index]
        assert snap["stages"][0]["failed"] == 1  # type: ignore[index]
    assert "4 done, 1 failed" in repr(ex)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        spindle.Executor(0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        spindle.Executor(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        spindle.Executor(1, kind="io")  # type: ignore[arg-type]


def test_batch_size_1_gives_each_task_a_worker_of_its_own() -> None:
    event = threading.Event()
    with spindle.Executor(2, kind="thread", batch_size=1) as ex:
        for f in [ex.submit(poolfns.square, i) for i in range(2000)]:
            f.result(10)
        waiter = ex.submit(poolfns.wait_event, event)
        setter = ex.submit(event.set)
        assert setter.result(10) is None
        assert waiter.result(10) == "released"


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_a_task_raising_system_exit_fails_alone_with_it(kind: Literal["cpu", "thread"]) -> None:
    with spindle.Executor(1, kind=kind) as ex:
        bad = ex.submit(poolfns.exit_with, 7)
        with pytest.raises(SystemExit) as info:
            bad.result(20)
        assert info.value.code == 7
        assert [ex.submit(poolfns.square, i).result(20) for i in range(5)] == [0, 1, 4, 9, 16]
        assert ex.stats()[0].restarts == 0  # the worker went on


def test_a_result_that_exits_when_unpickled_fails_its_future_only() -> None:
    with spindle.Executor(1) as ex:
        with pytest.raises(spindle.Unpicklable, match="SystemExit"):
            ex.submit(poolfns.exit_in_parent).result(20)
        assert ex.submit(poolfns.square, 3).result(20) == 9


def test_a_spawned_worker_has_the_parent_s_multiprocessing_authkey() -> None:
    # What a multiprocessing.Manager proxy sent to the worker needs to connect back.
    spawn = multiprocessing.get_context("spawn")
    with spindle.Executor(1, mp_context=spawn) as ex:
        assert ex.submit(poolfns.authkey).result(60) == bytes(
            multiprocessing.current_process().authkey
        )


_SCRIPT = """
import multiprocessing
import os
import signal
import spindle


class Point:
    def __init__(self, x):
        self.x = x


def norm(p):
    return abs(p.x)


if __name__ == "__main__":
    with spindle.Executor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        print(ex.submit(norm, Point(-5)).result(60))
"""


def test_a_spawned_worker_unpickles_a_class_of_the_main_script(tmp_path: Path) -> None:
    script = tmp_path / "main_script.py"
    script.write_text(_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"


def test_a_quick_task_is_not_held_behind_a_slow_one_while_a_worker_is_free(gate: Gate) -> None:
    with spindle.Executor(2) as ex:
        list(ex.map(poolfns.square, range(200)))  # quick tasks: the batches have grown
        slow = ex.submit(poolfns.read_fifo, gate.path)
        quick = ex.submit(poolfns.square, 3)
        assert quick.result(10) == 9  # while the slow task still waits at the gate
        gate.open("done")
        assert slow.result(10) == "done"


_SET_START_METHOD = """
import json
import multiprocessing
import os
import signal
import spindle


def mark():
    return getattr(json, "spindle_test_mark", None)


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    json.spindle_test_mark = "parent"  # a forked worker would see it, a spawned one not
    with spindle.Executor(1) as ex:
        print(ex.submit(mark).result(60))
"""


def test_the_start_method_set_for_multiprocessing_is_followed(tmp_path: Path) -> None:
    script = tmp_path / "set_start_method.py"
    script.write_text(_SET_START_METHOD)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


_CTRL_C = """
import time
import spindle


def block(_):
    time.sleep(120)


if __name__ == "__main__":
    try:
        with spindle.Executor(2) as ex:
            futures = [ex.submit(block, i) for i in range(10)]
            while sum(w["state"] == "busy" for w in ex.snapshot()["workers"]) < 2:
                time.sleep(0.01)  # until both workers run a task
            print(*(w["pid"] for w in ex.snapshot()["workers"]), flush=True)
            futures[0].result()
    except KeyboardInterrupt:
        print(sum(f.done() for f in futures[2:]), flush=True)
        rest = futures[2:]
        print(*{type(f.exception(0)).__name__ for f in rest if not f.cancelled()}, flush=True)
        raise
"""


def test_ctrl_c_with_pending_futures_settles_them_and_leaves_no_worker(tmp_path: Path) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C)
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)  # not the two minutes the tasks take
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    done, errors = out.splitlines()
    # The tasks waiting behind the two running ones are settled, not left pending:
    # cancelled if not taken in yet, else failed with BrokenExecutor.
    assert int(done) == 8
    assert set(errors.split()) <= {"BrokenExecutor"}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_map_of_quick_calls_groups_them_in_few_tasks() -> None:
    with spindle.Executor(2) as ex:
        assert list(ex.map(poolfns.square, range(20_000))) == [i * i for i in range(20_000)]
        assert ex.stats()[0].done < 2_000  # tasks: chunks of calls, not one per call


def test_map_groups_nothing_for_slow_calls_or_with_a_timeout() -> None:
    with spindle.Executor(2) as ex:
        assert list(ex.map(poolfns.sleep_then, [0.02] * 12)) == [0.02] * 12
        assert ex.stats()[0].done == 12
    with spindle.Executor(2, timeout=30) as ex:
        assert list(ex.map(poolfns.square, range(500))) == [i * i for i in range(500)]
        assert ex.stats()[0].done == 500  # each call bounded by the timeout on its own


@pytest.mark.parametrize("buffersize", [None, 200])
def test_a_call_failing_in_a_chunk_comes_after_the_results_before_it(
    buffersize: int | None,
) -> None:
    with spindle.Executor(2) as ex:
        bad = 7_000
        results = ex.map(poolfns.fail_at, range(10_000), [bad] * 10_000, buffersize=buffersize)
        assert list(itertools.islice(results, bad)) == list(range(bad))
        with pytest.raises(ValueError, match="7000 is the bad one") as info:
            next(results)
        assert isinstance(info.value.__cause__, spindle.RemoteTraceback)
        assert "fail_at" in info.value.__cause__.tb
