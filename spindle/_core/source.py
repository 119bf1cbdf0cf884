"""The source of a run: the caller's iterable read into the first channel.

A thread of the run (``spindle-source``) reads the caller's iterable, which may block (a
file, a socket, standard input), and puts items into the first stage's channel; a full
channel makes it wait, which is how backpressure reaches the input. How it reads:

- an in-memory collection (list, range, tuple, dict, set) never blocks: read in chunks
  of 1,024 at C speed;
- any other iterator might block between two items: each item is put as soon as it is
  read, so that nothing waits in the source thread for a chunk to fill;
- a :class:`ChunkedSource` (a producer that already reads in chunks: a file a block of
  lines at a time, the journal's claims) is put a list at a time.

A tagged channel (a run ``with_inputs``) takes, beside each chunk, the inputs its items
came from: ``None`` when the items are their own inputs. A :class:`TaggedChunk` of a
chunked source names its inputs itself: a broker's messages, whose bodies are the items
the jobs get and which come back beside their results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol

from .._failure import Failure
from .channel import Channel

__all__ = ["ChunkedSource", "TaggedChunk", "feed", "feed_chunks"]


class Progress(Protocol):
    """Where the source thread counts the items it has drawn from the input."""

    drawn: int


#: Iterators that never block, read in chunks by the source thread.
_EMPTY: tuple[Iterable[Any], ...] = ([], (), range(0), "", b"", {}, set(), frozenset(), {}.values())
_IN_MEMORY = tuple(type(iter(x)) for x in _EMPTY)
_SOURCE_CHUNK = 1024


def feed(channel: Channel[Any], it: Iterator[Any], ex: Progress) -> int:
    """Feed the first channel from the caller's iterator; return how many items.

    An iterator over an in-memory collection cannot block, so it is read in chunks at
    C speed. Any other iterator (a generator, a file, a socket) might block between
    two items, so each item is put as soon as it is read: nothing waits in the source
    thread for a chunk to fill.
    """
    n = 0
    if isinstance(it, _IN_MEMORY):
        put = channel.put_blocking
        tagged = channel.tagged
        while chunk := list(islice(it, _SOURCE_CHUNK)):
            put(chunk, _source_tags(chunk) if tagged else None)
            n += len(chunk)
            ex.drawn = n
        return n
    append = channel._chunks.append
    # A tagged channel takes each chunk's tags first: None, the item is its own input,
    # except a Failure from the source (a malformed line), which keeps its input.
    tag = channel._tags.append if channel.tagged else None
    for n, item in enumerate(it, 1):
        # Inline fast path of put_blocking([item]) (see spindle._core.channel). A stop
        # closes the channel, which makes its room_limit 0: then wait_room_blocking
        # raises ChannelClosed and no item more is read (the one in hand is dropped).
        if channel.total_in - channel.total_out >= channel.room_limit:
            ex.drawn = n - 1
            channel.wait_room_blocking()
        if tag is not None:
            tag([item.item] if type(item) is Failure else None)
        append([item])
        channel.total_in += 1
        if channel._getters:
            channel._wake(channel._getters)
    return n


def _source_tags(chunk: list[Any]) -> list[Any] | None:
    """The inputs of a chunk of the source: None (each item is its own), unless it holds
    a Failure (a malformed line), whose input is the item it failed on. A block of
    lines that parsed whole says so (``clean``): it is not scanned again."""
    if getattr(chunk, "clean", False) or Failure not in map(type, chunk):
        return None
    return [x.item if type(x) is Failure else x for x in chunk]


class ChunkedSource:
    """An input given as lists of items, each list put into the pipeline whole.

    For a producer that already reads its input in chunks (the journal claims keys a
    chunk at a time): the source thread then moves a list per step instead of an item.
    """

    __slots__ = ("chunks",)

    def __init__(self, chunks: Iterable[list[Any] | TaggedChunk]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[Any]:
        for chunk in self.chunks:
            yield from chunk


class TaggedChunk:
    """A chunk of a :class:`ChunkedSource` whose items have inputs of their own:
    ``values`` are what the jobs get, ``tags[i]`` what ``values[i]`` came from (a
    message, whose body is the value); a run ``with_inputs`` gives the tags beside the
    results. The values go into the pipeline as a plain list, the tags beside them."""

    __slots__ = ("tags", "values")

    def __init__(self, values: list[Any], tags: list[Any]) -> None:
        self.values = values
        self.tags = tags

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)


def feed_chunks(channel: Channel[Any], source: ChunkedSource, ex: Progress, tagged: bool) -> int:
    n = 0
    put = channel.put_blocking
    for chunk in source.chunks:
        if not chunk:
            continue
        if isinstance(chunk, TaggedChunk):
            put(chunk.values, chunk.tags if tagged else None)
        else:
            put(chunk, _source_tags(chunk) if tagged else None)
        n += len(chunk)
        ex.drawn = n
        # Held no longer than the engine holds its items: a source that waits long for
        # the next chunk (an executor's queue) would keep the last one alive meanwhile.
        del chunk
    return n
