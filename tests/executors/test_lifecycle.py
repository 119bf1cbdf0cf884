"""Workers' lives on every kind of executor: ``init`` and its state, and stopping a run."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import workfns as jobs

import spindle

from ._suite import (
    BLOCK_FROM_4,
    INIT_WITH_TEARDOWN,
    MARKS_DIR,
    MODEL_SCALE,
    SQUARE,
    ExecutorMixin,
    create_executor_tests,
)

#: Longest a stop may take. The jobs it stops would block for 30 s or more.
STOP_LIMIT = 5.0


def _run_threads() -> set[str]:
    """The threads a run of the synchronous API starts besides its workers."""
    return {t.name for t in threading.enumerate()} & {"spindle-loop", "spindle-source"}


class StopBehaviour(ExecutorMixin):
    def _assert_stopped(self) -> None:
        """Nothing of the run is left, but a thread stuck in a job (it cannot be
        stopped: it is abandoned, and ends when the job returns, here when the
        test's gate opens)."""
        assert _run_threads() == set()
        assert psutil.Process().children(recursive=True) == []
        if self.stuck_job != "abandoned":
            assert [t.name for t in threading.enumerate() if t.name.startswith("spindle")] == []

    def test_breaking_out_of_the_loop_stops_every_worker(self, gate: threading.Event) -> None:
        # Items from 4 on block; the input never ends. The results object is not kept:
        # leaving the loop lets it go, which stops the run there and then.
        stopped_at = None
        for i, r in enumerate(self.run(BLOCK_FROM_4, itertools.count(), batch_size=1)):
            assert r == i
            if i == 2:
                stopped_at = time.monotonic()
                break
        assert stopped_at is not None and time.monotonic() - stopped_at < STOP_LIMIT
        self._assert_stopped()

    def test_close_stops_every_worker_without_waiting_for_running_jobs(
        self, gate: threading.Event
    ) -> None:
        results = self.run(BLOCK_FROM_4, itertools.count(), batch_size=1)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        t0 = time.monotonic()
        results.close()
        assert time.monotonic() - t0 < STOP_LIMIT
        self._assert_stopped()

    def test_stop_intake_lets_the_jobs_in_flight_finish_and_ends_the_results(self) -> None:
        n = 100_000
        results = self.run(SQUARE, range(n), on_error="yield")
        got = [next(results)]
        results.stop_intake(grace=30.0)
        t0 = time.monotonic()
        got.extend(results)
        assert time.monotonic() - t0 < 10.0  # drained: the grace did not run out
        assert got == [x * x for x in range(len(got))]  # every started job, none failed
        assert len(got) + results.not_started < n
        assert results.snapshot()["status"] == "stopped"

    def test_stop_intake_reads_no_more_input(self, gate: threading.Event) -> None:
        source = _GatedInput(gate)
        pipeline = self.pipeline(SQUARE)
        results = pipeline.run(source, services=[_open_at_the_end(gate)])
        got = [next(results)]
        results.stop_intake()
        got.extend(results)
        # The source asked for its next item only once the run was over: it may have
        # that one in hand, no more. Each other item drawn was run or counted as not
        # started.
        assert got == [0]
        assert source.drawn - len(got) - results.not_started <= 1, source.drawn


class _GatedInput:
    """Gives 0, then waits for the gate before giving 1, 2, 3... (a slow pipe)."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.drawn = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            if i == 1:
                self.gate.wait(30)
            self.drawn += 1
            yield i


def _open_at_the_end(
    gate: threading.Event,
) -> Callable[[Callable[[], dict[str, Any]]], contextlib.AbstractAsyncContextManager[None]]:
    """A service of the run that opens ``gate`` as the run ends, on the run's loop."""

    @contextlib.asynccontextmanager
    async def service(snapshot: Callable[[], dict[str, Any]]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            gate.set()

    return service


class InitBehaviour(ExecutorMixin):
    def test_jobs_get_what_init_returned_from_worker_state(self) -> None:
        # A plain init serves async jobs too.
        got = list(self.run(MODEL_SCALE, range(50), init=jobs.make_model))
        assert got == [x * 10 for x in range(50)]

    def test_init_runs_once_per_worker_and_its_teardown_when_the_worker_stops(
        self, marks: Path
    ) -> None:
        # A generator init (async for async kinds): its teardown leaves a file named
        # after the process (and thread) it ran in.
        got = list(self.run(MARKS_DIR, range(20), init=self.fn(INIT_WITH_TEARDOWN)))
        assert got == [str(marks)] * 20
        closed = [p.name for p in marks.iterdir()]
        assert len(closed) == self.workers_with_state, closed

    def test_a_failing_init_is_a_spindle_error_naming_the_stage(self) -> None:
        with pytest.raises(
            spindle.SpindleError,
            match=r"init function of stage 'square_or_not' failed.*model file missing",
        ):
            list(self.run(SQUARE, range(10), init=jobs.broken_init, name="square_or_not"))
        assert psutil.Process().children(recursive=True) == []


create_executor_tests(globals(), StopBehaviour)
create_executor_tests(globals(), InitBehaviour)
