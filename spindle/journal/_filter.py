"""Which keys a run has claimed, nearly exactly, so that most keys need no exact check.

Before claiming a chunk of keys, the journal must know which of them this run has seen:
usually none (a repeated input is rare). An exact answer means a set of every key in
memory, or an index of them on disk that costs more to keep than a tiny job. This
filter answers "certainly not seen" for nearly every new key, with no Python code per
key; only the keys it cannot rule out get the exact check.

Default keys (16-byte digests) go into hash tables, in numpy, looked up and filled a
whole chunk of keys at a time. A table is cut into buckets of 16 slots of 32 bits, one
64-byte cache line each: a key's home bucket comes from the high bits of its first 8
bytes and its slot holds their low 32 bits; a full bucket overflows into the next.
A key costs about one cache miss per table; the Bloom filter used before cost 23 at
the same error rate, one per bit set, and was most of the journal's time in a run of
tiny jobs. Two keys look alike only if both parts match: a lookup compares about 12
slots of 32 bits, so about three false positives per billion lookups and table, each
costing an exact check. A table is full at three
quarters of its slots; then one twice its size is added beside it (no rebuild, so no
peak of two copies): about 6 bytes a key, 59 MB for ten million keys in three tables.

Other keys (``--key FIELD`` text) go into Bloom filters (rbloom, 1 in 10,000,000 false
positives, 4.2 bytes a key); a full one gets a twice larger one beside it. Bit
positions come from ``hash()``, stable within one process: the filter lives as long as
the journal object and is never stored.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import compress
from operator import or_

import numpy as np
import numpy.typing as npt
from rbloom import Bloom

from ._log import digest_blob

__all__ = ["KeyFilter"]

_FALSE_POSITIVES = 1e-4
_DIGEST = 16  # bytes of a default key
#: A table is full at this share of its slots in use.
_MAX_LOAD = 0.75
#: Slots per bucket: 16 fingerprints of 4 bytes, one 64-byte cache line.
_WAYS = 16

_U64 = npt.NDArray[np.uint64]
_U32 = npt.NDArray[np.uint32]
_Flags = npt.NDArray[np.bool_]
_Index = npt.NDArray[np.intp]


def _fingerprints(keys: Sequence[Hashable], blob: bytes | None = None) -> _U64 | None:
    """The first 8 bytes of each key, with the lowest bit set (0 marks an empty slot);
    None unless every key is a 16-byte digest (each one checked: bytes keys of other
    lengths could add up to the same blob, and then no fingerprint would be its key's).
    ``blob``: the keys end to end, checked so already (:func:`digest_blob`)."""
    if blob is None:
        blob = digest_blob(keys)  # type: ignore[arg-type]
    if blob is None:
        return None
    fps: _U64 = np.frombuffer(blob, dtype="<u8")[::2] | np.uint64(1)
    return fps


# A row of 16 booleans is 16 bytes: read as two integers, it has a true one when either
# is non-zero, and multiplying each by 0x0101...01 adds its bytes up into the top byte.
# Reductions along an axis of 16 cost numpy about ten times more.
_BYTES = np.uint64(0x0101010101010101)
_TOP = np.uint64(56)
_LOW = np.uint64(0xFFFFFFFF)


def _any_per_row(flags: _Flags) -> _Flags:
    halves = flags.view(np.uint64)
    anywhere: _Flags = (halves[:, 0] | halves[:, 1]) != 0
    return anywhere


def _count_per_row(flags: _Flags) -> _U64:
    counts = (flags.view(np.uint64) * _BYTES) >> _TOP
    total: _U64 = counts[:, 0] + counts[:, 1]
    return total


class _Table:
    """One fixed-size table: ``2**bits`` buckets of 16 slots of 32 bits, one 64-byte
    cache line each. A fingerprint's home bucket comes from its high bits and the slot
    holds its low 32 bits, so two keys look alike only if both parts match; a full
    bucket overflows into the next one (linear probing by bucket).

    Rows are gathered with ``take`` and slots written with ``put`` on flat indexes of
    the platform's integer type: numpy's fancy indexing (``rows[buckets]``) cost five
    times more here, most of a claim's time in the filter."""

    def __init__(self, bits: int) -> None:
        self.rows = np.zeros((1 << bits, _WAYS), dtype=np.uint32)
        self.slots: _U32 = self.rows.reshape(-1)  # the same memory, one slot per index
        self.shift = np.uint64(64 - bits)
        self.mask = (1 << bits) - 1
        self.capacity = int(_MAX_LOAD * _WAYS * (1 << bits))
        self.size = 0  # may count a key twice in one chunk as two: it only fills sooner

    def _split(self, fps: _U64) -> tuple[_Index, _U32]:
        values: _U32 = (fps & _LOW).astype(np.uint32)  # odd: never 0, the empty slot
        buckets: _Index = (fps >> self.shift).astype(np.intp)
        return buckets, values

    def contains(self, fps: _U64) -> _Flags:
        """A boolean per fingerprint: in the table."""
        found = np.zeros(len(fps), dtype=bool)
        buckets, values = self._split(fps)
        which = np.arange(len(fps))
        while True:
            rows = self.rows.take(buckets, axis=0)
            hit = _any_per_row(rows == values[:, None])
            found[which[hit]] = True
            going = ~hit & rows[:, -1].astype(bool)  # a full bucket: look in the next
            if not going.any():
                return found
            which, values = which[going], values[going]
            buckets = (buckets[going] + 1) & self.mask

    def add(self, fps: _U64) -> _Flags:
        """Put ``fps`` in; a boolean per fingerprint: it was there already (or came
        earlier in ``fps``)."""
        table, slots = self.rows, self.slots
        found = np.zeros(len(fps), dtype=bool)
        buckets, values = self._split(fps)
        which = np.arange(len(fps))
        while len(values):
            rows = table.take(buckets, axis=0)
            there = _any_per_row(rows == values[:, None])
            found[which[there]] = True
            # Slots fill from the left, so the first free one is the count of taken ones.
            taken = _count_per_row(rows != 0).astype(np.intp)
            room = (taken < _WAYS) & ~there
            mine = values[room]
            at = buckets[room] * _WAYS + taken[room]
            slots.put(at, mine)
            won = slots.take(at) == mine  # two keys wrote one slot: one stands
            self.size += int(np.count_nonzero(won))
            settled = there
            settled[np.flatnonzero(room)[won]] = True
            full = ~room & ~there
            going = ~settled
            which, values = which[going], values[going]
            buckets = np.where(full, (buckets + 1) & self.mask, buckets)[going]
        return found


class _Tables:
    """The fingerprints of a run's digests: tables never rebuilt; when the newest is
    three quarters full, one twice its size is added, and a lookup checks them all."""

    def __init__(self, first_capacity: int) -> None:
        self._tables = [_Table(_bits_for(first_capacity))]
        self.size = 0

    def contains(self, fps: _U64) -> _Flags:
        found = self._tables[0].contains(fps)
        for table in self._tables[1:]:
            found |= table.contains(fps)
        return found

    def add(self, fps: _U64) -> _Flags:
        """Put ``fps`` in; a boolean per fingerprint: it was there (or came earlier)."""
        newest = self._tables[-1]
        if newest.size + len(fps) > newest.capacity:
            newest = _Table(_bits_for(max(2 * newest.capacity, len(fps))))
            self._tables.append(newest)
        if len(self._tables) == 1:
            found = newest.add(fps)
        else:
            found = np.zeros(len(fps), dtype=bool)
            for table in self._tables[:-1]:
                found |= table.contains(fps)
            new = ~found
            found[new] = newest.add(fps[new])
        self.size = sum(t.size for t in self._tables)
        return found


def _bits_for(capacity: int) -> int:
    bits = 6
    while _MAX_LOAD * _WAYS * (1 << bits) < capacity:
        bits += 1
    return bits


class KeyFilter:
    """Which keys may have been added: a key left out is certainly new."""

    def __init__(
        self, first_capacity: int = 1 << 20, *, false_positives: float = _FALSE_POSITIVES
    ) -> None:
        self._capacity = first_capacity
        self._rate = false_positives
        self._table = _Tables(first_capacity)
        self._filters: list[Bloom] = []
        self._room = 0

    def add(self, keys: Sequence[Hashable]) -> None:
        """Remember ``keys`` (adding one twice is harmless)."""
        fps = _fingerprints(keys)
        if fps is not None:
            self._table.add(fps)
            return
        if len(keys) > self._room:
            if self._filters:
                self._capacity *= 2
            self._filters.append(Bloom(self._capacity, self._rate))
            self._room = self._capacity
        self._filters[-1].update(keys)
        self._room -= len(keys)

    def maybe_add(self, keys: Sequence[Hashable], blob: bytes | None = None) -> list[int]:
        """:meth:`maybe`, then :meth:`add` (for digests, one pass over the table); the
        indexes also name every key that repeats an earlier one of ``keys``, so that no
        index at all means distinct keys, none added before. ``blob``: the keys end to
        end, if the caller has checked that they are digests (:func:`digest_blob`)."""
        fps = _fingerprints(keys, blob)
        if fps is None or self._filters:
            maybe = self.maybe(keys, blob)
            self.add(keys)
            if len(set(keys)) != len(keys):
                first: dict[Hashable, int] = {}
                for i, k in enumerate(keys):
                    first.setdefault(k, i)
                repeats = [i for i, k in enumerate(keys) if first[k] != i]
                maybe = sorted(set(maybe).union(repeats))
            return maybe
        found = self._table.add(fps)
        ordered = np.sort(fps)
        if (ordered[1:] == ordered[:-1]).any():  # a fingerprint twice in the chunk
            _, firsts = np.unique(fps, return_index=True)
            again = np.ones(len(fps), dtype=bool)
            again[firsts] = False
            found |= again
        indexes: list[int] = np.flatnonzero(found).tolist()
        return indexes

    def maybe(self, keys: Sequence[Hashable], blob: bytes | None = None) -> list[int]:
        """Indexes of the keys that may have been added (the others certainly were not).
        ``blob``: as for :meth:`maybe_add`."""
        fps = _fingerprints(keys, blob)
        hits: list[bool] | None = None
        if fps is not None:
            if self._table.size:
                hits = self._table.contains(fps).tolist()
        elif self._table.size:  # digests among other keys: look those up
            at = [i for i, k in enumerate(keys) if type(k) is bytes and len(k) == _DIGEST]
            hits = [False] * len(keys)
            digests = _fingerprints([keys[i] for i in at])
            if digests is not None and at:
                for i, hit in zip(at, self._table.contains(digests).tolist(), strict=True):
                    hits[i] = hit
        for f in self._filters:
            in_bloom = list(map(f.__contains__, keys))
            hits = in_bloom if hits is None else list(map(or_, hits, in_bloom))
        return [] if hits is None else list(compress(range(len(keys)), hits))
