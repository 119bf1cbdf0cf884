"""Journaled runs: a pipeline whose items are claimed in a journal and whose results are
recorded there, so that running the same thing again resumes.

Three parts that know nothing of each other meet here: the input, the pipeline, and the
journal with its outputs::

    input ──▶ Claimer (source thread) ───────▶ pipeline ──▶ JournalSink (caller's thread)
              │ key each item                                │ the item's key
              │ journal.mark_started(chunk of keys)          │ journal.record(batch)
              │ pass on only the items claimed               │
              ▼                                              ▼
           skipped: done, failed, duplicate          output + OUTPUT.failures.jsonl,
           (never held in memory)                    committed by the journal

:class:`JournaledRun` is the one way a run is journaled: the command line's driver (for
``spindle map`` and ``spindle fetch``), :func:`run_journaled` and ``Pipeline.run(journal=)``
(:mod:`._resumable`) all start their runs through it. The journal's calls are blocking
and thread-safe, and neither the source thread nor the caller's thread is an event loop.

What a crash or a stop leaves. Items claimed but not recorded are ``pending`` in the
journal and run again on resume (at least once); the journal cuts the output back to its
last commit, so each key is recorded once (see ``docs/journal.md``).

The run's report. The journal gets the run's report (``to_json(results.snapshot())``, the
JSON of ``--stats-json``) as its report source: it stores one with its commits, at most
once a second, and a final one when it closes, after the pipeline has stopped. ``spindle
status`` shows the last one, also for a run that was killed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.pipeline import Pipeline, Results, Service
from .._core.source import ChunkedSource
from .._errors import ConfigError, SpindleError
from ..connectors import FailuresOutput, OutputError, format_for, json_default, open_output
from ..connectors._output import check_parent
from ..observe.report import to_json
from ._claims import Claimer
from ._keys import KeyFunction, field_key, keys_for
from ._sink import CHUNK, MAP_SHAPE, JournalSink, RecordShape
from ._sqlite import SqliteJournal

__all__ = [
    "JournaledRun",
    "RunOutcome",
    "open_journal",
    "pipeline_fingerprint",
    "refuse_flat",
    "refuse_without_journal",
    "run_journaled",
]


def refuse_without_journal(options: list[tuple[str, bool]], add: str) -> None:
    """Raise a ConfigError naming the journal's ``options`` given (``True``) although
    there is no journal, and saying to ``add`` one."""
    given = [name for name, used in options if used]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to a "
            f"journaled run: add {add}"
        )


def open_journal(
    journal: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    fingerprint: str,
    *,
    output_format: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    fsync: bool = True,
    commit_interval: float = 1.0,
) -> SqliteJournal:
    """Open (or create) the journal with its output and failures file; resume from them.

    The output's format comes from ``output_format`` or from the extension of ``output``
    (``.jsonl``, ``.csv``, ``.sqlite``/``.db``, ``.parquet``); failures go to
    ``OUTPUT.failures.jsonl``. Without ``output`` the journal keeps only the items'
    states (the Python API's callers take the results themselves). Raises a
    :class:`~spindle.SpindleError` saying what to do when the journal belongs to another
    command, is damaged, is in use, or a path cannot be written.
    """
    journal_path = Path(journal).absolute()
    if journal_path.is_dir():
        raise ConfigError(
            f"the journal {journal_path} is a directory; give a file path, such as "
            f"{journal_path / 'journal.db'}"
        )
    if output is None:
        return SqliteJournal(
            journal_path,
            fingerprint,
            force=force,
            retry_failed=retry_failed,
            commit_interval=commit_interval,
        )
    if os.fspath(output) == "-":
        raise ConfigError(
            "a journaled run needs an output file, not -: a resumed run cuts the output "
            "back to its last commit, which standard output cannot do"
        )
    output_path = Path(output).absolute()
    failures_path = output_path.with_name(output_path.name + ".failures.jsonl")
    if journal_path in (output_path, failures_path):
        raise ConfigError(f"the journal {journal_path} cannot also be the output")
    fmt = format_for(output_path, output_format)
    if not journal_path.exists():
        # Before the journal file is created: a run that cannot write its output should
        # not leave a journal behind that names this command.
        check_parent(output_path)
        if not os.access(output_path.parent, os.W_OK):
            raise OutputError(
                f"cannot create output {output_path}: the directory {output_path.parent} "
                "is not writable"
            )
    options: dict[str, Any] = {"fsync": fsync}
    if fmt == "jsonl":
        options["default"] = json_default  # sets, bytes and dataclasses, as without a journal
    results = open_output(output_path, fmt, **options)
    failures = FailuresOutput(failures_path, fsync=fsync)
    return SqliteJournal(
        journal_path,
        fingerprint,
        output=results,
        failures=failures,
        force=force,
        retry_failed=retry_failed,
        commit_interval=commit_interval,
    )


def pipeline_fingerprint(pipeline: Pipeline) -> str:
    """What a journal of a Python run is made for, by default: its stages."""
    return "pipeline " + " -> ".join(f"{s.name}({s.kind})" for s in pipeline.stages)


def refuse_flat(pipeline: Pipeline) -> None:
    flat = [s.name for s in pipeline.stages if s.flat]
    if flat:
        raise ConfigError(
            f"a journaled run records one result per input, but {', '.join(map(repr, flat))} "
            "is a generator function (several results per input): return a list instead"
        )


# -- running ------------------------------------------------------------------------


@dataclass
class RunOutcome:
    """What one journaled run did.

    Attributes:
        done: results recorded by this run.
        failed: failures recorded by this run.
        skipped_done: inputs skipped because the journal had them (done, or failed
            without ``retry_failed``).
        skipped_duplicate: inputs skipped because their key came earlier in the input.
        not_started: inputs claimed but dropped unstarted by a stop (they stay pending).
        interrupted: a signal or ``KeyboardInterrupt`` stopped the run.
        signal: the first signal received, if any.
        error: the error that stopped the run (a write error, a broken journal), if any.
    """

    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_duplicate: int = 0
    not_started: int = 0
    interrupted: bool = False
    signal: int | None = None
    error: SpindleError | None = None


@dataclass(eq=False)
class JournaledRun:
    """One run of a pipeline through a journal: its input claimed, its results recorded.

    ``key`` keys each input (``fallback`` keys the inputs ``key`` fails on: they fail,
    and are recorded under it). :meth:`start` runs the pipeline over the claimed items
    and gives the results with the :class:`JournalSink` to write them to; closing the
    sink (after the results) closes the journal; :meth:`finish` then fills in
    :attr:`outcome`.
    """

    journal: SqliteJournal
    key: KeyFunction
    fallback: KeyFunction
    shape: RecordShape = field(default=MAP_SHAPE, kw_only=True)
    batch: int = field(default=CHUNK, kw_only=True)
    outcome: RunOutcome = field(default_factory=RunOutcome, init=False)

    def remaining(self, total: int | None) -> int | None:
        """Of ``total`` inputs, how many are left to run (a progress bar's total)."""
        if total is None:
            return None
        before = self.journal.summary()
        return max(total - before.done - (0 if self.journal.retry_failed else before.failed), 0)

    def start(
        self,
        pipeline: Pipeline,
        items: Iterable[Any],
        *,
        total: int | None = None,
        services: Sequence[Service] = (),
    ) -> tuple[Results, JournalSink]:
        """Run ``pipeline`` over the items of ``items`` that the journal lets run."""
        claimer = Claimer(self.journal, self.key, self.fallback, ordered=pipeline.ordered)
        results = pipeline.run(
            ChunkedSource(claimer.claimed(items)),
            with_inputs=True,
            total=total,
            services=services,
        )
        # Called at commits, and by close() after the stop.
        self.journal.set_report_source(lambda: to_json(results.snapshot()))
        return results, JournalSink(
            self.journal, claimer.keys_of, batch=self.batch, shape=self.shape
        )

    def finish(self, results: Results, sink: JournalSink) -> RunOutcome:
        """The run's outcome, once the results and the sink are closed."""
        outcome = self.outcome
        outcome.done, outcome.failed = sink.written, sink.failed
        stats = self.journal.stats()
        outcome.skipped_done = stats.skipped_done
        outcome.skipped_duplicate = stats.skipped_duplicate
        outcome.not_started = results.not_started
        return outcome


def run_journaled(
    pipeline: Pipeline,
    items: Iterable[Any],
    *,
    output: str | os.PathLike[str],
    journal: str | os.PathLike[str],
    key: KeyFunction | str | None = None,
    fingerprint: str | None = None,
    output_format: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    fsync: bool = True,
    commit_interval: float = 1.0,
    batch: int = CHUNK,
) -> RunOutcome:
    """Run ``pipeline`` over ``items`` with a journal: rerunning the same call resumes.

    Each result is written to ``output`` as ``{"input": item, "result": result}`` and each
    failure to ``OUTPUT.failures.jsonl``; inputs whose key the journal has as done are
    skipped, and an input repeated in ``items`` runs once. ``key`` is a function of the
    item, or the name of a field of dict items; by default a digest of the item (see
    :func:`value_key`). ``fingerprint`` names what is being run: a journal made under
    another fingerprint is refused (:class:`~spindle.journal.JournalMismatch`) unless
    ``force``. It defaults to the pipeline's stages; add the input's identity (a path)
    so that a journal is never resumed over other input.

    Raises the errors of :func:`open_journal` before anything runs, and a
    ``SpindleError`` that stops the run (a write error) after the journal is closed.
    """
    refuse_flat(pipeline)
    if fingerprint is None:
        fingerprint = pipeline_fingerprint(pipeline)
    opened = open_journal(
        journal,
        output,
        fingerprint,
        output_format=output_format,
        retry_failed=retry_failed,
        force=force,
        fsync=fsync,
        commit_interval=commit_interval,
    )
    keys = keys_for(opened.key_scheme)  # the journal's, if it was made before
    key_fn: KeyFunction = field_key(key) if isinstance(key, str) else (key or keys.value)
    run = JournaledRun(opened, key_fn, keys.value, batch=batch)
    try:
        results, sink = run.start(pipeline, items)
    except BaseException:
        opened.close()
        raise
    try:
        try:
            for inputs, values in results.chunks_with_inputs():
                sink.write(inputs, values)
        finally:
            results.close()  # stops the workers and joins the source thread
    finally:
        sink.close()  # records what it holds, then the journal's last commit
    return run.finish(results, sink)


# -- the command line ---------------------------------------------------------------
