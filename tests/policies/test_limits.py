"""AdaptiveLimit: AIMD sizing, first-come-first-served admission, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from spindle.policies.limits import AdaptiveLimit

pytestmark = pytest.mark.timeout(10)


async def _queued(limit: AdaptiveLimit, count: int) -> None:
    """Let tasks just created run up to their wait (a bounded number of loop turns)."""
    for _ in range(10):
        if limit.waiting >= count:
            return
        await asyncio.sleep(0)
    assert limit.waiting >= count


def test_halves_and_grows_back_slowly() -> None:
    limit = AdaptiveLimit(8)
    limit.decrease()
    assert limit.limit == 4
    limit.decrease()
    limit.decrease()
    limit.decrease()
    assert limit.limit == 1  # never below one
    limit.increase()
    assert limit.limit == 2  # one success at limit 1 earns one slot
    limit.increase()
    assert limit.limit == 2
    limit.increase()
    assert limit.limit == 3  # two more at limit 2
    for _ in range(2):
        limit.increase()
    assert limit.limit == 3
    limit.increase()
    assert limit.limit == 4  # three more at limit 3
    for _ in range(100):
        limit.increase()
    assert limit.limit == 8  # never above the ceiling


def test_a_decrease_from_an_odd_limit_rounds_down() -> None:
    limit = AdaptiveLimit(5)
    limit.decrease()
    assert limit.limit == 2
    limit.increase()
    limit.decrease()  # at 2.5: half of the whole slots
    assert limit.limit == 1


@pytest.mark.asyncio
async def test_admits_in_order_and_survives_cancellation() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with limit:
            order.append(name)

    cancelled = asyncio.create_task(waiter("cancelled"))
    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await _queued(limit, 3)
    cancelled.cancel()
    limit.release()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert limit.in_flight == 0
    assert cancelled.cancelled()


@pytest.mark.asyncio
async def test_a_slot_handed_to_a_task_being_cancelled_goes_to_the_next() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await limit.acquire()
        got.append(name)

    unlucky = asyncio.create_task(waiter("unlucky"))
    next_one = asyncio.create_task(waiter("next"))
    await _queued(limit, 2)
    limit.release()  # hands the slot to "unlucky"...
    unlucky.cancel()  # ...which is cancelled before it runs again
    await next_one
    assert got == ["next"]
    assert unlucky.cancelled()
    assert (limit.in_flight, limit.waiting) == (1, 0)


@pytest.mark.asyncio
async def test_try_acquire_never_overtakes_a_waiter() -> None:
    limit = AdaptiveLimit(1)
    assert limit.try_acquire()
    assert not limit.try_acquire()
    task = asyncio.create_task(limit.acquire())
    await _queued(limit, 1)
    limit.release()  # the slot goes to the waiter, not to whoever asks next
    assert not limit.try_acquire()
    await task
    assert limit.in_flight == 1


@pytest.mark.asyncio
async def test_after_a_decrease_nobody_is_admitted_until_holders_drain() -> None:
    limit = AdaptiveLimit(4)
    for _ in range(4):
        assert limit.try_acquire()
    limit.decrease()  # limit 2 with 4 in flight
    task = asyncio.create_task(limit.acquire())
    await _queued(limit, 1)
    limit.release()
    limit.release()
    assert (limit.in_flight, limit.waiting) == (2, 1)  # still at the limit: no one admitted
    limit.release()
    await task
    assert (limit.in_flight, limit.waiting) == (2, 0)


@pytest.mark.asyncio
async def test_an_increase_admits_a_waiter_at_once() -> None:
    limit = AdaptiveLimit(2)
    limit.decrease()
    assert limit.try_acquire()
    task = asyncio.create_task(limit.acquire())
    await _queued(limit, 1)
    limit.increase()  # limit 1 -> 2: room for the waiter without any release
    await task
    assert (limit.limit, limit.in_flight) == (2, 2)


def test_repr_shows_the_state() -> None:
    limit = AdaptiveLimit(8)
    limit.decrease()
    assert limit.try_acquire()
    assert repr(limit) == "<AdaptiveLimit 4 of 8: 1 in flight, 0 waiting>"
