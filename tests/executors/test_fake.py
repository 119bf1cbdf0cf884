"""The pipeline and its stage runners driven through FakeExecutor: no thread, no process.

Each test states what the engine does (order, failures, flat maps, worker state,
retries, stopping) with batches the test holds and releases itself, so every
interleaving here is chosen, not timed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psutil
import pytest

import spindle
from spindle._core.stage import Stage, with_executor
from spindle.executors.fake import FakeExecutor, Hold
from spindle.executors.spec import WorkSpec
from spindle.executors.threads import ThreadExecutor


def faked(stage: Stage, **options: Any) -> tuple[Stage, list[FakeExecutor]]:
    """``stage`` run on FakeExecutors made with ``options``, and the list of those made."""
    made: list[FakeExecutor] = []

    def factory(spec: WorkSpec) -> FakeExecutor:
        made.append(FakeExecutor(spec, **options))
        return made[-1]

    return with_executor(stage, factory), made


async def feed(items: Iterable[Any]) -> AsyncIterator[Any]:
    """An async source: the run reads it on its loop, with no source thread."""
    for x in items:
        yield x


def run(stages: list[Stage], items: Iterable[Any], **options: Any) -> list[Any]:
    """Results of a run on the caller's own loop (``arun``), fed from an async source."""

    async def main() -> list[Any]:
        pipeline = spindle.Pipeline(stages, **options)
        return [x async for x in pipeline.arun(feed(items))]

    return asyncio.run(main())


def test_a_pipeline_runs_on_fakes_in_this_thread_with_the_stages_settings() -> None:
    seen: list[tuple[int, int]] = []

    def where(items: list[Any]) -> None:
        seen.append((threading.active_count(), len(psutil.Process().children())))

    upper, upper_made = faked(spindle.thread(str.upper, workers=3), hold=where)
    size, size_made = faked(spindle.cpu(len, workers=2), hold=where)

    assert run([upper, size], ["a", "bb", "ccc"]) == [1, 2, 3]

    assert seen and set(seen) == {(threading.active_count(), 0)}
    [up], [sz] = upper_made, size_made
    assert sorted(x for batch in up.batches for x in batch) == ["a", "bb", "ccc"]
    assert (up.spec.kind, up.capacity, sz.spec.kind, sz.capacity) == ("thread", 3, "cpu", 4)
    assert up.started and up.closed and up.cancelled is False
    assert upper.stats().done == 3 and size.stats().done == 3


@pytest.mark.parametrize("ordered", [True, False])
def test_a_held_first_batch_is_emitted_in_input_order_only_when_ordered(ordered: bool) -> None:
    gate = asyncio.Event()
    finished: list[int] = []

    def square(x: int) -> int:
        finished.append(x)
        if len(finished) == 7:  # every item but the held one: let it go
            gate.set()
        return x * x

    def hold(items: list[Any]) -> Any:
        return gate.wait() if items == [0] else None

    stage, _ = faked(spindle.thread(square, workers=4), hold=hold, batch_size=1)

    got = run([stage], range(8), ordered=ordered)

    assert finished == [1, 2, 3, 4, 5, 6, 7, 0]
    expected = [x * x for x in (range(8) if ordered else finished)]
    assert got == expected


def test_a_failure_is_yielded_with_its_traceback_or_raised() -> None:
    def fragile(x: int) -> int:
        if x == 2:
            raise ValueError(f"no {x}")
        return x

    stage, _ = faked(spindle.thread(fragile, name="fragile"))

    got = run([stage], range(4), on_error="yield")

    assert got[:2] == [0, 1] and got[3] == 3
    failure = got[2]
    assert isinstance(failure, spindle.Failure)
    assert (failure.item, failure.error, failure.message) == (2, "ValueError", "no 2")
    assert failure.stage == "fragile" and 'raise ValueError(f"no {x}")' in failure.traceback
    with pytest.raises(ValueError, match="no 2"):
        run([stage], range(4))


def test_generators_and_async_functions_run_as_on_their_executors() -> None:
    def twice(x: int) -> Iterable[int]:
        yield x
        yield x

    async def plus_one(x: int) -> int:
        return x + 1

    async def upto(x: int) -> AsyncIterator[int]:
        for i in range(x):
            yield i

    stages = [faked(s)[0] for s in (spindle.thread(twice), spindle.io(plus_one), spindle.io(upto))]

    assert run(stages, [1, 2]) == [0, 1, 0, 1, 0, 1, 2, 0, 1, 2]


def test_init_gives_worker_state_its_teardown_runs_at_close_and_reports_are_merged() -> None:
    events: list[str] = []

    def init() -> Iterable[dict[str, int]]:
        events.append("init")
        yield {"calls": 0}
        events.append("teardown")

    def count(x: int) -> int:
        state = spindle.worker_state()
        state["calls"] += 1
        return state["calls"]

    stage, made = faked(
        spindle.thread(count, init=init, reporter=lambda state: {"calls": state["calls"]})
    )

    assert run([stage], range(5)) == [1, 2, 3, 4, 5]
    assert events == ["init", "teardown"]
    assert made[0].report() == {"calls": 5}


def test_a_job_that_fails_is_retried_by_the_stage_runner() -> None:
    attempts: dict[int, int] = {}

    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x == 1 and attempts[x] < 3:
            raise ConnectionError("try again")
        return x

    stage, made = faked(spindle.thread(flaky, retries=2, backoff=0), batch_size=1)

    assert run([stage], range(3)) == [0, 1, 2]
    assert attempts == {0: 1, 1: 3, 2: 1}
    assert [b for b in made[0].batches if b == [1]] == [[1], [1], [1]]
    assert stage.stats().retried == 2


def test_leaving_a_run_while_a_batch_is_held_cancels_it_and_closes_the_executor() -> None:
    held = asyncio.Event()

    async def hold(items: list[Any]) -> None:
        held.set()
        await asyncio.Event().wait()  # never released: only the stop ends it

    stage, made = faked(spindle.thread(str, workers=1), hold=hold)

    async def main() -> None:
        results = spindle.Pipeline([stage]).arun(feed(range(10)))
        first = asyncio.ensure_future(anext(results))
        await held.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await results.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())

    [fake] = made
    assert fake.closed and fake.cancelled and fake.running == 0 and fake.batches == [[0]]


def test_an_async_job_past_the_timeout_fails_with_timeout() -> None:
    async def forever(x: int) -> int:
        await asyncio.Event().wait()
        return x

    stage, _ = faked(spindle.io(forever, timeout=0.01))

    [failure] = run([stage], [7], on_error="yield")

    assert isinstance(failure, spindle.Failure) and failure.error == "Timeout"


def test_with_executor_changes_a_copy_and_hands_the_factory_the_stages_spec() -> None:
    stage = spindle.thread(str.upper, workers=2, batch_size=8)
    specs: list[WorkSpec] = []

    def factory(spec: WorkSpec) -> FakeExecutor:
        specs.append(spec)
        return FakeExecutor(spec)

    copy = with_executor(stage, factory)
    fake = copy.make_executor()

    assert isinstance(fake, FakeExecutor) and fake.batch_size() == 8
    assert specs == [stage.work_spec()] and copy == stage
    assert isinstance(stage.make_executor(), ThreadExecutor)  # made, never started


def test_the_fake_checks_its_options() -> None:
    spec = spindle.thread(str).work_spec()
    hold: Hold = lambda items: None  # noqa: E731
    assert FakeExecutor(spec, hold=hold, capacity=5).capacity == 5
    with pytest.raises(ValueError, match="capacity"):
        FakeExecutor(spec, capacity=0)
    with pytest.raises(ValueError, match="batch_size"):
        FakeExecutor(spec, batch_size=0)
