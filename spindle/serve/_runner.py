"""The served run: one long-lived run of the pipeline, fed with jobs as requests bring them.

::

    HTTP loop ──submit(jobs)──▶ SimpleQueue ──source thread──▶ run (ordered=False,
                                                               on_error="yield",
                                                               jobs as the items' tags)
    HTTP loop ◀── call_soon_threadsafe(finish, jobs, values) ◀── collector thread ◀┘

It is the shape of :class:`spindle.Executor` (``spindle/pool/_executor.py``), with jobs
instead of futures: the engine hands each job back beside its result, and the collector
thread passes whole chunks to the HTTP loop, one wake-up of the loop per chunk of
results, not per job.

The run starts in :meth:`JobRunner.start`, in the caller's thread and before the HTTP
loop or the journal's thread exist, so that worker processes are forked from a process
with no other thread; ``start`` returns once the workers are ready (a marker passes
through the stage first).

Stopping (:meth:`JobRunner.stop`): the run takes nothing more, jobs in flight get
``grace`` seconds, the run ends. Jobs that never ran (still queued, or dropped unstarted
by the stop) are handed to ``on_unrun``: the server answers them 503, or with a journal
leaves them for the next start.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .._core.pipeline import Pipeline, Results
from .._core.snapshot import RunSnapshot
from .._core.source import ChunkedSource, TaggedChunk
from .._failure import Failure
from ._jobs import RUNNING, Job

__all__ = ["JobRunner"]

_STOP: Any = object()
_READY: Any = object()
#: Most jobs the source thread puts into the run as one chunk.
_DRAW = 1024

Finish = Callable[[list[Any], list[Any]], None]


class JobRunner:
    """The run behind a server (see the module docstring).

    ``finish(jobs, values)`` is called in the collector thread for every chunk of
    results (the server hops it onto its loop); ``ended(error)`` once the run is over.
    """

    def __init__(self, pipeline: Pipeline, finish: Finish) -> None:
        self.pipeline = Pipeline(
            pipeline.stages, ordered=False, on_error="yield", buffer=pipeline.buffer
        )
        self._finish = finish
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._results: Results | None = None
        self._collector: threading.Thread | None = None
        self._stopped = threading.Event()
        self.error: BaseException | None = None
        self._ended = threading.Event()
        #: Called (in the collector thread) once the run is over, for whatever reason.
        self.on_end: Callable[[], None] | None = None
        #: Jobs submitted, and jobs the run has drawn in.
        self.submitted = 0
        self.drawn = 0

    def start(self) -> None:
        """Start the run and its workers; return once they are ready."""
        results = self.pipeline.run(ChunkedSource(self._draw()), with_inputs=True)
        chunks = results.chunks_with_inputs()
        self._results = results
        first = next(chunks)  # the readiness marker, through the stage
        self._collector = threading.Thread(
            target=self._collect, args=(chunks, [first]), name="spindle-serve-collector"
        )
        self._collector.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` for the run (any thread)."""
        self.submitted += len(jobs)
        self._queue.put(jobs)

    def _draw(self) -> Iterator[Any]:
        yield [Failure(_READY, "", "", "")]  # passes through the stage untouched
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = get()
            if batch is _STOP:
                return
            jobs: list[Job] = list(batch)
            while len(jobs) < _DRAW:
                try:
                    batch = get_nowait()
                except queue.Empty:
                    break
                if batch is _STOP:
                    self._queue.put(_STOP)
                    break
                jobs.extend(batch)
            for job in jobs:
                job.state = RUNNING
            self.drawn += len(jobs)
            yield TaggedChunk([job.item for job in jobs], jobs)
            del jobs, batch

    def _collect(self, chunks: Iterator[tuple[list[Any], list[Any]]], first: list[Any]) -> None:
        finish = self._finish
        try:
            inputs, values = first.pop()
            self._hand(inputs, values)
            del inputs, values
            for inputs, values in chunks:
                finish(inputs, values)
                del inputs, values
        except BaseException as exc:  # the run failed: the server fails what is left
            self.error = exc
        finally:
            self._ended.set()
            if self.on_end is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    self.on_end()

    def _hand(self, inputs: list[Any], values: list[Any]) -> None:
        jobs = [j for j in inputs if type(j) is Job]
        if jobs:
            self._finish(jobs, [v for j, v in zip(inputs, values, strict=True) if type(j) is Job])

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def hurry(self) -> None:
        """Cut the grace short: jobs in flight are cancelled now (a second Ctrl-C)."""
        if self._results is not None:
            self._results.stop_intake(0)

    def stop(self, grace: float) -> list[Job]:
        """Take nothing more; give jobs in flight ``grace`` seconds; wait for the run
        to end and close it. Returns the jobs that were submitted and never drawn into
        the run. Blocking: call it from a thread that is not the HTTP loop."""
        if self._stopped.is_set():
            return []
        self._stopped.set()
        results = self._results
        if results is not None:
            results.stop_intake(grace)
        self._queue.put(_STOP)
        if self._collector is not None:
            self._collector.join()
        if results is not None:
            results.close()
        left: list[Job] = []
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            if batch is not _STOP:
                left.extend(batch)
        return left

    def snapshot(self) -> RunSnapshot | dict[str, Any]:
        results = self._results
        return results.snapshot() if results is not None else {}
