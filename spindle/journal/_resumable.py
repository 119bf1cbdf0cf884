"""``Pipeline.run(items, journal=PATH)`` and ``spindle.map(..., journal=PATH)``: a lazy
iterator of results that the same call, made again, resumes.

It joins the same parts as ``spindle map --journal`` (:mod:`._driver`): the
source thread keys each input and claims it in the journal, so that inputs done in an
earlier run and repeated inputs never run; the caller's thread records each result
under its key. What differs is who takes the results: the caller.

When a result counts as done. A chunk of results goes to the caller first, and is
recorded when the caller asks for what comes after it. A result the caller did not get
to handle (its loop body raised, it broke out of the loop, the process was killed) is
not recorded, so the next run gives it again: delivery to the caller is at least once.
``output=PATH`` keeps a file of ``{"input", "result"}`` records in step with the journal
instead, exactly one per input after any crash, as the command line does.

Failures. The run underneath always yields failures in place, so the journal sees them.
With ``on_error="yield"`` a failure is recorded as failed, with its reason, and a rerun
skips it unless ``retry_failed=True``. With ``on_error="raise"`` the first failure is
raised in the caller, as without a journal, and is not recorded: a rerun (after a fix,
say) runs that item again.

The journal is opened when the iterator is made, so that a journal of another command,
a damaged one or an unwritable path fails at the call; it is closed (its last commit
made) when the iterator ends, is closed, or is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

from .._core.pipeline import Pipeline, Results, Service
from .._failure import Failure
from ._driver import JournaledRun, RunOutcome, open_journal, pipeline_fingerprint, refuse_flat
from ._driver import refuse_without_journal as refuse_without_journal
from ._keys import KeyFunction, field_key, keys_for
from ._sink import JournalSink
from ._sqlite import SqliteJournal

__all__ = ["JournaledResults", "check_journal_arguments"]


def check_journal_arguments(
    journal: str | os.PathLike[str] | None,
    *,
    key: KeyFunction | str | None,
    output: str | os.PathLike[str] | None,
    retry_failed: bool,
    force: bool,
) -> None:
    """``key``, ``output``, ``retry_failed`` and ``force`` mean something only with a
    journal: given without one, they are a mistake worth naming."""
    if journal is None:
        refuse_without_journal(
            [
                ("key", key is not None),
                ("output", output is not None),
                ("retry_failed", retry_failed),
                ("force", force),
            ],
            "journal=PATH (a file that records which items are done, so that the same call "
            "made again resumes)",
        )


class JournaledResults(Results):
    """The results of a journaled run: a :class:`Results` that records what it hands out.

    ``outcome`` (a :class:`~spindle.journal.RunOutcome`) counts what this run
    recorded and skipped; its figures are final once the iterator has ended or closed.
    ``journal`` is the open journal (for :meth:`~spindle.journal.SqliteJournal.summary`).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        items: Iterable[Any],
        *,
        journal: str | os.PathLike[str],
        key: KeyFunction | str | None = None,
        output: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        force: bool = False,
        with_inputs: bool = False,
        total: int | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        refuse_flat(pipeline)
        opened = open_journal(
            journal,
            output,
            pipeline_fingerprint(pipeline),
            retry_failed=retry_failed,
            force=force,
        )
        try:
            keys = keys_for(opened.key_scheme)  # the journal's, if it was made before
            key_fn: KeyFunction = field_key(key) if isinstance(key, str) else (key or keys.value)
            run = JournaledRun(opened, key_fn, keys.value)
            # The run underneath yields failures in place, so that the journal sees them.
            inner = Pipeline(
                pipeline.stages, ordered=pipeline.ordered, on_error="yield", buffer=pipeline.buffer
            )
            results, sink = run.start(inner, items, total=total, services=services)
        except BaseException:
            opened.close()
            raise
        self.journal: SqliteJournal = opened
        self._run_outcome = run.outcome
        columns = _hand_out(
            run, results, sink, with_inputs=with_inputs, raise_errors=pipeline.on_error == "raise"
        )
        # Started at once, so that a run dropped before its first result still ends in
        # the generator's ``finally`` (a generator never started has none to run). The
        # generator closes everything, not this object: a ``for`` loop keeps only the
        # iterator of ``__iter__``, and drops this object at once.
        next(columns)
        super().__init__(results._ex, columns, with_inputs=with_inputs)

    @property
    def outcome(self) -> RunOutcome:
        """What this run recorded and skipped; final once the iteration has ended."""
        return self._run_outcome

    def chunks(self) -> Iterator[list[Any]]:
        """The results in lists, as they arrive (see :meth:`Results.chunks`)."""
        return filter(None, self._gen)

    def chunks_with_inputs(self) -> Iterator[tuple[list[Any], list[Any]]]:
        """A run ``with_inputs``: ``(inputs, results)`` lists, as they arrive (see
        :meth:`Results.chunks_with_inputs`)."""
        if not self._tagged:
            raise RuntimeError("chunks_with_inputs() needs a run with with_inputs=True")
        return filter(None, self._run)


def _hand_out(
    run: JournaledRun,
    results: Results,
    sink: JournalSink,
    *,
    with_inputs: bool,
    raise_errors: bool,
) -> Generator[Any, None, None]:
    """The caller's chunks: lists of values, or with ``with_inputs`` ``(inputs, values)``
    lists, up to the first failure with ``raise_errors``, which is then raised. A chunk
    is recorded when the caller asks for the next one, so a result the caller did not
    finish handling comes again in the next run. Closes everything when it ends."""
    try:
        yield []  # started: see JournaledResults.__init__
        for inputs, values in results.chunks_with_inputs():
            if raise_errors and Failure in map(type, values):
                first = list(map(type, values)).index(Failure)
                if first:
                    yield _out(inputs[:first], values[:first], with_inputs)
                    sink.write(inputs[:first], values[:first])
                failure: Failure = values[first]
                raise failure.to_exception()
            yield _out(inputs, values, with_inputs)
            sink.write(inputs, values)
    finally:
        try:
            results.close()
        finally:
            sink.close()  # records what it holds; the journal's last commit
            run.finish(results, sink)


def _out(inputs: list[Any], values: list[Any], with_inputs: bool) -> Any:
    """The caller's lists: fresh, since the results are recorded after the caller is done
    with them (a caller that sorts or clears its chunk changes nothing recorded)."""
    return (list(inputs), list(values)) if with_inputs else list(values)
