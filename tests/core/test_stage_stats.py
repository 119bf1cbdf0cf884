"""``stage.stats()``: the counters of a stage's current run, or of its most recent one."""

from __future__ import annotations

from typing import Any

import pytest
import workfns as jobs

import spindle

pytestmark = pytest.mark.timeout(60)


def make(kind: str, fn: Any = None, afn: Any = None) -> spindle.Stage:
    fn = fn or jobs.fail_on_multiples_of_7
    afn = afn or jobs.async_fail_on_3
    if kind == "cpu":
        return spindle.cpu(fn, workers=2)
    if kind == "thread":
        return spindle.thread(fn, workers=2)
    return spindle.io(afn, concurrency=4)


def failures_in(kind: str, n: int) -> int:
    return 1 if kind == "io" else len(range(7, n + 1, 7))


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_before_any_run_every_counter_is_zero(kind: str) -> None:
    stage = make(kind)

    stats = stage.stats()

    assert isinstance(stats, spindle.StageStats)
    assert (stats.name, stats.kind) == (stage.name, kind)
    assert (stats.done, stats.failed, stats.in_flight, stats.queued, stats.workers) == (0,) * 5
    assert repr(stats) == f"{stage.name} ({kind}): 0 running, 0 queued, 0 done, 0 failed"


def test_a_fetch_stage_has_stats_too() -> None:
    stage = spindle.fetch(workers=1)
    assert repr(stage.stats()) == "fetch (cpu): 0 running, 0 queued, 0 done, 0 failed"


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_stats_follow_the_run_and_keep_its_final_counters(kind: str) -> None:
    stage = make(kind)
    pipeline = spindle.Pipeline([stage], on_error="yield")
    n = 300

    results = pipeline.run(range(1, n + 1))
    first = next(results)  # the run is going: the stage counts live
    during = stage.stats()
    rest = list(results)

    assert first is not None and during.done + during.failed >= 1
    after = stage.stats()
    assert len(rest) == n - 1
    failed = failures_in(kind, n)
    assert (after.done, after.failed, after.in_flight, after.queued) == (n - failed, failed, 0, 0)
    assert after == pipeline.stats()[0]  # the same figures as the pipeline's
    assert stage._last_run._runner is None  # the run's objects are not kept alive
    assert f"{n - failed} done, {failed} failed" in repr(after)


def test_a_new_run_counts_from_zero_and_each_stage_counts_its_own() -> None:
    first = spindle.thread(jobs.fail_on_multiples_of_7, workers=2)
    second = spindle.thread(jobs.square, workers=2, name="square")
    pipeline = spindle.Pipeline([first, second], on_error="yield")

    assert len(list(pipeline.run(range(1, 71)))) == 70
    assert (first.stats().done, first.stats().failed) == (60, 10)
    assert (second.stats().done, second.stats().failed) == (60, 0)  # failures pass through

    results = pipeline.run(range(1, 15))  # made, not started: this run is the current one
    assert (first.stats().done, second.stats().done) == (0, 0)
    assert len(list(results)) == 14
    assert (first.stats().done, first.stats().failed) == (12, 2)


def test_stats_after_a_run_broken_off() -> None:
    stage = spindle.cpu(jobs.square, workers=2, batch_size=10)
    results = spindle.Pipeline([stage]).run(range(100_000))
    for _ in range(50):
        next(results)
    results.close()

    stats = stage.stats()
    assert 50 <= stats.done < 100_000 and stats.failed == 0
    assert stats.in_flight == 0 and stats.workers == 0  # every worker stopped
