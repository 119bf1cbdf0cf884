"""A stream run: an acknowledging source, through a pipeline, into a sink, acknowledged
only once the results are durable.

::

    source thread (the engine's)          the engine                 the caller's thread
    ────────────────────────────          ──────────                 ───────────────────
    wait for room: unacked < bound
    AckSource.read(n) ──TaggedChunk(bodies, messages)──▶ stages ──(messages, results)──┐
          ▲                                                                            │
          │                                       Sink.write(...); Sink.commit()  ◀────┘
          │                                                 │ durable
          └── room: unacked -= n ◀── AckSource.ack(tokens) ◀┘

The rule: a message is acknowledged only after its result, or its failure record, is
durable in the sink (its ``write`` and ``commit`` returned). Acknowledgements go a chunk
at a time, one call to the broker per commit. A crash anywhere leaves every message whose
result was not committed unacknowledged, so the broker gives it again (at least once); a
keyed sink writes each key once however often it comes (exactly once per key).

Bounded: the source thread reads only while fewer than ``max_unacked`` messages (by
default the pipeline's :meth:`~spindle._core.pipeline.Pipeline.bound`) are read and not
yet acknowledged, and never more than the room left. A slow sink therefore slows the
intake: its results wait in the pipeline's bounded channels, then the source waits for
acknowledgements.

Stopping: :meth:`StreamRun.stop_intake` (the first Ctrl-C) makes the source thread read
nothing more; what is in flight finishes (within the run's grace), is written, committed
and acknowledged; what was read and dropped unstarted stays unacknowledged and comes
again. A drain run (``AckSource.drain``) ends by itself once the source is empty and every
result is acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .._core.histogram import LatencyHistogram
from .._core.pipeline import Pipeline, Results, Service
from .._core.source import ChunkedSource, TaggedChunk
from ._base import AckSource, Message, Sink, message_inputs

__all__ = ["StreamRun"]

#: Messages asked of the source per read, at most.
READ_SIZE = 1024
#: Seconds a read waits for a first message before the source thread looks again
#: whether the run is stopping (a broker's blocking read is cut to this).
READ_WAIT = 0.5


class StreamRun:
    """Drive an :class:`AckSource` through a pipeline into a :class:`Sink`.

    ``max_unacked``: the most messages read and not yet acknowledged at any moment
    (default: the pipeline's bound). ``read_size``: messages per read, at most.

    From a program::

        with RedisStreamSource(...) as source, PostgresSink(...) as sink:
            StreamRun(source, sink).run(spindle.Pipeline([spindle.cpu(score)], on_error="yield"))

    The command line uses :meth:`start` and writes the chunks itself (see
    ``spindle/cli/_driver.py``). The source and the sink stay open: their owner closes them.
    """

    def __init__(
        self,
        source: AckSource,
        sink: Sink,
        *,
        max_unacked: int | None = None,
        read_size: int = READ_SIZE,
        wait: float = READ_WAIT,
    ) -> None:
        if max_unacked is not None and max_unacked < 1:
            raise ValueError(f"max_unacked must be at least 1, not {max_unacked}")
        self.source = source
        self.sink = sink
        self.max_unacked = max_unacked
        self.read_size = read_size
        self.wait = wait
        self.limit = max_unacked or 0  # set by start()
        self._cond = threading.Condition(threading.RLock())
        self._stopping = False
        #: Messages read from the source, redelivered among them, and acknowledged.
        self.read = 0
        self.redelivered = 0
        self.acked = 0
        #: Read and not acknowledged yet; the most there ever were.
        self.unacked = 0
        self.peak_unacked = 0
        #: Times the source thread waited for acknowledgements (the sink is the slowest).
        self.intake_waits = 0
        #: Chunks written and committed, and how long each write and commit took.
        self.commits = 0
        self.commit_latency = LatencyHistogram()

    # -- the run -------------------------------------------------------------------

    def start(
        self, pipeline: Pipeline, *, services: Sequence[Service] = ()
    ) -> tuple[Results, Sink]:
        """Start the pipeline on the source; return its results (``with_inputs``: the
        messages beside the results) and the sink to write them to, which acknowledges
        each chunk once it is committed. Call :meth:`stop_intake` before closing the
        results early."""
        self.limit = self.max_unacked or pipeline.bound()
        self.source.set_bound(self.limit)
        results = pipeline.run(ChunkedSource(self._chunks()), with_inputs=True, services=services)
        return results, AckingSink(self)

    def run(self, pipeline: Pipeline, *, services: Sequence[Service] = ()) -> None:
        """Run until the source ends (a drain source once empty; otherwise until
        :meth:`stop_intake` is called from another thread), every result written,
        committed and acknowledged."""
        results, sink = self.start(pipeline, services=services)
        try:
            for messages, values in results.chunks_with_inputs():
                sink.write(messages, values)
        finally:
            self.stop_intake()
            results.close()

    def stop_intake(self) -> None:
        """Read nothing more from the source. Safe from any thread, and from a signal
        handler: the condition's lock is re-entrant, so a handler that interrupts this
        thread while it holds the lock takes it again rather than waiting for itself."""
        self._stopping = True
        self.source.stop_reading()
        with self._cond:
            self._cond.notify_all()

    def _chunks(self) -> Iterator[TaggedChunk]:
        """The source thread: messages, a read at a time, within the bound."""
        source = self.source
        cond = self._cond
        while True:
            with cond:
                while self.unacked >= self.limit and not self._stopping:
                    self.intake_waits += 1
                    cond.wait()
                if self._stopping:
                    return
                room = self.limit - self.unacked
            messages = source.read(min(self.read_size, room), self.wait)
            if not messages:
                if source.drain or self._stopping:
                    return
                continue
            n = len(messages)
            with cond:
                self.unacked += n
                self.peak_unacked = max(self.peak_unacked, self.unacked)
            self.read += n
            self.redelivered += sum(m.redelivered for m in messages)
            if self._stopping:  # read meanwhile: left unacknowledged, given again later
                return
            yield TaggedChunk([m.body for m in messages], messages)

    def _acknowledge(self, messages: list[Message]) -> None:
        self.source.ack([m.token for m in messages])
        n = len(messages)
        with self._cond:
            self.unacked -= n
            self.acked += n
            self._cond.notify()

    # -- what it shows -------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """The source's and the sink's figures, one row each (a run's ``connectors``
        section): plain data, safe to take from any thread."""
        source: dict[str, Any] = {
            "role": "source",
            "name": self.source.name or type(self.source).__name__,
            "read": self.read,
            "redelivered": self.redelivered,
            "acked": self.acked,
            "unacked": self.unacked,
            "peak_unacked": self.peak_unacked,
            "max_unacked": self.limit,
            "intake_waits": self.intake_waits,
            "lag": self.source.lag(),
        }
        source.update(self.source.stats())
        latency = self.commit_latency.snapshot()
        sink: dict[str, Any] = {
            "role": "sink",
            "name": self.sink.name or type(self.sink).__name__,
            "written": self.sink.written,
            "failed": self.sink.failed,
            "commits": self.commits,
            "commit_latency": latency,
        }
        sink.update(self.sink.stats())
        return [source, sink]

    def lines(self) -> list[str]:
        """The figures as lines for a person (the end of a command's report)."""
        src, snk = self.rows()
        lag = "" if src["lag"] is None else f", lag {src['lag']:,}"
        lat = snk["commit_latency"]
        commit = (
            f", commit p50 {lat['p50'] * 1e3:.1f} ms, p99 {lat['p99'] * 1e3:.1f} ms"
            if lat["count"]
            else ""
        )
        return [
            f"spindle: source {src['name']}: {src['read']:,} read ({src['redelivered']:,} "
            f"redelivered), {src['acked']:,} acknowledged, {src['unacked']:,} left "
            f"unacknowledged{lag}",
            f"spindle: sink {snk['name']}: {snk['written']:,} results, {snk['failed']:,} "
            f"failures, {snk['commits']:,} commits{commit}",
        ]


class AckingSink(Sink):
    """The sink of a stream run: writes a chunk to the real sink, commits it, then
    acknowledges its messages. A write or commit that raises acknowledges nothing of
    its chunk."""

    def __init__(self, run: StreamRun) -> None:
        self.run = run
        self.name = run.sink.name

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        run = self.run
        sink = run.sink
        started = time.perf_counter()
        sink.write(inputs if sink.takes_messages else message_inputs(inputs), values)
        self.written, self.failed = sink.written, sink.failed
        sink.commit()
        run.commit_latency.record(time.perf_counter() - started)
        run.commits += 1
        run._acknowledge(inputs)

    def close(self) -> None:
        """Close the real sink (the command line's driver closes the sink it was given)."""
        sink = self.run.sink
        try:
            sink.close()
        finally:
            self.written, self.failed = sink.written, sink.failed
