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

Brokers acknowledge. An :class:`AckSource` (a Redis stream read by a consumer group; in
memory, :class:`~spindle.connectors.MemoryAckSource`) gives :class:`Message` objects: the
job gets each message's ``body``, and the message comes back beside its result. A stream
run (:class:`~spindle.connectors.StreamRun`) acknowledges a chunk's messages only once the
sink's :meth:`Sink.write` and :meth:`Sink.commit` of that chunk have returned::

    AckSource.read() ──messages──▶ pipeline (jobs get the bodies) ──(messages, results)──┐
         ▲                                                                               │
         └──────── AckSource.ack(tokens) ◀── Sink.write() + Sink.commit() returned ◀─────┘
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from itertools import islice
from typing import Any

from .._failure import Failure, short_repr

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


class Message:
    """One message of an acknowledging source.

    ``body`` is what the job gets (a :class:`~spindle.Failure` for a message that could
    not be read, which then fails alone); ``key`` names its record in a keyed sink (the
    message's id, or a field of its body); ``token`` is what :meth:`AckSource.ack` takes
    back; ``redelivered`` says the broker gave it before (to this consumer or another)
    without an acknowledgement.
    """

    __slots__ = ("body", "key", "redelivered", "token")

    def __init__(self, body: Any, key: str, token: Any, redelivered: bool = False) -> None:
        self.body = body
        self.key = key
        self.token = token
        self.redelivered = redelivered

    def __repr__(self) -> str:
        again = ", redelivered" if self.redelivered else ""
        return f"<Message {self.key!r}{again}: {short_repr(self.body, 60)}>"


def message_inputs(messages: list[Message]) -> list[Any]:
    """What a record names as the input of each message: its body, or for a message that
    could not be read (its body a Failure) the raw text it came as."""
    return [m.body.item if type(m.body) is Failure else m.body for m in messages]


class AckSource(Source):
    """A source whose messages are acknowledged once their results are durable.

    At least once: a message read and never acknowledged (the run crashed, or stopped
    before its result was written) is given again, to this consumer or another, marked
    ``redelivered``. :meth:`read` is called from one thread (the run's source thread),
    :meth:`ack` from another (the one that writes the sink): an implementation makes
    the two safe together.

    ``drain``: the source ends once it is empty (nothing new, nothing of its own
    pending, nothing to take over from others); otherwise it waits for more, until the
    run is stopped.
    """

    #: What messages and reports call the source (a URL without its password).
    name: str = ""
    #: End once empty, rather than wait for more.
    drain: bool = False

    @abstractmethod
    def read(self, max_n: int, wait: float) -> list[Message]:
        """Up to ``max_n`` messages, waiting at most ``wait`` seconds for the first one:
        an empty list when none came. With :attr:`drain`, an empty list means the
        source is empty: the end of the stream."""

    @abstractmethod
    def ack(self, tokens: list[Any]) -> None:
        """Acknowledge the messages of ``tokens`` (in one call to the broker where it
        can): they are done and are never given again. Thread-safe with :meth:`read`."""

    def stop_reading(self) -> None:
        """The run takes no more messages (a Ctrl-C): a :meth:`read` that waits past its
        ``wait`` (a drain waiting for the run's own acknowledgements, which a stopped run
        may never give) returns an empty list soon. Called from any thread, a signal
        handler included: it only sets a flag (or hands a wake-up to a loop thread)."""

    def set_bound(self, max_unacked: int) -> None:
        """Called once before the first :meth:`read` with the most messages the run will
        hold unacknowledged, for a broker that pushes messages ahead of reads (RabbitMQ's
        prefetch) or fetches them in batches: it never needs to hold more."""

    def lag(self) -> int | None:
        """Messages in the source not yet read by this consumer's group, when known."""
        return None

    def stats(self) -> dict[str, Any]:
        """The source's own figures (claimed from others, deleted...), plain data."""
        return {}

    def __next__(self) -> Any:
        raise TypeError(
            f"{type(self).__name__} acknowledges its messages: read it with "
            "spindle.connectors.StreamRun, not by iterating"
        )


class Sink(ABC):
    """Where a run's results go, a chunk at a time, each result beside its input."""

    #: Results written so far.
    written: int = 0
    #: Failures written so far.
    failed: int = 0
    #: What messages and reports call the sink (a path, a URL without its password).
    name: str = ""
    #: Whether :meth:`write` takes a stream run's :class:`Message` objects as its inputs
    #: (a keyed sink reads each record's key from them) rather than their bodies.
    takes_messages: bool = False

    @abstractmethod
    def write(self, inputs: list[Any], values: list[Any]) -> None:
        """Write one chunk: ``values[i]`` is the result of ``inputs[i]``, or a
        :class:`~spindle.Failure` for an item that failed."""

    def commit(self) -> None:
        """Make every chunk written so far durable: a stream run acknowledges a chunk's
        messages once this returns. Nothing to do for a sink whose :meth:`write`
        commits each chunk itself (a database's transaction).

        Raises :class:`~spindle.connectors.OutputError` when that fails."""
        return None

    def stats(self) -> dict[str, Any]:
        """The sink's own figures (commits, their latency...), plain data."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Make what was written durable (as far as the sink promises) and release it.

        Raises :class:`~spindle.connectors.OutputError` when that fails."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
