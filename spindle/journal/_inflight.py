"""The keys a run has claimed and not recorded yet, kept for what an ordered run does.

A run claims keys a chunk at a time, and an ordered run records them in the same order.
So the keys are kept as the chunks they were claimed in, with a position in the first:
claiming appends a chunk, and recording the next keys in order is a slice and an
identity test (the recorder hands back the very key objects claimed), with no hashing.
A set of the keys cost three hash operations per item (add, check, remove), about 7%
of a journaled run of tiny jobs.

Anything else (a record out of order, as in an unordered run or after a stop dropped
items; a lookup of one key) turns the chunks into a set, once, and the set serves from
then on. Both forms answer the same questions; only their costs differ.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, islice
from operator import is_

from ._base import Key

__all__ = ["InFlight"]


class InFlight:
    """A collection of distinct keys, cheapest when removed in the order they came."""

    __slots__ = ("_chunks", "_count", "_front", "_set")

    def __init__(self) -> None:
        self._chunks: deque[Sequence[Key]] = deque()
        self._front = 0  # keys of _chunks[0] already taken
        self._count = 0
        self._set: set[Key] | None = None  # once out of order: the keys as a set

    def __len__(self) -> int:
        return self._count if self._set is None else len(self._set)

    def __iter__(self) -> Iterator[Key]:
        if self._set is not None:
            return iter(self._set)
        if not self._chunks:
            return iter(())
        first = islice(self._chunks[0], self._front, None)
        return chain(first, *islice(self._chunks, 1, None))

    def add_new(self, keys: Sequence[Key]) -> None:
        """Add ``keys``, which the caller knows are distinct and not here already."""
        if not keys:
            return
        if self._set is not None:
            self._set.update(keys)
            return
        self._chunks.append(keys)
        self._count += len(keys)

    def take_in_order(self, keys: Sequence[Key]) -> bool:
        """Remove ``keys`` if they are the next ones in claim order (the same objects);
        otherwise change nothing and return False."""
        n = len(keys)
        if self._set is not None or n > self._count or not n:
            return False
        chunks, at, front = self._chunks, 0, self._front
        # Check first, then take: a mismatch halfway must leave everything as it was.
        for chunk in chunks:
            stop = min(len(chunk), front + n - at)
            # Slices, not islice: islice walks the ``front`` keys it skips, one by one.
            if not all(map(is_, chunk[front:stop], keys[at : at + stop - front])):
                return False
            at += stop - front
            front = 0
            if at == n:
                break
        at = 0
        while at < n:
            chunk = chunks[0]
            stop = min(len(chunk), self._front + n - at)
            at += stop - self._front
            if stop == len(chunk):
                chunks.popleft()
                self._front = 0
            else:
                self._front = stop
        self._count -= n
        return True

    def as_set(self) -> set[Key]:
        """The keys as a set, from now on kept as one (out of order from here)."""
        if self._set is None:
            self._set = set(self)
            self._chunks.clear()
            self._front = self._count = 0
        return self._set

    def intersection(self, keys: Iterable[Key]) -> set[Key]:
        """Which of ``keys`` are here, without giving up the order."""
        wanted = set(keys)
        if self._set is not None:
            return wanted & self._set
        return {k for k in self if k in wanted}
