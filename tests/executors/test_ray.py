"""The Ray backend on one machine: the behaviour suite, faults, Ctrl-C and resume.

Every test of this module runs on one local Ray (``ray.init(num_cpus=2)``), started
once: spindle joins it and leaves it running, as it does any Ray the program started.
The multi-node behaviour (spreading, a node lost) is in ``test_ray_cluster``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workfns as jobs

import spindle

from . import _ray_jobs
from ._ray_support import (
    RAY_KINDS,
    Acting,
    Listener,
    empty,
    leak_check,
    marks_for_actors,
    needs_ray,
    ray_daemons,
    spindle_actors,
)
from ._suite import EXIT_ON_5, KILL_ON_5, SQUARE, Job, create_executor_tests
from .test_failures import FailureBehaviour, ProcessFaultBehaviour
from .test_lifecycle import STOP_LIMIT, InitBehaviour, StopBehaviour, _run_threads
from .test_results import ResultsBehaviour

pytestmark = [needs_ray, pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(_ray_jobs.__file__).resolve()


# -- one Ray for the module ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A local Ray with 2 CPUs for the whole module; its marks directory (see
    ``marks``) is in the environment its actors get."""
    import ray

    if ray.is_initialized():  # pragma: no cover - another module left one
        ray.shutdown()
    marks = tmp_path_factory.mktemp("ray-marks")
    with marks_for_actors(marks):
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    info = {
        "address": ray.get_runtime_context().gcs_address,
        "daemons": ray_daemons(),
        "marks": marks,
    }
    try:
        yield info
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(ray_local: dict[str, Any]) -> Iterator[None]:
    """The leak check of this module: Ray's processes and threads are expected (see
    ``_ray_support``); no spindle actor may be left alive."""
    with leak_check(ray_local["daemons"]):
        yield


@pytest.fixture
def marks(ray_local: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The suite's marks directory, as the actors see it: the one in the environment
    Ray started with, emptied for each test."""
    monkeypatch.setenv("SPINDLE_TEST_MARKS", str(ray_local["marks"]))
    return empty(ray_local["marks"])


# -- the behaviour suite on Ray ---------------------------------------------------------


def _assert_stopped_on_ray() -> None:
    """Nothing of the run is left: no run thread, no spindle thread, no spindle actor
    (Ray's own processes stay: this module's Ray runs on)."""
    assert _run_threads() == set()
    assert [t.name for t in threading.enumerate() if t.name.startswith("spindle")] == []
    assert spindle_actors() == []


class StopOnRayBehaviour(StopBehaviour):
    def _assert_stopped(self) -> None:
        _assert_stopped_on_ray()


class InitOnRayBehaviour(InitBehaviour):
    def test_a_failing_init_is_a_spindle_error_naming_the_stage(self) -> None:
        with pytest.raises(
            spindle.SpindleError,
            match=r"init function of stage 'square_or_not' failed.*model file missing",
        ):
            list(self.run(SQUARE, range(10), init=jobs.broken_init, name="square_or_not"))
        assert spindle_actors() == []


class ProcessFaultOnRayBehaviour(ProcessFaultBehaviour):
    @pytest.mark.parametrize("job", [KILL_ON_5, EXIT_ON_5], ids=["sigkill", "exit"])
    def test_a_job_that_kills_its_worker_fails_alone_and_the_worker_is_replaced(  # type: ignore[override]
        self, job: Job
    ) -> None:
        # On Ray an item under which an actor dies runs once more on another actor
        # before it fails: an actor also dies for reasons of its own. Sync batches of 4:
        # the batch holding 5 kills an actor, then 5 alone kills another; async calls
        # are single items: 5 kills an actor, then another.
        batches: dict[str, Any] = {} if self.asynchronous else {"batch_size": 4}
        results = self.run(job, range(40), on_error="yield", **batches)
        got = list(results)
        assert len(got) == 40
        failed = {i for i, g in enumerate(got) if isinstance(g, spindle.Failure)}
        for i in failed:
            assert got[i].error == "WorkerCrashed" and "Ray actor" in got[i].message
            assert "died" in got[i].message
        # Item 5 alone fails: a suspect runs alone on its actor, so a batch-mate that
        # had finished when Ray told of the death is never blamed. With async actors
        # the calls in flight beside item 5 die with it, as with a local async worker.
        if self.calls_share_a_worker:
            assert 5 in failed and len(failed) <= self.options["concurrency"]
        else:
            assert failed == {5}
        assert [g for i, g in enumerate(got) if i not in failed] == [
            x for x in range(40) if x not in failed
        ]
        [stats] = results.stats()
        # Two actors die under item 5: under its batch, then under it alone. Ray may
        # tell of the first death before the answer of a batch that actor had finished;
        # that batch is then taken for the one running, and 5's batch runs whole once
        # more, on a third actor.
        assert 2 <= stats.restarts <= 3
        assert (stats.done, stats.failed) == (40 - len(failed), len(failed))


create_executor_tests(globals(), ResultsBehaviour, kinds=RAY_KINDS)
create_executor_tests(globals(), FailureBehaviour, kinds=RAY_KINDS)
create_executor_tests(globals(), ProcessFaultOnRayBehaviour, kinds=RAY_KINDS)
create_executor_tests(globals(), StopOnRayBehaviour, kinds=RAY_KINDS)
create_executor_tests(globals(), InitOnRayBehaviour, kinds=RAY_KINDS)


# -- Ray's own ----------------------------------------------------------------------------


def test_an_io_stage_runs_on_async_actors_each_with_its_own_concurrency() -> None:
    stage = spindle.io(jobs.async_square, backend="ray", workers=2, concurrency=8)
    assert stage.capacity == 16
    pipeline = spindle.Pipeline([stage])
    results = pipeline.run(range(300))
    assert list(results) == [x * x for x in range(300)]
    workers = results.snapshot()["workers"]
    assert workers == []  # the run is over: its actors are gone
    assert stage.stats().done == 300


def test_the_snapshot_shows_each_actor_with_its_node_and_pid() -> None:
    import ray

    node = ray.get_runtime_context().get_node_id()
    pipeline = spindle.Pipeline([spindle.cpu(jobs.pid_of, workers=2, backend="ray")])
    results = pipeline.run(range(1000))
    next(results)
    rows = results.snapshot()["workers"]  # taken while the run is on
    pids = set(results)
    assert len(rows) == 2
    for row in rows:
        assert row["stage"] == f"pid_of @ {node[:8]}"  # the views group workers by it
        assert row["node"] == node  # type: ignore[typeddict-item]
        assert row["state"] in ("idle", "busy") and row["restarts"] == 0
    assert {row["pid"] for row in rows} >= pids - {os.getpid()}
    assert pids == {row["pid"] for row in rows}


def test_a_run_goes_on_with_the_actors_that_have_room_and_the_others_join_later() -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    held = placement_group([{"CPU": 1}])
    ray.get(held.ready())  # one of the two CPUs is taken: one actor has room
    go = threading.Event()

    def items() -> Iterator[int]:
        yield from range(50)
        go.wait(60)
        yield from range(50, 100)

    def started() -> int:
        rows = results.snapshot()["workers"]
        return sum(row["state"] in ("idle", "busy") for row in rows)

    results = spindle.map(jobs.pid_of, items(), workers=2, batch_size=1, backend="ray")
    try:
        it = iter(results)
        pids = [next(it) for _ in range(50)]
        assert started() == 1  # the run went on with the actor that had room
        remove_placement_group(held)
        deadline = time.monotonic() + 60
        while started() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the second actor starts once it has room
        go.set()
        pids += it
    finally:
        go.set()
        remove_placement_group(held)
        results.close()
    assert len(pids) == 100
    assert len(set(pids[:50])) == 1 and len(set(pids[50:])) == 2


def test_a_worker_killed_from_outside_costs_only_its_batch(marks: Path) -> None:
    def kill(pid: int, node: str) -> None:
        os.kill(pid, signal.SIGKILL)

    acting = Acting(marks, kill)
    items = [(str(marks), x, 37) for x in range(200)]
    results = spindle.map(
        _ray_jobs.double_but_hold, items, workers=2, batch_size=8, backend="ray"
    )
    got = list(results)
    pid, _ = acting.join()
    assert got == [2 * x for x in range(200)]  # nothing failed, nothing twice
    [stats] = results.stats()
    assert (stats.done, stats.failed, stats.restarts) == (200, 0, 1)
    assert pid != os.getpid()


def test_a_job_stuck_in_c_code_is_found_and_its_actor_killed() -> None:
    # The item holds the interpreter, so the actor cannot say which item runs; its
    # batch runs again item by item, and the item times out alone.
    got = list(
        spindle.map(
            _ray_jobs.spin_in_c, range(8), workers=1, batch_size=8, timeout=1,
            backend="ray", on_error="yield",
        )
    )  # fmt: skip
    assert isinstance(got[3], spindle.Failure) and got[3].error == "Timeout"
    assert [g for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def test_route_sends_each_key_to_one_actor() -> None:
    got = list(
        spindle.map(jobs.pid_and_key, range(200), workers=2, route=jobs.key_of, backend="ray")
    )
    owner: dict[int, set[int]] = {}
    for key, pid in got:
        owner.setdefault(key, set()).add(pid)
    assert all(len(pids) == 1 for pids in owner.values())


def test_every_actors_reports_are_merged_and_retired_actors_count() -> None:
    stage = spindle.cpu(
        jobs.count_job,
        workers=2,
        batch_size=10,
        max_jobs_per_worker=100,
        init=jobs.job_counter,
        reporter=jobs.report_jobs,
        backend="ray",
    )
    pipeline = spindle.Pipeline([stage])
    assert list(pipeline.run(range(500))) == list(range(500))
    snap = pipeline.snapshot()
    report = snap["stages"][0]["report"]
    assert report["jobs"] == 500
    assert len(report["by_worker"]) >= 5  # 100 jobs each at most: retired actors too
    assert snap["stages"][0]["restarts"] >= 3


def test_large_items_and_results_travel_through_the_object_store() -> None:
    blobs = [bytes([i]) * 3_000_000 for i in range(6)]  # 3 MB each, over Ray's inline limit
    got = list(spindle.map(len, blobs, workers=2, batch_size=1, backend="ray"))
    assert got == [3_000_000] * 6


def test_a_ray_stage_needs_a_process_kind_and_says_how_to_install_ray() -> None:
    with pytest.raises(spindle.ConfigError, match="kind='cpu'"):
        spindle.thread(jobs.square, backend="ray")
    with pytest.raises(spindle.ConfigError, match="backend must be"):
        spindle.cpu(jobs.square, backend="dask")
    with pytest.raises(spindle.ConfigError, match="ray_address"):
        spindle.cpu(jobs.square, ray_address="auto")


# -- the command line ------------------------------------------------------------------


def _spindle(*args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PYTHONFAULTHANDLER": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "spindle", *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def _numbers(path: Path, n: int) -> Path:
    path.write_text("".join(f"{i}\n" for i in range(n)))
    return path


def test_ctrl_c_of_a_command_on_ray_stops_within_its_grace_and_leaves_no_actor(
    ray_local: dict[str, Any], marks: Path, tmp_path: Path
) -> None:
    listener = Listener(marks)
    out = tmp_path / "out.jsonl"
    proc = _spindle(
        "map", f"{JOBS}:hold_line", str(_numbers(tmp_path / "in.txt", 100)), "-o", str(out),
        "--backend", "ray", "--ray-address", ray_local["address"], "--workers", "2",
        "--grace", "1", "-q",
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    try:
        listener.hear()  # a job runs (and holds): the run is under way
        pressed = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # its stacks, from PYTHONFAULTHANDLER
            _, err = proc.communicate()
            pytest.fail(f"the command did not stop:\n{err[-6000:]}")
        took = time.monotonic() - pressed
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert took < 1 + STOP_LIMIT, took  # the grace, then the actors killed
    assert "stopping" in err
    assert spindle_actors() == []  # and this module's Ray runs on
    lines = out.read_text().splitlines()
    assert len(lines) < 100


def test_a_journaled_run_on_ray_resumes_after_the_driver_is_killed(
    ray_local: dict[str, Any], marks: Path, tmp_path: Path
) -> None:
    import json

    listener = Listener(marks)
    inputs = _numbers(tmp_path / "in.txt", 300)
    out, journal = tmp_path / "out.jsonl", tmp_path / "run.db"
    args = [
        "map", f"{JOBS}:hold_line", str(inputs), "-o", str(out), "--journal", str(journal),
        "--backend", "ray", "--ray-address", ray_local["address"], "--workers", "2", "-q",
        "--batch-size", "4",
    ]  # fmt: skip
    first = _spindle(*args)
    try:
        listener.hear()  # line 3 holds: the driver is mid-run
        first.kill()  # SIGKILL: no clean-up of any kind
        first.communicate(timeout=30)
    finally:
        listener.close()
        if first.poll() is None:
            first.kill()
            first.communicate()
    second = _spindle(*args)
    _, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["input"] for r in records) == Counter(str(i) for i in range(300))
    assert all(r["result"] == 2 * int(r["input"]) for r in records)


def test_without_ray_the_option_says_how_to_install_it(tmp_path: Path) -> None:
    # A fresh interpreter in which ``ray`` cannot be imported.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import importlib.util as u; u.find_spec = lambda name, *a: None\n"
        "from spindle.cli import main; main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, "map", "tests/workfns.py:square", "-", "-o", "-",
         "--backend", "ray"],
        cwd=REPO, env=env, input="1\n", text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "pip install 'spindle[ray]'" in proc.stderr
