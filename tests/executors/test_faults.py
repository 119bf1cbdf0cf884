"""Faults: dying workers, stuck jobs, flaky jobs, worker life cycle."""

from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path

import pytest
import workfns as jobs

import spindle
from spindle.policies.retry import RetryPolicy


@pytest.mark.timeout(120)
def test_a_long_run_survives_kill_segfault_hang_flakiness_and_memory_growth(
    tmp_path: Path,
) -> None:
    fn = functools.partial(jobs.chaos, marks=str(tmp_path), big=300 * 2**20)
    results = spindle.map(
        fn,
        range(1000),
        kind="cpu",
        workers=2,
        timeout=2,
        retries=3,
        backoff=(0.01, 0.05),
        retry_on=jobs.Flaky,
        max_memory_per_worker="200MB",
        on_error="yield",
    )
    got = list(results)
    assert len(got) == 1000
    failures = {g.item: g for g in got if isinstance(g, spindle.Failure)}
    assert set(failures) == {100, 200, 300}
    assert failures[100].error == "WorkerCrashed" and "SIGKILL" in failures[100].message
    assert failures[200].error == "WorkerCrashed" and "SIGSEGV" in failures[200].message
    assert failures[300].error == "Timeout" and "2 s" in failures[300].message
    assert all(f.attempts == 1 for f in failures.values())  # not Flaky: not retried
    for i, g in enumerate(got):
        if i not in failures:
            assert g == i * 3, (i, g)
    assert (tmp_path / "400").read_text() == "xxx"  # failed twice, then succeeded
    [stage] = results.stats()
    assert stage.failed == 3 and stage.done == 997
    assert stage.retried == 2
    # Two crashes, one timeout and one worker retired for its memory: four restarts,
    # or three when the retiring worker is the one that ran the stuck item (its
    # replacement had already started).
    assert 3 <= stage.restarts <= 4


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_retries_report_attempts_and_the_last_traceback(kind: str) -> None:
    fn = jobs.async_always_fails if kind == "io" else jobs.always_fails
    got = list(spindle.map(fn, range(3), kind=kind, retries=2, backoff=0.001, on_error="yield"))
    assert all(isinstance(g, spindle.Failure) for g in got)
    assert [g.attempts for g in got] == [3, 3, 3]
    assert [g.error for g in got] == ["Flaky"] * 3
    assert "always fails" in got[0].traceback


def test_permanent_failures_are_not_retried() -> None:
    got = list(spindle.map(jobs.permanent_failure, [1], kind="thread", retries=5, on_error="yield"))
    assert got[0].error == "Permanent" and got[0].attempts == 1


def test_a_job_waiting_for_its_retry_holds_no_slot() -> None:
    order: list[str] = []
    attempts: dict[int, int] = {}

    async def job(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        order.append(f"{x}#{attempts[x]}")
        if x == 0 and attempts[x] == 1:
            raise jobs.Flaky("first try fails")
        return x

    stage = spindle.io(job, concurrency=1, retries=1, backoff=(2.0, 2.0))
    # A seeded generator: the backoff (uniform in [0, 2] s) is the same every run.
    seeded = RetryPolicy.make(1, (2.0, 2.0))
    seeded = dataclasses.replace(seeded, _rng=random.Random(3))
    assert seeded.delay(1) > 0.1
    stage = dataclasses.replace(stage, retry=seeded)
    got = list(spindle.Pipeline([stage], ordered=False).run(range(20)))
    assert sorted(got) == list(range(20))
    # With one slot, items 1..19 ran while item 0 waited for its retry.
    assert order[0] == "0#1" and order[-1] == "0#2"


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_timeout_fails_the_stuck_job_and_the_others_go_on(kind: str) -> None:
    if kind == "io":
        fn, items = jobs.async_hang_on_3, list(range(8))
    elif kind == "cpu":
        fn, items = jobs.spin_on_3, list(range(8))
    else:
        fn, items = jobs.sleepy, [0.0, 0.0, 0.0, 3.0, 0.0, 0.0]
    got = list(spindle.map(fn, items, kind=kind, timeout=0.5, on_error="yield"))
    assert isinstance(got[3], spindle.Failure) and got[3].error == "Timeout"
    assert [g for i, g in enumerate(got) if i != 3] == [x for i, x in enumerate(items) if i != 3]
    if kind == "thread":
        assert "abandoned" in got[3].message


def test_timeout_of_a_stuck_cpu_job_in_a_big_batch_reruns_its_neighbours() -> None:
    got = list(
        spindle.map(
            jobs.spin_on_3,
            range(50),
            kind="cpu",
            workers=1,
            batch_size=50,
            timeout=0.5,
            on_error="yield",
        )
    )
    assert isinstance(got[3], spindle.Failure)
    assert [g for i, g in enumerate(got) if i != 3] == [i for i in range(50) if i != 3]


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_init_runs_once_per_worker_and_jobs_reach_its_value(kind: str) -> None:
    if kind == "io":
        got = list(spindle.map(jobs.async_use_model, range(10), kind="io", init=jobs.make_model))
        assert got == [x * 10 for x in range(10)]
        return
    got = list(spindle.map(jobs.use_model, range(200), kind=kind, workers=2, init=jobs.make_model))
    assert [v for _, v in got] == [x * 10 for x in range(200)]
    if kind == "cpu":
        assert len({pid for pid, _ in got}) <= 2


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_a_failing_init_is_a_clear_error(kind: str) -> None:
    with pytest.raises(spindle.SpindleError, match=r"init function .* failed.*model file missing"):
        list(spindle.map(jobs.square, range(10), kind=kind, init=jobs.broken_init))


def test_max_jobs_per_worker_replaces_workers() -> None:
    results = spindle.map(
        jobs.pid_of, range(40), kind="cpu", workers=2, max_jobs_per_worker=10, batch_size=5
    )
    pids = list(results)
    assert len(set(pids)) >= 4
    for pid in set(pids):
        assert pids.count(pid) <= 10
    assert results.stats()[0].restarts >= 2


def test_worker_limits_apply_to_cpu_stages_only() -> None:
    with pytest.raises(spindle.ConfigError, match="kind='cpu' only"):
        spindle.map(jobs.square, [1], kind="thread", max_jobs_per_worker=5)


def test_route_sends_each_key_to_one_worker_and_spreads_keys() -> None:
    got = list(spindle.map(jobs.pid_and_key, range(300), kind="cpu", workers=2, route=jobs.key_of))
    owner: dict[int, set[int]] = {}
    for key, pid in got:
        owner.setdefault(key, set()).add(pid)
    assert all(len(pids) == 1 for pids in owner.values())
    assert len({pid for pids in owner.values() for pid in pids}) == 2


def test_route_is_for_cpu_stages() -> None:
    with pytest.raises(spindle.ConfigError, match="route="):
        spindle.map(jobs.square, [1], kind="thread", route=jobs.key_of)


@pytest.mark.parametrize("kind", ["cpu", "thread", "io", "cpu-async"])
def test_generator_init_runs_its_teardown_when_the_worker_stops(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINDLE_TEST_MARKS", str(tmp_path))
    if kind in ("io", "cpu-async"):
        fn, init, prefix = jobs.async_marks_dir, jobs.async_init_with_teardown, "aclosed-"
    else:
        fn, init, prefix = jobs.marks_dir, jobs.init_with_teardown, "closed-"
    real_kind = "cpu" if kind == "cpu-async" else kind
    got = list(spindle.map(fn, range(20), kind=real_kind, workers=2, init=init))
    assert got == [str(tmp_path)] * 20
    closed = [p.name for p in tmp_path.iterdir() if p.name.startswith(prefix)]
    assert len(closed) == (1 if kind == "io" else 2)


def test_no_descriptor_number_of_a_dead_worker_is_left_for_forked_children() -> None:
    from spindle.executors import _handle

    results = spindle.map(jobs.kill_self_on_5, range(20), workers=2, batch_size=1, on_error="yield")
    out = list(results)

    assert sum(isinstance(r, spindle.Failure) for r in out) == 1
    # A forked worker closes the descriptors listed here; a number left behind by a
    # worker whose socket is closed may belong to anything the parent opened since.
    assert not _handle._PARENT_FDS


@pytest.mark.timeout(60)
def test_a_big_parent_does_not_make_forked_workers_look_big() -> None:
    """A forked worker shares its parent's pages: they are not its memory. With a parent
    holding 250 MB and a 200 MB limit, no worker is retired for memory it does not own."""
    ballast = bytearray(b"\x01") * (250 * 2**20)  # written, so resident in the parent
    results = spindle.map(
        abs,
        range(20_000),
        kind="cpu",
        workers=2,
        start_method="fork",
        max_memory_per_worker="200MB",
    )
    assert sum(results) == sum(range(20_000))
    [stage] = results.stats()
    assert stage.restarts == 0
    del ballast
