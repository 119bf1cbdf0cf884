"""Which keys a run has claimed, nearly exactly, so that most keys need no exact check.

Before claiming a chunk of keys, the journal must know which of them this run has seen:
usually none (a repeated input is rare). An exact answer means a set of every key in
memory, or an index of them on disk that costs more to keep than a tiny job. This
filter answers "certainly not seen" for nearly every new key, with no Python code per
key; only the keys it cannot rule out get the exact check.

Default keys (16-byte digests) go into a hash table of their first 8 bytes, in numpy,
looked up and filled a whole chunk of keys at a time. The table is cut into buckets of
8 slots, one 64-byte cache line each; a key's home bucket comes from its high bits, and
a full bucket overflows into the next (about one key in seven at three quarters full).
A key costs about one cache miss; the Bloom filter used before cost 23 at the same
error rate, one per bit, and so most of the journal's time in a run of tiny jobs. A
false positive needs two keys of one run with the same 64 bits: for ten million keys,
about one chance in 400,000. The table is at most three quarters full and doubles
beyond (8 bytes a slot: 11 to 21 bytes a key, 134 MB for ten million keys).

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
#: The table is rebuilt twice as large beyond this share of its slots in use.
_MAX_LOAD = 0.75
#: Slots per bucket: 8 fingerprints of 8 bytes, one 64-byte cache line.
_WAYS = 8

_U64 = npt.NDArray[np.uint64]
_Flags = npt.NDArray[np.bool_]


def _fingerprints(keys: Sequence[Hashable]) -> _U64 | None:
    """The first 8 bytes of each key, with the lowest bit set (0 marks an empty slot);
    None unless every key is a 16-byte digest (each one checked: bytes keys of other
    lengths could add up to the same blob, and then no fingerprint would be its key's)."""
    blob = digest_blob(keys)  # type: ignore[arg-type]
    if blob is None:
        return None
    fps: _U64 = np.frombuffer(blob, dtype="<u8")[::2] | np.uint64(1)
    return fps


# A row of 8 booleans is 8 bytes: read as one integer, it is non-zero when any is true,
# and multiplying by 0x0101...01 adds its bytes up into the top byte. Reductions along
# an axis of 8 cost numpy about ten times more.
_BYTES = np.uint64(0x0101010101010101)
_TOP = np.uint64(56)


def _any_per_row(flags: _Flags) -> _Flags:
    anywhere: _Flags = flags.view(np.uint64).ravel() != 0
    return anywhere


def _count_per_row(flags: _Flags) -> _U64:
    counts: _U64 = (flags.view(np.uint64).ravel() * _BYTES) >> _TOP
    return counts


class _DigestTable:
    """A set of 64-bit fingerprints in buckets of one cache line (8 slots), probed for
    a whole chunk of keys at once: a key's home bucket comes from its high bits; a full
    bucket overflows into the next one (linear probing by bucket), which at three
    quarters full concerns about one key in seven."""

    def __init__(self, bits: int) -> None:
        self._empty(bits)

    def _empty(self, bits: int) -> None:
        self._bits = bits  # 2**bits buckets
        self._rows = np.zeros((1 << bits, _WAYS), dtype=np.uint64)
        self._mask = np.uint64((1 << bits) - 1)
        self._shift = np.uint64(64 - bits)
        self.size = 0  # may count a key twice in one chunk as two: it only grows sooner

    @property
    def slots(self) -> int:
        return self._rows.size

    def contains(self, fps: _U64) -> _Flags:
        """A boolean per fingerprint: in the table."""
        found = np.zeros(len(fps), dtype=bool)
        buckets = fps >> self._shift
        which = np.arange(len(fps))
        while True:
            rows = self._rows[buckets]
            hit = _any_per_row(rows == fps[:, None])
            found[which[hit]] = True
            going = ~hit & rows[:, -1].astype(bool)  # a full bucket: look in the next
            if not going.any():
                return found
            which, fps = which[going], fps[going]
            buckets = (buckets[going] + np.uint64(1)) & self._mask

    def add(self, fps: _U64) -> _Flags:
        """Put ``fps`` in; a boolean per fingerprint: it was there already (or came
        earlier in ``fps``)."""
        if self.size + len(fps) > _MAX_LOAD * self.slots:
            self._grow(self.size + len(fps))
        table = self._rows
        found = np.zeros(len(fps), dtype=bool)
        which = np.arange(len(fps))
        buckets = fps >> self._shift
        while len(fps):
            rows = table[buckets]
            there = _any_per_row(rows == fps[:, None])
            found[which[there]] = True
            # Slots fill from the left, so the first free one is the count of taken ones.
            taken = _count_per_row(rows != 0)
            room = (taken < _WAYS) & ~there
            at, mine, col = buckets[room], fps[room], taken[room]
            table[at, col] = mine
            won = table[at, col] == mine  # two keys wrote one slot: one stands
            self.size += int(np.count_nonzero(won))
            settled = there
            settled[np.flatnonzero(room)[won]] = True
            full = ~room & ~there
            going = ~settled
            which, fps = which[going], fps[going]
            buckets = np.where(full, (buckets + np.uint64(1)) & self._mask, buckets)[going]
        return found

    def _grow(self, needed: int) -> None:
        old = self._rows[self._rows != 0]
        bits = self._bits
        while needed > _MAX_LOAD * _WAYS * (1 << bits):
            bits += 1
        self._empty(bits)
        # Strided slices, not runs: the old table is in bucket order, and a run of it
        # would crowd a few new buckets and take a round per key of each.
        parts = -(-len(old) // (1 << 16))
        for part in range(parts):
            self.add(old[part::parts])


class KeyFilter:
    """Which keys may have been added: a key left out is certainly new."""

    def __init__(
        self, first_capacity: int = 1 << 20, *, false_positives: float = _FALSE_POSITIVES
    ) -> None:
        self._capacity = first_capacity
        self._rate = false_positives
        bits = 7
        while _MAX_LOAD * _WAYS * (1 << bits) < first_capacity:
            bits += 1
        self._table = _DigestTable(bits)
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

    def maybe_add(self, keys: Sequence[Hashable]) -> list[int]:
        """:meth:`maybe`, then :meth:`add`: for digests, one pass over the table."""
        fps = _fingerprints(keys)
        if fps is None or self._filters:
            maybe = self.maybe(keys)
            self.add(keys)
            return maybe
        found: list[int] = np.flatnonzero(self._table.add(fps)).tolist()
        return found

    def maybe(self, keys: Sequence[Hashable]) -> list[int]:
        """Indexes of the keys that may have been added (the others certainly were not)."""
        fps = _fingerprints(keys)
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
