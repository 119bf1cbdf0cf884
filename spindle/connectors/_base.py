"""The two interfaces of the connectors: where items come from, where results go.

::

    Source ──items (or chunks of them)──▶ pipeline ──(inputs, results) chunks──▶ Sink
                                                                                  │
                                          a journaled run: the journal's sink ────┘
                                          (records, then writes committed Outputs)

The driver of a run (the command line's, or :meth:`spindle.Pipeline.run` with a journal)
reads a :class:`Source` and hands every chunk of results, beside the inputs they came
from, to a :class:`Sink`. Each has an in-memory fake (:mod:`._memory`) for tests. A file
is a source (:class:`~spindle.connectors.Items`) and a sink
(:class:`~spindle.connectors.RecordWriter`); a journaled run's sink records each result
in the journal, which writes it through an :class:`~spindle.connectors.Output`, whose
commits the journal can bring back after a crash.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from itertools import islice
from typing import Any

#: Items per chunk of a source that has no natural blocks.
CHUNK = 1024


class Source(ABC, Iterator[Any]):
    """Items read lazily, one at a time or a chunk at a time.

    An item the source could not read (a malformed line) comes as a
    :class:`~spindle.Failure` in its place, so that it fails alone.
    """

    #: How many items there are, when known (a progress bar's total).
    total: int | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    @abstractmethod
    def __next__(self) -> Any: ...

    def chunkable(self) -> bool:
        """Whether :meth:`chunks` may be used: reading a chunk never waits for an item
        that has not arrived yet (a regular file does not; a pipe may)."""
        return False

    def chunks(self, *, keep_bytes: bool = False) -> Iterator[list[Any]]:
        """The items in lists. ``keep_bytes`` asks a source of text lines to keep the
        bytes each line was read as, for keying (see :class:`~spindle.connectors.Lines`)."""
        while chunk := list(islice(self, CHUNK)):
            yield chunk

    def count(self) -> int | None:
        """Count the items ahead of the run when that is cheap (sets :attr:`total`)."""
        return self.total

    def close(self) -> None:
        """Release the file or connection."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink(ABC):
    """Where a run's results go, a chunk at a time, each result beside its input."""

    #: Results written so far.
    written: int = 0
    #: Failures written so far.
    failed: int = 0

    @abstractmethod
    def write(self, inputs: list[Any], values: list[Any]) -> None:
        """Write one chunk: ``values[i]`` is the result of ``inputs[i]``, or a
        :class:`~spindle.Failure` for an item that failed."""

    @abstractmethod
    def close(self) -> None:
        """Make what was written durable (as far as the sink promises) and release it.

        Raises :class:`~spindle.connectors.OutputError` when that fails."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
