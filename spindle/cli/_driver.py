"""The one driver of every command that runs a pipeline, journaled or not.

::

    source ──▶ target.start(pipeline, source) ──▶ results ──(inputs, values)──▶ sink
                 plain: a file's blocks of lines             plain: RecordWriter, or a
                                                               keyed sink (PostgreSQL)
                 journaled: claimed in the journal           journaled: JournalSink
                 stream: a broker's messages, read           stream: writes, commits, then
                   within the bound of unacknowledged          acknowledges the messages
    signals: 1st Ctrl-C/SIGTERM stops intake and drains for --grace; 2nd stops at once
    then: the final report, the summary line, the target's own lines, the exit status

A *target* is what differs between a plain run, a journaled one and a stream run: how the
source is fed to the pipeline, which sink takes the results, and what is said and decided
at the end.
``spindle map``, ``spindle fetch`` and the commands to come build a pipeline, a source and
a target, and call :func:`drive`.

Exit statuses: 0 when every item succeeded, 1 when any failed, 2 when the run stopped on
an error of its own (an output that cannot be written, a broken journal), 130 after
Ctrl-C and 143 after SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any, Protocol

import click

from .._core.pipeline import Pipeline, Results, Service
from .._core.snapshot import RunSnapshot
from .._core.source import ChunkedSource
from .._errors import SpindleError
from ..connectors import AckSource, Sink, Source, StreamRun
from ..journal import JournaledRun, JournalSink
from ._observers import Observers, Summary

__all__ = ["JournalTarget", "PlainTarget", "Signals", "StreamTarget", "Target", "drive"]


class Target(Protocol):
    """Where a command's results go, and what it says and decides at the end."""

    def remaining(self, total: int | None) -> int | None:
        """Of ``total`` inputs, how many this run will take (a progress bar's total)."""
        ...

    def start(
        self, pipeline: Pipeline, source: Source, *, total: int | None, services: Sequence[Service]
    ) -> tuple[Results, Sink]:
        """Run ``pipeline`` (``with_inputs``) over ``source``; the sink for its results."""
        ...

    def finish(self, results: Results, sink: Sink) -> tuple[list[str], bool]:
        """Once the run and the sink are closed: lines to print, and whether any item
        counts as failed (the exit status 1)."""
        ...

    def stop_intake(self) -> None:
        """Read no more input (Ctrl-C, or the run ends early): a target that reads its
        source itself stops it here. Safe from a signal handler."""
        ...

    def sections(self) -> dict[str, Any]:
        """Sections of its own to add to the run's snapshot (a stream's ``connectors``)."""
        ...


class PlainTarget:
    """A run without a journal: every item of the source runs, results go to ``sink``."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def remaining(self, total: int | None) -> int | None:
        return total

    def start(
        self, pipeline: Pipeline, source: Source, *, total: int | None, services: Sequence[Service]
    ) -> tuple[Results, Sink]:
        feed: Iterable[Any] = source
        if source.chunkable():
            feed = ChunkedSource(source.chunks())  # a file: a block of lines at a time
        results = pipeline.run(feed, with_inputs=True, total=total, services=services)
        return results, self.sink

    def finish(self, results: Results, sink: Sink) -> tuple[list[str], bool]:
        return [], sink.failed > 0

    def stop_intake(self) -> None:
        return None

    def sections(self) -> dict[str, Any]:
        return {}


class JournalTarget:
    """A journaled run: only the items the journal lets run, results recorded in it."""

    def __init__(self, run: JournaledRun) -> None:
        self.run = run

    def remaining(self, total: int | None) -> int | None:
        return self.run.remaining(total)

    def start(
        self, pipeline: Pipeline, source: Source, *, total: int | None, services: Sequence[Service]
    ) -> tuple[Results, Sink]:
        return self.run.start(pipeline, source, total=total, services=services)

    def finish(self, results: Results, sink: Sink) -> tuple[list[str], bool]:
        assert isinstance(sink, JournalSink)
        outcome = self.run.finish(results, sink)
        journal = self.run.journal
        after = journal.summary()
        line = (
            f"spindle: journal {journal.path}: {after.done:,} done, {after.failed:,} "
            f"failed, {after.pending:,} pending in all; this run skipped "
            f"{outcome.skipped_done:,} already recorded and {outcome.skipped_duplicate:,} "
            "duplicates"
        )
        return [line], after.failed > 0

    def stop_intake(self) -> None:
        return None

    def sections(self) -> dict[str, Any]:
        return {}


class StreamTarget:
    """A broker's messages (an :class:`~spindle.connectors.AckSource`) into a sink that
    commits, each chunk acknowledged once committed (:class:`~spindle.connectors.StreamRun`).
    The run's snapshot gains a ``connectors`` section: the source's and the sink's figures."""

    def __init__(self, stream: StreamRun) -> None:
        self.stream = stream

    def remaining(self, total: int | None) -> int | None:
        return None  # a stream has no end known ahead

    def start(
        self, pipeline: Pipeline, source: Source, *, total: int | None, services: Sequence[Service]
    ) -> tuple[Results, Sink]:
        assert isinstance(source, AckSource) and source is self.stream.source
        return self.stream.start(pipeline, services=[self._with_sections(s) for s in services])

    def _with_sections(self, service: Service) -> Service:
        def make(snapshot: Any) -> Any:
            return service(lambda: _merged(snapshot(), self.sections()))

        return make

    def finish(self, results: Results, sink: Sink) -> tuple[list[str], bool]:
        return self.stream.lines(), sink.failed > 0

    def stop_intake(self) -> None:
        self.stream.stop_intake()

    def sections(self) -> dict[str, Any]:
        return {"connectors": self.stream.rows()}


def _merged(snapshot: RunSnapshot, sections: dict[str, Any]) -> RunSnapshot:
    if not sections:
        return snapshot
    merged: dict[str, Any] = dict(snapshot)
    merged.update(sections)
    return merged  # type: ignore[return-value]


class Signals:
    """First SIGINT/SIGTERM: stop intake and drain; second: stop at once."""

    def __init__(
        self, results: Results, grace: float, also: Callable[[], None] | None = None
    ) -> None:
        self.results = results
        self.grace = grace
        self.also = also
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if self.also is not None:
            self.also()
        self.results.stop_intake(self.grace)
        echo_err(
            f"spindle: stopping: no new jobs; jobs in flight get {self.grace:g} s to finish "
            "(press Ctrl-C again to stop at once)"
        )

    @property
    def exit_status(self) -> int:
        return 143 if self.received == signal.SIGTERM else 130


def drive(
    pipeline: Pipeline,
    source: Source,
    target: Target,
    *,
    view: Observers,
    grace: float,
) -> int:
    """Run the pipeline over ``source`` into ``target``, show it, and return the exit
    status. The source stays open: the caller closes it."""
    summary = Summary(time.monotonic())
    results, sink = target.start(
        pipeline, source, total=target.remaining(source.total), services=view.services()
    )
    signals = Signals(results, grace, target.stop_intake)
    stopped_at_once = False
    error: SpindleError | None = None
    try:
        try:
            with signals:
                for inputs, values in results.chunks_with_inputs():
                    sink.write(inputs, values)
        finally:
            try:
                target.stop_intake()  # a source thread waiting for room must not wait on
                results.close()  # stops the workers and joins the source thread
            finally:
                sink.close()  # flushes, or records and makes the journal's last commit
    except KeyboardInterrupt:
        stopped_at_once = True
    except SpindleError as exc:
        error = exc
    summary.done = sink.written + sink.failed
    summary.failed = sink.failed
    summary.not_started = results.not_started
    view.finish(_merged(results.snapshot(), target.sections()))
    if error is not None:
        echo_err(f"spindle: {error}")
        return 2
    lines, failed = target.finish(results, sink)
    interrupted = stopped_at_once or signals.received is not None
    echo_err(summary.line(interrupted=interrupted))
    for line in lines:
        echo_err(line)
    if interrupted:
        return signals.exit_status if signals.received is not None else 130
    return 1 if failed else 0


def echo_err(text: str) -> None:
    """A line for the person at the terminal, on standard error."""
    click.echo(text, err=True)
