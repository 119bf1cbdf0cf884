"""``Pipeline.run(items, journal=PATH)`` and ``spindle.map(..., journal=PATH)``: a lazy
iterator of results that the same call, made again, resumes.

It joins the same parts as ``spindle map --journal`` (:mod:`spindle._journaled`): the
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
from itertools import chain
from typing import Any

from ._core.pipeline import ChunkedSource, Pipeline, Results, Service
from ._failure import Failure
from ._journaled import (
    CHUNK,
    Claimer,
    KeyFunction,
    RunOutcome,
    open_journal,
    pipeline_fingerprint,
    recorded,
    refuse_flat,
    refuse_without_journal,
)
from ._keys import field_key, keys_for
from .journal import SqliteJournal
from .observe.report import to_json

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

    ``outcome`` (a :class:`~spindle._journaled.RunOutcome`) counts what this run
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
            claimer = Claimer(opened, key_fn, keys.value, ordered=pipeline.ordered)
            inner = Pipeline(
                pipeline.stages, ordered=pipeline.ordered, on_error="yield", buffer=pipeline.buffer
            )
            results = inner.run(
                ChunkedSource(claimer.claimed(items)),
                with_inputs=True,
                total=total,
                services=services,
            )
        except BaseException:
            opened.close()
            raise
        opened.set_report_source(lambda: to_json(results.snapshot()))
        self.journal: SqliteJournal = opened
        self.outcome: RunOutcome = RunOutcome()
        self._inner = results
        self._ex = results._ex
        chunks = recorded(results, opened, claimer.keys_of, self.outcome, CHUNK)
        self._gen = _hand_out(
            chunks,
            results,
            opened,
            self.outcome,
            with_inputs=with_inputs,
            raise_errors=pipeline.on_error == "raise",
        )
        # Started at once, so that a run dropped before its first result still ends in
        # the generator's ``finally`` (a generator never started has none to run). The
        # generator closes everything, not this object: a ``for`` loop keeps only the
        # iterator of ``__iter__``, and drops this object at once.
        next(self._gen)
        self._items = chain.from_iterable(self._gen)

    def chunks(self) -> Iterator[list[Any]]:
        """The results in lists, as they arrive (see :meth:`Results.chunks`)."""
        return filter(None, self._gen)

    def close(self) -> None:
        """Stop the run (if it is running), record what the caller was handed and asked
        past, and close the journal."""
        self._gen.close()


def _hand_out(
    chunks: Generator[tuple[list[Any], list[Any]], None, None],
    results: Results,
    journal: SqliteJournal,
    outcome: RunOutcome,
    *,
    with_inputs: bool,
    raise_errors: bool,
) -> Generator[list[Any], None, None]:
    """The caller's chunks of ``chunks``: values (or pairs), up to the first failure
    with ``raise_errors``, which is then raised. Closes everything when it ends."""
    try:
        yield []  # started: see JournaledResults.__init__
        for inputs, values in chunks:
            if raise_errors and Failure in map(type, values):
                first = list(map(type, values)).index(Failure)
                if first:
                    yield _out(inputs[:first], values[:first], with_inputs)
                failure: Failure = values[first]
                raise failure.to_exception()
            yield _out(inputs, values, with_inputs)
    finally:
        _finish(chunks, results, journal)
        stats = journal.stats()
        outcome.skipped_done = stats.skipped_done
        outcome.skipped_duplicate = stats.skipped_duplicate
        outcome.not_started = results.not_started


def _out(inputs: list[Any], values: list[Any], with_inputs: bool) -> list[Any]:
    """The caller's list: fresh, since the results are recorded after the caller is done
    with it (a caller that sorts or clears its chunk changes nothing recorded)."""
    return list(zip(inputs, values, strict=True)) if with_inputs else list(values)


def _finish(gen: Generator[Any, None, None], results: Results, journal: SqliteJournal) -> None:
    """Close in order: the recording (it records what the caller asked past), the run,
    then the journal (its last commit). Each step does nothing the second time."""
    try:
        gen.close()
    finally:
        try:
            results.close()
        finally:
            journal.close()
