"""A Bloom filter of the keys a run has claimed, so that most keys need no exact check.

Before claiming a chunk of keys, the journal must know which of them this run has seen:
usually none (a repeated input is rare). An exact answer means a set of every key in
memory, or an index of them on disk that costs more to keep than a tiny job; this filter
(rbloom, in compiled code) answers "certainly not seen" for almost every new key, and
only the keys it cannot rule out get the exact check.

It holds bits, not keys: about 4.2 bytes per key at the journal's false-positive rate of
1 in 10,000,000, so a run of ten million items costs about 63 MB (with the doubling
below), not gigabytes of Python objects. A Bloom filter cannot grow, so when the last
one is full a twice larger one is added, and a lookup checks each of them. Bit positions
come from ``hash()``, which is stable within one process: the filter lives as long as
the journal object and is never stored.
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

    def __init__(
        self, first_capacity: int = 1 << 20, *, false_positives: float = _FALSE_POSITIVES
    ) -> None:
        self._capacity = first_capacity
        self._rate = false_positives
        self._filters: list[Bloom] = [Bloom(first_capacity, false_positives)]
        self._room = first_capacity

    def add(self, keys: Sequence[Hashable]) -> None:
        """Remember ``keys`` (adding one twice is harmless)."""
        if len(keys) > self._room:
            self._capacity *= 2
            self._filters.append(Bloom(self._capacity, self._rate))
            self._room = self._capacity
        self._filters[-1].update(keys)
        self._room -= len(keys)

    def maybe(self, keys: Sequence[Hashable]) -> list[int]:
        """Indexes of the keys that may have been added (the others certainly were not)."""
        hits = list(map(self._filters[0].__contains__, keys))
        for f in self._filters[1:]:
            hits = list(map(or_, hits, map(f.__contains__, keys)))
        return list(compress(range(len(keys)), hits))
