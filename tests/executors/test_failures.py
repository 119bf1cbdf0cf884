"""Failures on every kind of executor: raised or yielded, timeouts, retries, crashes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import spindle

from ._suite import (
    EXIT_ON_5,
    FAIL_ON_7S,
    FLAKY,
    HANG_ON_3,
    KILL_ON_5,
    PERMANENT,
    PROCESS_KINDS,
    RAISE_UNBUILDABLE,
    RETURN_LOCK,
    SQUARE,
    ExecutorMixin,
    Job,
    create_executor_tests,
)


class FailureBehaviour(ExecutorMixin):
    def test_raise_gives_the_results_before_then_the_original_error_with_its_traceback(
        self,
    ) -> None:
        results: list[int] = []
        with pytest.raises(ValueError, match="no multiples of 7, got 7") as info:
            for r in self.run(FAIL_ON_7S, range(1, 30)):
                results.append(r)
        assert results == [x * 2 for x in range(1, 7)]
        cause = info.value.__cause__
        assert isinstance(cause, spindle.RemoteTraceback)
        assert self.fn(FAIL_ON_7S).__name__ in cause.tb
        assert any("item 7" in note for note in getattr(info.value, "__notes__", []))

    def test_yield_puts_a_failure_in_the_place_of_each_failed_item(self) -> None:
        stage = self.stage(FAIL_ON_7S)
        results = spindle.Pipeline([stage], on_error="yield").run(range(1, 30))
        got = list(results)
        failures = {i: g for i, g in enumerate(got, 1) if isinstance(g, spindle.Failure)}
        assert sorted(failures) == [7, 14, 21, 28]
        for x, f in failures.items():
            assert f.item == x
            assert f.error == "ValueError"
            assert f.message == f"no multiples of 7, got {x}"
            assert "Traceback" in f.traceback and stage.fn.__name__ in f.traceback
            assert f.attempts == 1
            assert f.stage == stage.name
            assert isinstance(f.exception, ValueError)
        assert [g for i, g in enumerate(got, 1) if i not in failures] == [
            x * 2 for x in range(1, 30) if x % 7
        ]
        [stats] = results.stats()
        assert (stats.done, stats.failed) == (25, 4)

    def test_a_job_past_the_timeout_fails_alone_with_timeout(self, gate: threading.Event) -> None:
        results = self.run(HANG_ON_3, range(8), timeout=0.5, on_error="yield")
        got = list(results)
        failure = got[3]
        assert isinstance(failure, spindle.Failure)
        assert failure.error == "Timeout" and isinstance(failure.exception, spindle.Timeout)
        assert "timeout of 0.5 s" in failure.message
        assert [g for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
        [stats] = results.stats()
        assert (stats.done, stats.failed) == (7, 1)
        # Where kinds differ: what happened to the job that was still running.
        if self.stuck_job == "abandoned":
            assert "abandoned" in failure.message  # it runs on until the gate opens
        if self.stuck_job == "killed":
            assert "worker process was killed" in failure.message
        assert stats.restarts == (1 if self.stuck_job == "killed" else 0)

    def test_a_job_that_fails_its_first_attempts_succeeds_on_a_retry(self, tmp_path: Path) -> None:
        # (marks, x, fails): x fails its first `fails` attempts. Two retries: 3 attempts.
        items = [(str(tmp_path), x, fails) for x, fails in enumerate([0, 1, 2, 3])]
        results = self.run(FLAKY, items, retries=2, backoff=0.001, on_error="yield")
        got = list(results)
        assert got[:3] == [0, 1, 2]
        failure = got[3]
        assert isinstance(failure, spindle.Failure)
        assert (failure.error, failure.attempts) == ("Flaky", 3)
        assert "attempt at 3 failed" in failure.message
        attempts = [(tmp_path / f"attempts-{x}").stat().st_size for x in range(4)]
        assert attempts == [1, 2, 3, 3]
        [stats] = results.stats()
        assert (stats.done, stats.failed, stats.retried) == (3, 1, 5)

    def test_permanent_failures_are_not_retried(self) -> None:
        results = self.run(PERMANENT, [1, 2], retries=3, backoff=0.001, on_error="yield")
        got = list(results)
        assert all(isinstance(g, spindle.Failure) for g in got)
        assert [(g.error, g.attempts) for g in got] == [("Permanent", 1)] * 2
        assert results.stats()[0].retried == 0


class ProcessFaultBehaviour(ExecutorMixin):
    """What only worker processes do: die under a job, and pickle what crosses."""

    @pytest.mark.parametrize(
        ("job", "reason"),
        [(KILL_ON_5, "killed by SIGKILL"), (EXIT_ON_5, "exited with code 3")],
        ids=["sigkill", "exit"],
    )
    def test_a_job_that_kills_its_worker_fails_alone_and_the_worker_is_replaced(
        self, job: Job, reason: str
    ) -> None:
        # Sync workers get batches of 4: the batch holding 5 kills its worker, then 5,
        # run alone to find which item of the batch did it, kills another. Async
        # workers get single items.
        batches: dict[str, Any] = {} if self.asynchronous else {"batch_size": 4}
        deaths = 1 if self.asynchronous else 2
        results = self.run(job, range(40), on_error="yield", **batches)
        got = list(results)
        assert len(got) == 40
        failed = {i for i, g in enumerate(got) if isinstance(g, spindle.Failure)}
        for i in failed:
            assert got[i].error == "WorkerCrashed" and reason in got[i].message
        if self.calls_share_a_worker:
            # The calls in flight on the dying worker die with it: which ones is not known.
            assert 5 in failed and len(failed) <= self.options["concurrency"]
        else:
            assert failed == {5}
        assert [g for i, g in enumerate(got) if i not in failed] == [
            x for x in range(40) if x not in failed
        ]
        [stats] = results.stats()
        assert stats.restarts == deaths
        assert (stats.done, stats.failed) == (40 - len(failed), len(failed))

    def test_an_input_that_cannot_be_pickled_fails_alone(self) -> None:
        lock = threading.Lock()
        got = list(self.run(SQUARE, [1, lock, 3], on_error="yield"))
        assert got[0] == 1 and got[2] == 9
        failure = got[1]
        assert isinstance(failure, spindle.Failure) and failure.error == "Unpicklable"
        assert failure.item is lock and "lock" in failure.message

    def test_a_result_that_cannot_be_pickled_fails_alone(self) -> None:
        got = list(self.run(RETURN_LOCK, range(4), on_error="yield"))
        assert [g for i, g in enumerate(got) if i != 2] == [0, 1, 3]
        failure = got[2]
        assert isinstance(failure, spindle.Failure) and failure.error == "Unpicklable"
        assert "result of item 2" in failure.message

    def test_an_error_that_cannot_be_rebuilt_is_raised_as_a_job_error(self) -> None:
        with pytest.raises(spindle.JobError, match="Unbuildable") as info:
            list(self.run(RAISE_UNBUILDABLE, [1]))
        assert isinstance(info.value.__cause__, spindle.RemoteTraceback)


create_executor_tests(globals(), FailureBehaviour)
create_executor_tests(globals(), ProcessFaultBehaviour, kinds=PROCESS_KINDS)
