"""Bounded FIFO channels between the parts of a pipeline.

A channel joins two parties, each of which is either a coroutine on the pipeline's
event loop or a plain thread (the thread that reads the user's iterable, or the
caller's thread iterating over results)::

    source thread ──put_blocking──▶ [channel] ──get──▶ stage (event loop)
    stage        ──put──────────▶ [channel] ──get──▶ next stage
    last stage   ──put──────────▶ [channel] ──get_blocking──▶ caller thread

Items move in lists (chunks) so that one wake-up moves many items; a put never
blocks while there is room, a get never blocks while there is an item. The capacity is a bound,
never "unbounded": a full channel makes its producer wait (backpressure), and that is
how a slow stage slows the source down.

A tagged channel carries, beside each chunk, the list of its items' tags (a run with
``with_inputs`` tags every value with the input it came from), or ``None`` when the
items are their own tags (the source's chunks). Tags travel as lists in step with the
values: no tuple per item is made, taken apart or collected.

Thread-safety relies on the GIL making ``deque.append``/``popleft`` atomic, plus the
usual register-then-recheck protocol under ``_lock`` for sleeping: a party that is
about to sleep first registers its waiter and then looks again, and the other party
always changes the data first and then looks for waiters, so a wake-up is never
missed. The fast paths (room to put, items to get) take no lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Waiter:
    """One sleeping party: a future on an event loop, or a lock a thread blocks on."""

    __slots__ = ("_fut", "_lock", "_loop", "_thread_id", "queued")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop
        self.queued = True  # still in its channel's waiter queue
        if loop is not None:
            self._fut: asyncio.Future[None] | None = loop.create_future()
            self._thread_id = threading.get_ident()
            self._lock: threading.Lock | None = None
        else:
            self._fut = None
            self._lock = threading.Lock()
            self._lock.acquire()

    def wake(self) -> None:
        if self._fut is not None:
            assert self._loop is not None
            if threading.get_ident() == self._thread_id:
                if not self._fut.done():
                    self._fut.set_result(None)
            else:
                try:
                    self._loop.call_soon_threadsafe(self._set)
                except RuntimeError:  # the loop is closed: nobody is left to wake
                    pass
        else:
            assert self._lock is not None
            try:
                self._lock.release()
            except RuntimeError:  # already woken
                pass

    def _set(self) -> None:
        assert self._fut is not None
        if not self._fut.done():
            self._fut.set_result(None)

    async def wait(self) -> None:
        assert self._fut is not None
        await self._fut

    def wait_blocking(self, timeout: float | None) -> None:
        assert self._lock is not None
        self._lock.acquire(timeout=-1 if timeout is None else timeout)


class ChannelClosed(Exception):
    """Raised by a put on a channel that was closed (the consumer went away)."""


class Channel(Generic[T]):
    """A bounded FIFO of items with async and blocking ends.

    Items are stored as the lists (chunks) they were put in, so moving a batch costs
    the same whatever its length. ``capacity`` bounds the number of items held; a put
    waits until its list fits, except that a list longer than the capacity is
    accepted once the channel is empty (a batch is never split, and the bound is
    ``max(capacity, largest list put)``).

    One producer thread and one consumer thread at a time (any number of coroutines
    on one loop count as one thread): the size is ``total_in - total_out``, each
    counter written by one side only.

    With ``tagged``, each put gives the chunk's tags too (``None``: the items are their
    own tags), and the tagged gets return them: :meth:`get_tagged` and
    :meth:`get_tagged_chunks_blocking`. A producer appends the tags before the chunk,
    and a consumer looks only at the chunks, so it never finds a chunk without its tags.
    """

    def __init__(self, capacity: int, name: str = "", *, tagged: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        #: What the source thread's inline put compares the size with: the capacity,
        #: and 0 once closed, so that the same test that finds the channel full finds
        #: it closed, at no cost per item (see ``spindle._core.source.feed``).
        self.room_limit = capacity
        self.name = name
        self._chunks: deque[list[T]] = deque()
        self.tagged = tagged
        self._tags: deque[list[Any] | None] = deque()  # in step with _chunks, if tagged
        self._pos = 0  # items of the head chunk already taken
        self._lock = threading.Lock()
        self._getters: deque[_Waiter] = deque()
        self._putters: deque[_Waiter] = deque()
        self._closed = False
        self._error: BaseException | None = None
        self.total_in = 0
        self.total_out = 0
        self._coalesce_loop: asyncio.AbstractEventLoop | None = None
        self._wake_scheduled = False

    def __len__(self) -> int:
        return self.total_in - self.total_out

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Channel {self.name!r}: {len(self)}/{self.capacity} queued{state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side -------------------------------------------------------------

    def _fits(self, n: int) -> bool:
        size = self.total_in - self.total_out
        return size + n <= self.capacity or size == 0

    def _deferred_wake(self) -> None:
        self._wake_scheduled = False
        if self._getters:
            self._wake(self._getters)

    def _has_room(self) -> bool:
        return self.total_in - self.total_out < self.capacity

    def coalesce_wakeups(self, loop: asyncio.AbstractEventLoop) -> None:
        """Producers run on ``loop`` and the consumer is a thread: wake that thread at
        most once per loop iteration, however many small chunks are put meanwhile
        (a cross-thread wake-up costs more than moving many items)."""
        self._coalesce_loop = loop

    def _push(self, items: list[T], tags: list[Any] | None) -> None:
        if self.tagged:
            self._tags.append(tags)  # first: a consumer that sees the chunk finds its tags
        self._chunks.append(items)
        self.total_in += len(items)
        if self._getters:
            loop = self._coalesce_loop
            if loop is None:
                self._wake(self._getters)
            elif not self._wake_scheduled:
                self._wake_scheduled = True
                loop.call_soon(self._deferred_wake)
        if self._putters and self._has_room():
            self._wake(self._putters)  # room is left for another waiting producer

    async def put(self, items: list[T], tags: list[Any] | None = None) -> None:
        """Add ``items`` (with their ``tags``, if tagged), waiting for room; raises
        :class:`ChannelClosed` if closed."""
        if not items:
            return
        while True:
            if self._closed:
                raise ChannelClosed(self.name)
            if self._fits(len(items)):
                self._push(items, tags)
                return
            loop = asyncio.get_running_loop()
            waiter = self._register(self._putters, loop, lambda: self._fits(len(items)))
            if waiter is not None:
                try:
                    await waiter.wait()
                finally:
                    self._unregister(self._putters, waiter)

    def put_blocking(self, items: list[T], tags: list[Any] | None = None) -> None:
        """Thread-side put; raises :class:`ChannelClosed` if the channel closes."""
        if not items:
            return
        while True:
            if self._closed:
                raise ChannelClosed(self.name)
            if self._fits(len(items)):
                self._push(items, tags)
                return
            waiter = self._register(self._putters, None, lambda: self._fits(len(items)))
            if waiter is not None:
                try:
                    waiter.wait_blocking(None)
                finally:
                    self._unregister(self._putters, waiter)

    def close(self, error: BaseException | None = None) -> None:
        """No more items will come. Getters drain what is left, then see the end.

        ``error``, if given, is raised by getters after the last item (this is how a
        failure travels to the caller in order). Closing twice keeps the first error.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self.room_limit = 0
                self._error = error
            waiters = list(self._getters) + list(self._putters)
            self._getters.clear()
            self._putters.clear()
            for w in waiters:
                w.queued = False
        for w in waiters:
            w.wake()

    def discard(self) -> int:
        """Drop every queued item and close; return how many were dropped.

        Called on the consumer's side (the loop) when a run stops taking input: the
        dropped items never started, so nothing of them is lost but their place.
        """
        n = -self._pos
        self._pos = 0
        while self._chunks:
            n += len(self._chunks.popleft())
            if self.tagged:
                self._tags.popleft()
        self.total_out += n
        self.close()
        return n

    # -- consumer side -------------------------------------------------------------

    def _take(self, max_n: int) -> tuple[list[T], list[Any] | None]:
        # The head chunk is read through an offset (``_pos``), so taking one item at a
        # time from a long chunk costs O(1), not a copy of the rest of it.
        chunks = self._chunks
        first = chunks[0]
        pos = self._pos
        left = len(first) - pos
        tagged = self.tagged
        tags: list[Any] | None = None
        if left > max_n:
            stop = pos + max_n
            out = first[pos:stop]
            self._pos = stop
            if tagged and (head := self._tags[0]) is not None:
                tags = head[pos:stop]
        else:
            out = first[pos:] if pos else first
            chunks.popleft()
            self._pos = 0
            if tagged and (head := self._tags.popleft()) is not None:
                tags = head[pos:] if pos else head
            if chunks and len(out) + len(chunks[0]) <= max_n:
                if out is first:
                    out = list(first)  # a fresh list: the producer's chunks stay untouched
                if tagged:
                    out, tags = self._merge_tagged(out, tags, max_n)
                else:
                    while chunks and len(out) + len(chunks[0]) <= max_n:
                        out.extend(chunks.popleft())
        self.total_out += len(out)
        self._after_take()
        return out, tags

    def _merge_tagged(
        self, out: list[T], tags: list[Any] | None, max_n: int
    ) -> tuple[list[T], list[Any] | None]:
        """Extend ``out`` (a fresh list) and its ``tags`` with the next whole chunks and
        theirs, up to ``max_n`` items. The tags stay ``None`` while every chunk's are."""
        chunks, tag_chunks = self._chunks, self._tags
        if tags is not None:
            tags = list(tags)  # a fresh list too
        while chunks and len(out) + len(chunks[0]) <= max_n:
            more = chunks.popleft()
            more_tags = tag_chunks.popleft()
            if tags is None and more_tags is not None:
                tags = list(out)  # the items so far were their own tags
            if tags is not None:
                tags.extend(more if more_tags is None else more_tags)
            out.extend(more)
        return out, tags

    def _take_chunks(self) -> list[list[T]]:
        chunks = self._chunks
        out = [chunks.popleft() for _ in range(len(chunks))]
        if self._pos:
            out[0] = out[0][self._pos :]
            self._pos = 0
        self.total_out += sum(map(len, out))
        self._after_take()
        return out

    def _take_tagged_chunks(self) -> list[tuple[list[T], list[Any]]]:
        chunks, tag_chunks = self._chunks, self._tags
        pos = self._pos
        out: list[tuple[list[T], list[Any]]] = []
        n = 0
        for _ in range(len(chunks)):
            chunk = chunks.popleft()
            tags = tag_chunks.popleft()
            if pos:
                chunk = chunk[pos:]
                tags = None if tags is None else tags[pos:]
                pos = 0
            out.append((chunk, chunk if tags is None else tags))
            n += len(chunk)
        self._pos = 0
        self.total_out += n
        self._after_take()
        return out

    def _after_take(self) -> None:
        # A waiting producer is woken only once the channel is half empty (a low-water
        # mark): waking it for every chunk taken would make the two sides trade the
        # GIL and a cross-thread wake-up per chunk instead of per half channel.
        if self._putters and self.total_in - self.total_out <= self.capacity // 2:
            self._wake(self._putters)
        if self._chunks and self._getters:
            self._wake(self._getters)  # pass the turn on: more items than this getter took

    async def get(self, max_n: int) -> list[T]:
        """Up to ``max_n`` items, waiting for at least one; ``[]`` once closed and empty.

        Raises the error given to :meth:`close`, if any, once the items are drained.
        """
        return (await self.get_tagged(max_n))[0]

    async def get_tagged(self, max_n: int | Callable[[], int]) -> tuple[list[T], list[Any] | None]:
        """:meth:`get`, with the items' tags: ``None`` if the items are their own tags
        (or the channel is not tagged). ``max_n`` may be a function, asked at the
        moment the items are taken (when what is queued is known)."""
        loop: asyncio.AbstractEventLoop | None = None
        while True:
            if self._chunks:
                return self._take(max_n if isinstance(max_n, int) else max_n())
            if self._closed:
                return self._end(), None
            if loop is None:
                loop = asyncio.get_running_loop()
            await self._wait(loop)

    async def get_chunks(self) -> list[list[T]]:
        """Every chunk queued (at least one), or ``[]`` once closed and empty."""
        loop = asyncio.get_running_loop()
        while True:
            if self._chunks:
                return self._take_chunks()
            if self._closed:
                return self._end()
            await self._wait(loop)

    def get_chunks_blocking(self) -> list[list[T]]:
        """Thread-side :meth:`get_chunks`."""
        while True:
            if self._chunks:
                return self._take_chunks()
            if self._closed:
                return self._end()
            self._wait_blocking()

    def get_tagged_chunks_blocking(self) -> list[tuple[list[T], list[Any]]]:
        """Thread-side: every chunk queued (at least one) with its tags, as
        ``(chunk, tags)``; ``[]`` once closed and empty."""
        while True:
            if self._chunks:
                return self._take_tagged_chunks()
            if self._closed:
                return self._end()
            self._wait_blocking()

    async def get_tagged_chunks(self) -> list[tuple[list[T], list[Any]]]:
        """:meth:`get_tagged_chunks_blocking`, on the event loop."""
        loop = asyncio.get_running_loop()
        while True:
            if self._chunks:
                return self._take_tagged_chunks()
            if self._closed:
                return self._end()
            await self._wait(loop)

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep on ``loop`` until a chunk is queued or the channel closes."""
        waiter = self._register(self._getters, loop, lambda: bool(self._chunks))
        if waiter is not None:
            try:
                await waiter.wait()
            finally:
                self._unregister(self._getters, waiter)

    def _wait_blocking(self) -> None:
        """Thread-side :meth:`_wait`."""
        waiter = self._register(self._getters, None, lambda: bool(self._chunks))
        if waiter is not None:
            try:
                waiter.wait_blocking(None)
            finally:
                self._unregister(self._getters, waiter)

    def _end(self) -> list[Any]:
        if self._error is not None:
            raise self._error
        return []

    def wait_room_blocking(self) -> None:
        """Thread-side: wait until the channel has room; raises if it gets closed."""
        while not self._has_room() and not self._closed:
            waiter = self._register(self._putters, None, self._has_room)
            if waiter is not None:
                try:
                    waiter.wait_blocking(None)
                finally:
                    self._unregister(self._putters, waiter)
        if self._closed:
            raise ChannelClosed(self.name)

    # -- sleeping and waking -------------------------------------------------------

    def _register(
        self, queue: deque[_Waiter], loop: asyncio.AbstractEventLoop | None, ready: Any
    ) -> _Waiter | None:
        """Register a waiter, unless the condition became true meanwhile (then None).

        The waiter is queued *before* the condition is looked at again: the other
        side changes the data first and looks for waiters second, without the lock,
        so one of the two always sees the other (checking first and queueing second
        would let a wake-up fall in between and be lost).
        """
        waiter = _Waiter(loop)
        with self._lock:
            if self._closed:
                return None
            queue.append(waiter)
            if ready():
                if waiter.queued:
                    waiter.queued = False
                    queue.remove(waiter)
                return None
            return waiter

    def _unregister(self, queue: deque[_Waiter], waiter: _Waiter) -> None:
        if not waiter.queued:  # the waker already took it out
            return
        with self._lock:
            if waiter.queued:
                waiter.queued = False
                queue.remove(waiter)

    def _wake(self, queue: deque[_Waiter]) -> None:
        with self._lock:
            waiter = queue.popleft() if queue else None
            if waiter is not None:
                waiter.queued = False
        if waiter is not None:
            waiter.wake()
