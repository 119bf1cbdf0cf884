"""A Bloom filter of the keys a run has claimed, to skip most database lookups.

A journal that was empty when the run began can hold only keys this run claimed. Before
claiming a chunk of keys, the journal must know which of them it has seen: usually none
(a duplicate input is rare). A lookup in SQLite costs a few microseconds per key, more
than a tiny job; this filter (rbloom, in compiled code) answers "certainly not seen" for
almost every new key in a fraction of that, and only the keys it cannot rule out go to
the database.

It holds bits, not keys: about 2.4 bytes per key at a false-positive rate of 1 in 10,000,
so that most chunks of 256 keys need no query at all, and a run of ten million items
costs about 36 MB, not gigabytes of Python objects. A Bloom filter cannot grow, so when
the last one is full a twice larger one is added, and a lookup checks each of them.
Bit positions come from ``hash()``, which is stable within one process: the filter lives
as long as the journal object and is never stored.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import compress
from operator import or_

from rbloom import Bloom

__all__ = ["KeyFilter"]

_FALSE_POSITIVES = 1e-4


class KeyFilter:
    """Which keys may have been added: a key left out is certainly new."""

    def __init__(self, first_capacity: int = 1 << 20) -> None:
        self._capacity = first_capacity
        self._filters: list[Bloom] = [Bloom(first_capacity, _FALSE_POSITIVES)]
        self._room = first_capacity

    def add(self, keys: Sequence[Hashable]) -> None:
        """Remember ``keys`` (adding one twice is harmless)."""
        if len(keys) > self._room:
            self._capacity *= 2
            self._filters.append(Bloom(self._capacity, _FALSE_POSITIVES))
            self._room = self._capacity
        self._filters[-1].update(keys)
        self._room -= len(keys)

    def maybe(self, keys: Sequence[Hashable]) -> list[int]:
        """Indexes of the keys that may have been added (the others certainly were not)."""
        hits = list(map(self._filters[0].__contains__, keys))
        for f in self._filters[1:]:
            hits = list(map(or_, hits, map(f.__contains__, keys)))
        return list(compress(range(len(keys)), hits))
