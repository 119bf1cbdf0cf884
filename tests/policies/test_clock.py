"""The clocks: the loop's, and the fake one whose sleeps never wait for real time."""

from __future__ import annotations

import asyncio

import pytest

from spindle.policies.clock import Clock, FakeClock, SystemClock

pytestmark = pytest.mark.timeout(10)


@pytest.mark.asyncio
async def test_sleepers_wake_in_deadline_order_at_their_deadlines() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    await asyncio.gather(
        sleeper("hour", 3600), sleeper("second", 1), sleeper("minute", 60), sleeper("also", 1)
    )
    # Same deadline: in the order they went to sleep.
    assert woke == [("second", 1.0), ("also", 1.0), ("minute", 60.0), ("hour", 3600.0)]
    assert clock.now() == 3600.0


@pytest.mark.asyncio
async def test_time_stands_still_while_anything_else_can_run() -> None:
    clock = FakeClock(start=100.0)
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            seen.append(clock.now())
            await asyncio.sleep(0)

    sleeper = asyncio.create_task(clock.sleep(5))
    await busy()
    assert seen == [100.0] * 200
    assert not sleeper.done()
    await sleeper
    assert clock.now() == 105.0


@pytest.mark.asyncio
async def test_a_timer_already_due_runs_before_the_clock_jumps() -> None:
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[float] = loop.create_future()

    def add_due_timer() -> None:
        # Runs in the loop turn where the clock first looks: no callback is ready then,
        # but this timer is due and runs next turn, so the loop is not idle.
        loop.call_at(loop.time() - 1.0, lambda: seen.set_result(clock.now()))

    loop.call_soon(add_due_timer)
    await clock.sleep(10)
    assert seen.done()
    assert seen.result() == 0.0
    assert clock.now() == 10.0


@pytest.mark.asyncio
async def test_a_cancelled_sleep_does_not_pull_the_time_forward() -> None:
    clock = FakeClock()
    long_sleep = asyncio.create_task(clock.sleep(1000))
    await asyncio.sleep(0)
    long_sleep.cancel()
    await clock.sleep(5)
    assert clock.now() == 5.0
    assert long_sleep.cancelled()
    assert clock.sleeping == 0
    assert clock.next_deadline is None


@pytest.mark.asyncio
async def test_without_autojump_only_advance_moves_the_time() -> None:
    clock = FakeClock(autojump=False)
    sleeper = asyncio.create_task(clock.sleep(5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sleeper.done()
    assert (clock.sleeping, clock.next_deadline) == (1, 5.0)
    clock.advance(3)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(2)
    await sleeper
    assert clock.now() == 5.0
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


@pytest.mark.asyncio
async def test_a_sleep_of_zero_or_less_lets_others_run_and_keeps_the_time() -> None:
    clock = FakeClock(start=7.0)
    ran = asyncio.Event()

    async def other() -> None:
        ran.set()

    task = asyncio.create_task(other())
    await clock.sleep(0)
    assert ran.is_set()
    await clock.sleep(-3)
    assert clock.now() == 7.0
    await task


def test_autojump_on_a_loop_that_hides_its_callbacks_says_what_to_do() -> None:
    uvloop = pytest.importorskip("uvloop")  # a loop that does not show its ready callbacks
    clock = FakeClock()
    loop = uvloop.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="autojump=False"):
            loop.run_until_complete(clock.sleep(1))
    finally:
        loop.close()


def test_a_fake_clock_without_autojump_runs_on_any_loop() -> None:
    clock = FakeClock(autojump=False)

    async def scenario() -> float:
        sleeper = asyncio.create_task(clock.sleep(2))
        await asyncio.sleep(0)
        clock.advance(2)
        await sleeper
        return clock.now()

    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) == 2.0
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_the_system_clock_is_the_loops_own() -> None:
    loop = asyncio.get_running_loop()
    clock: Clock = SystemClock()
    assert clock.now == loop.time  # the loop's bound method itself: no wrapper per call
    before = loop.time()
    await clock.sleep(0)
    assert before <= clock.now() <= loop.time()
