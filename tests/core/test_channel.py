"""The bounded channel: order, bounds, closing, and both thread and async ends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from spindle._core.channel import Channel, ChannelClosed


def test_fifo_across_chunks_and_partial_gets() -> None:
    async def main() -> list[int]:
        ch: Channel[int] = Channel(100)
        await ch.put([1, 2, 3])
        await ch.put([4])
        await ch.put([5, 6])
        got = await ch.get(2)
        got += await ch.get(3)
        ch.close()
        got += await ch.get(10)
        assert await ch.get(10) == []
        return got

    assert asyncio.run(main()) == [1, 2, 3, 4, 5, 6]


def test_put_waits_for_room_and_never_exceeds_capacity() -> None:
    async def main() -> int:
        ch: Channel[int] = Channel(4)
        high = 0

        async def produce() -> None:
            for i in range(100):
                await ch.put([i])
            ch.close()

        async def consume() -> list[int]:
            nonlocal high
            out: list[int] = []
            while items := await ch.get(3):
                high = max(high, len(ch) + len(items))
                out += items
            return out

        task = asyncio.create_task(produce())
        out = await consume()
        await task
        assert out == list(range(100))
        return high

    assert asyncio.run(main()) <= 4


def test_close_with_error_raises_after_the_items() -> None:
    async def main() -> None:
        ch: Channel[int] = Channel(10)
        await ch.put([1, 2])
        ch.close(ValueError("boom"))
        assert await ch.get(10) == [1, 2]
        with pytest.raises(ValueError, match="boom"):
            await ch.get(10)
        with pytest.raises(ChannelClosed):
            await ch.put([3])

    asyncio.run(main())


def test_thread_producer_async_consumer_loses_nothing() -> None:
    ch: Channel[int] = Channel(8)
    n = 20_000

    def produce() -> None:
        for i in range(n):
            ch.put_blocking([i])
        ch.close()

    async def consume() -> list[int]:
        out: list[int] = []
        while items := await ch.get(5):
            out += items
        return out

    t = threading.Thread(target=produce)
    t.start()
    out = asyncio.run(consume())
    t.join()
    assert out == list(range(n))


def test_async_producer_thread_consumer_loses_nothing() -> None:
    ch: Channel[int] = Channel(16)
    n = 20_000
    got: list[int] = []

    def consume() -> None:
        while chunks := ch.get_chunks_blocking():
            for c in chunks:
                got.extend(c)

    async def produce() -> None:
        for i in range(0, n, 3):
            await ch.put(list(range(i, min(i + 3, n))))
        ch.close()

    t = threading.Thread(target=consume)
    t.start()
    asyncio.run(produce())
    t.join()
    assert got == list(range(n))


def test_closing_releases_a_blocked_thread_producer() -> None:
    ch: Channel[int] = Channel(1)
    ch.put_blocking([0])
    errors: list[BaseException] = []
    started = threading.Event()

    def produce() -> None:
        started.set()
        try:
            ch.put_blocking([1])
        except ChannelClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    started.wait()
    ch.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert len(errors) == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Channel(0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1, 2, 7])
def test_no_lost_wakeup_under_constant_thread_switches(capacity: int) -> None:
    """A thread producer and a loop consumer racing on a tiny channel never stall.

    Switching threads after almost every bytecode makes the window between
    "look at the data" and "queue the waiter" as likely to be hit as it can be.
    """
    import sys

    ch: Channel[int] = Channel(capacity)
    n = 30_000
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def produce() -> None:
            try:
                for i in range(n):
                    ch.wait_room_blocking() if len(ch) >= capacity else None
                    ch.put_blocking([i])
            except ChannelClosed:  # the consumer gave up: end, do not hang the suite
                return
            ch.close()

        async def consume() -> int:
            total = 0
            async with asyncio.timeout(50):
                while items := await ch.get(3):
                    total += len(items)
            return total

        t = threading.Thread(target=produce)
        t.start()
        try:
            got = asyncio.run(consume())
        finally:
            ch.close()
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert got == n


def test_a_tagged_channel_keeps_tags_in_step_through_cuts_and_merges() -> None:
    async def main() -> list[tuple[list[int], list[Any] | None]]:
        ch: Channel[int] = Channel(100, tagged=True)
        await ch.put([1, 2, 3])  # their own tags
        await ch.put([4, 5], ["d", "e"])
        await ch.put([6])
        await ch.put([7, 8], ["g", "h"])
        await ch.put([9])
        got = [await ch.get_tagged(2)]  # a cut of a self-tagged chunk
        got.append(await ch.get_tagged(3))  # its rest, merged with an explicit chunk
        got.append(await ch.get_tagged(1))  # a whole self-tagged chunk
        got.append(await ch.get_tagged(1))  # a cut of an explicit chunk
        got.append(await ch.get_tagged(10))  # its rest, merged with a self-tagged one
        ch.close()
        got.append(await ch.get_tagged(10))
        return got

    assert asyncio.run(main()) == [
        ([1, 2], None),
        ([3, 4, 5], [3, "d", "e"]),
        ([6], None),
        ([7], ["g"]),
        ([8, 9], ["h", 9]),
        ([], None),
    ]


def test_tagged_chunks_blocking_pairs_each_chunk_with_its_tags() -> None:
    async def fill(ch: Channel[int]) -> list[int]:
        await ch.put([1, 2, 3], ["a", "b", "c"])
        await ch.put([4])
        head = await ch.get(1)  # the rest of the first chunk is read from an offset
        await ch.put([5, 6], ["e", "f"])
        return head

    ch: Channel[int] = Channel(100, tagged=True)
    assert asyncio.run(fill(ch)) == [1]
    assert ch.get_tagged_chunks_blocking() == [
        ([2, 3], ["b", "c"]),
        ([4], [4]),
        ([5, 6], ["e", "f"]),
    ]
    ch.close()
    assert ch.get_tagged_chunks_blocking() == []


def test_discarding_a_tagged_channel_leaves_no_tags_behind() -> None:
    ch: Channel[int] = Channel(100, tagged=True)
    ch.put_blocking([1, 2], ["a", "b"])
    ch.put_blocking([3])
    assert ch.discard() == 3
    assert not ch._tags
