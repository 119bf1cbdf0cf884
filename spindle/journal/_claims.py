"""The source side of a journaled run: each input keyed, claimed, or skipped.

::

    input ──▶ chunk ──▶ key each item ──▶ journal.mark_started(keys) ──▶ the items to run
                        (a batch at a time;    │ done before, failed before,
                         a bad one fails)      └ repeated in the input: left out

The claimer runs in the pipeline's source thread, off the event loop and off the caller's
thread. It remembers the keys of the items in flight, so that each result finds its key
when it comes back (:meth:`Claimer.keys_of`).

How a result finds its key. In an ordered run (the default) results come back in the
order they were claimed, so the recorder takes keys from the front of the claimed chunks,
checking that each result's input is the very object claimed there (the pipeline hands
the input object itself back, it never copies it); an item dropped unstarted by a stop is
passed over and stays claimed. This costs nothing per item but a slice and an identity
test. In an unordered run the key is filed under ``id(input)`` in a dict, and popped when
that input's result comes back. Either holds only the items in flight, so it is bounded
like the pipeline. Two live inputs with the same ``id`` are the same object, hence the
same value and the same key, and the journal lets only one of them run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import compress, islice
from operator import is_
from typing import Any

from .._failure import Failure
from ..connectors import Source
from ._base import Journal, Key
from ._keys import KeyFunction, keys_for

__all__ = ["MAX_CHUNK", "Claimer", "growing_chunks"]


class Claimer:
    """The source side: keys each input and claims it in the journal, chunk by chunk.

    ``fallback`` keys the inputs ``key`` fails on (they fail, and are recorded under it);
    an input the reader could not parse (a ``Failure`` in the stream) is keyed by a
    digest of its text, which never equals the digest of a parsed value's canonical JSON.
    """

    def __init__(
        self,
        journal: Journal,
        key: KeyFunction,
        fallback: KeyFunction,
        *,
        ordered: bool = False,
    ) -> None:
        self.journal = journal
        self.key = key
        self.fallback = fallback
        self.ordered = ordered
        self.raw_key = keys_for(journal.key_scheme).value  # of inputs the reader could not parse
        #: id(input) -> key, for the items in flight (filled here, emptied by the caller)
        #: when results come in any order.
        self.keys: dict[int, Key] = {}
        #: The chunks claimed, as (inputs, keys), when results come in input order: the
        #: caller takes keys from the front (:meth:`keys_of`), with no lookup per item.
        self.claims: deque[tuple[list[Any], list[Key]]] = deque()
        self._front = 0  # items of ``claims[0]`` already taken

    def keys_of(self, inputs: list[Any]) -> list[Key]:
        """The keys of ``inputs``, results that came back (in claim order if ordered)."""
        if not self.ordered:
            return list(map(self.keys.pop, map(id, inputs)))
        found: list[Key] = []
        claims, at, n = self.claims, 0, len(inputs)
        while at < n:
            if not claims:
                raise RuntimeError(  # the pipeline broke its order: a bug, not bad input
                    f"spindle: a result came back for an input never claimed: {inputs[at]!r:.80}"
                )
            tags, keys = claims[0]
            start = self._front
            stop = min(len(tags), start + n - at)
            if all(map(is_, tags[start:stop], inputs[at : at + stop - start])):
                found += keys[start:stop]
                at += stop - start
            else:  # items dropped unstarted by a stop came in between: they stay claimed
                while start < len(tags) and tags[start] is not inputs[at]:
                    start += 1
                if start < len(tags):
                    found.append(keys[start])
                    at += 1
                    start += 1
                stop = start
            self._front = stop
            if stop == len(tags):
                claims.popleft()
                self._front = 0
        return found

    def claimed(self, items: Iterable[Any]) -> Iterator[list[Any]]:
        """The items to run, a chunk at a time: read, keyed, claimed; done ones and
        duplicates left out."""
        key, keys = self.key, self.keys
        many: Callable[[list[Any]], list[Key]] = getattr(key, "many", None) or (
            lambda batch: list(map(key, batch))
        )
        mark_started = self.journal.mark_started
        if isinstance(items, Source) and items.chunkable():
            # A file: read a block at a time, text lines with their bytes to digest.
            batches: Iterable[list[Any]] = items.chunks(keep_bytes=True)
        else:
            batches = growing_chunks(iter(items), 1)
        for batch in batches:
            if not batch:
                continue
            tags = batch
            try:  # the usual case: every input parsed and keyed, in one pass
                if not getattr(batch, "clean", False) and Failure in map(type, batch):
                    raise _SlowPath
                batch_keys = many(batch)
            except Exception:
                batch_keys, tags = self._keys_one_by_one(batch)
            run = mark_started(batch_keys)
            if not all(run):
                same = tags is batch
                batch = list(compress(batch, run))
                tags = batch if same else list(compress(tags, run))
                batch_keys = list(compress(batch_keys, run))
                if not batch:
                    continue
            if self.ordered:
                self.claims.append((tags, batch_keys))
            else:
                keys.update(zip(map(id, tags), batch_keys, strict=True))
            yield batch

    def _keys_one_by_one(self, batch: list[Any]) -> tuple[list[Key], list[Any]]:
        """Keys of a batch that holds malformed inputs or inputs the key function fails
        on; those become failures (replaced in ``batch``). Returns the keys and tags."""
        key, fallback = self.key, self.fallback
        batch_keys: list[Key] = []
        tags: list[Any] = []
        for i, x in enumerate(batch):
            if type(x) is Failure:  # a malformed line: recorded as a failure
                tags.append(x.item)
                batch_keys.append(self.raw_key(x.item))
                continue
            tags.append(x)
            try:
                batch_keys.append(key(x))
            except Exception as exc:
                batch_keys.append(fallback(x))
                batch[i] = Failure(x, type(exc).__name__, str(exc), "", 0, "input")
        return batch_keys, tags


#: The largest chunk of a plain iterable that is keyed and claimed at once.
MAX_CHUNK = 8192
#: A chunk read faster than this doubles the next one; slower than _SLOW halves it.
_FAST, _SLOW = 0.002, 0.05


def growing_chunks(it: Iterator[Any], first: int, most: int = MAX_CHUNK) -> Iterator[list[Any]]:
    """The items of ``it`` in lists: small while items come slowly, so that a slow
    source (a queue, a socket) starts work at once, and up to ``most`` while whole lists
    arrive within milliseconds (a list, a range, a fast generator), so that keying and
    claiming cost little per item. A list is read whole before it goes on: a source
    that slows down after a burst holds back the items of the list being read, until
    a slow list halves the next."""
    size = first
    clock = time.perf_counter
    while True:
        started = clock()
        chunk = list(islice(it, size))
        if not chunk:
            return
        took = clock() - started
        yield chunk
        if took < _FAST:
            size = min(size * 2, most)
        elif took > _SLOW:
            size = max(size // 2, 1)


class _SlowPath(Exception):
    """A batch needs keying one input at a time (see :meth:`Claimer.claimed`)."""
