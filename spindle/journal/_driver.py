"""Journaled runs: a pipeline whose results go through the journal, so a rerun resumes.

``spindle map ... --journal J`` and :func:`run_journaled` join three parts that know
nothing of each other: the input, the pipeline, and the journal with its outputs::

    input ──▶ claim (source thread) ──────────▶ pipeline ──▶ record (caller's thread)
              │ key each item                                │ the item's key (see below)
              │ journal.mark_started(256 keys)               │ Record.done / Record.failed
              │ yield only the items claimed                 │ journal.record(256 records)
              ▼                                              ▼
           skipped: done, failed, duplicate          output + OUTPUT.failures.jsonl,
           (never held in memory: one SQL            committed by the journal; flush()
            lookup per chunk of keys)                and close() at the end or on a stop

Where the work happens. The pipeline reads its source in its own thread, so the claiming
generator (hashing keys, ``mark_started`` per chunk) runs there, off the event loop and
off the caller's thread; results arrive in the caller's thread (``with_inputs=True``
gives the input back), which records them in batches. Journal calls are blocking and
thread-safe, and neither thread is an event loop.

How a result finds its key. The source thread computes each key once. In an ordered
run (the default) results come back in the order they were claimed, so the caller takes
keys from the front of the claimed chunks, checking that each result's input is the
very object claimed there (the pipeline hands the input object itself back, it never
copies it); an item dropped unstarted by a stop is passed over and stays claimed. This
costs nothing per item but a slice and an identity test. In an unordered run the key is
filed under ``id(input)`` in a dict, and popped when that input's result comes back.
Either holds only the items in flight, so it is bounded like the pipeline. Two live
inputs with the same ``id`` are the same object, hence the same value and the same key,
and the journal lets only one of them run.

Keys. By default a 16-byte digest of the input, in the journal's scheme; ``--key FIELD``
keys JSON objects by a field (see :mod:`spindle._keys`).

What a crash or a stop leaves. Items claimed but not recorded are ``pending`` in the
journal and run again on resume (at least once); the journal cuts the output back to its
last commit, so each key is recorded once (see ``docs/journal.md``). On the first Ctrl-C
or SIGTERM the run drains, then records what came back, flushes and closes the journal.

The run's report. The journal gets the run's report (``to_json(results.snapshot())``, the
JSON of ``--stats-json``) as its report source: it stores one with its commits, at most
once a second, and a final one when it closes, after the pipeline has stopped. ``spindle
status`` shows the last one, also for a run that was killed.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import is_
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
import orjson

from ._core.pipeline import ChunkedSource, Pipeline, Results, Service
from ._errors import ConfigError, SpindleError
from ._failure import Failure
from ._keys import DEFAULT_SCHEME, KeyFunction, MissingKey, field_key, keys_for
from ._records import Items
from ._records import _default as json_default
from ._report import Observers, Summary
from .executors._batch import is_generator_fn
from .journal import Journal, JournalCorrupt, Key, Record, SqliteJournal
from .journal import status_dict as journal_status_dict
from .journal import status_text as journal_status_text
from .journal._base import key_text
from .journal._status import open_read_only
from .observe.rates import StagePoint, TimelinePoint
from .observe.report import Report, to_json
from .outputs import FailuresOutput, OutputError, format_for, open_output
from .outputs._base import check_parent

__all__ = [
    "CHUNK",
    "MAX_CHUNK",
    "RECORD_DELAY",
    "Claimer",
    "JournaledMap",
    "KeyFunction",
    "MissingKey",
    "RunOutcome",
    "SignalsFactory",
    "check_journal_options",
    "field_key",
    "growing_chunks",
    "journal_timeline",
    "json_key",
    "map_fingerprint",
    "open_journal",
    "open_map_journal",
    "pipeline_fingerprint",
    "recorded",
    "refuse_flat",
    "refuse_without_journal",
    "run_journaled",
    "status_report",
    "text_key",
    "value_key",
]

#: Records per ``record`` call.
CHUNK = 256
#: Seconds a finished result may wait in the caller's batch before it goes to the journal
#: (checked as results arrive), so that slow jobs do not sit there for a whole batch.
RECORD_DELAY = 0.2

_DEFAULT_KEYS = keys_for(DEFAULT_SCHEME)
#: The default key functions of new journals (see :mod:`spindle._keys`).
text_key = _DEFAULT_KEYS.text
json_key = _DEFAULT_KEYS.json
value_key = _DEFAULT_KEYS.value


def check_journal_options(
    journal: str | None,
    *,
    key: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    output_format: str | None = None,
) -> None:
    """The journal's options make sense only with ``--journal``."""
    if journal is None:
        refuse_without_journal(
            [
                ("--key", key is not None),
                ("--retry-failed", retry_failed),
                ("--force", force),
                ("--output-format", output_format is not None),
            ],
            "--journal PATH (a file that records which items are done, so that rerunning "
            "the command resumes)",
        )


def refuse_without_journal(options: list[tuple[str, bool]], add: str) -> None:
    """Raise a ConfigError naming the journal's ``options`` given (``True``) although
    there is no journal, and saying to ``add`` one."""
    given = [name for name, used in options if used]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to a "
            f"journaled run: add {add}"
        )


_JOURNAL_OPTIONS = [
    click.option(
        "--journal",
        metavar="PATH",
        help="Record which items are done in this file; the same command run again resumes.",
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        help="With --journal: run the items that failed before again.",
    ),
    click.option(
        "--force",
        is_flag=True,
        help="With --journal: discard the journal's items and its outputs, and start over.",
    ),
    click.option(
        "--output-format",
        type=click.Choice(["jsonl", "csv", "sqlite", "parquet"]),
        help="With --journal: the format of OUTPUT [from its extension].",
    ),
]

_F = TypeVar("_F", bound=Callable[..., Any])


def journal_options(command: _F) -> _F:
    """Add ``--journal``, ``--retry-failed``, ``--force`` and ``--output-format`` to a
    command (``spindle map`` and ``spindle fetch`` resume the same way)."""
    for option in reversed(_JOURNAL_OPTIONS):
        command = option(command)
    return command


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


class _SignalGuard(Protocol):
    """What the command line's signal handling offers (``cli._Signals``)."""

    received: int | None

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


SignalsFactory = Callable[[Results, float], _SignalGuard]


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


@dataclass(frozen=True)
class RecordShape:
    """What a journaled command writes for a result and for a failure.

    ``spindle map`` writes ``{"input": item, "result": value}``; ``spindle fetch``
    writes its record as it is (it names its URL) and gives a failed fetch's message
    the bare reason. The journal itself stores the same whatever the shape.
    """

    #: The output record of ``value``, the result of input ``item``.
    result: Callable[[Any, Any], Any]
    #: The failure to write for input ``item`` (its record is ``to_dict()`` + input + key).
    failure: Callable[[Failure, Any], Failure]


def _map_record(item: Any, value: Any) -> Any:
    return {"input": item, "result": value}


def _same_failure(failure: Failure, item: Any) -> Failure:
    return failure


#: The records of ``spindle map`` and :func:`run_journaled`.
MAP_SHAPE = RecordShape(_map_record, _same_failure)


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
        if isinstance(items, Items) and items.chunkable():
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


def recorded(
    results: Results,
    journal: Journal,
    keys: Callable[[list[Any]], list[Key]],
    outcome: RunOutcome,
    batch: int,
    shape: RecordShape = MAP_SHAPE,
    *,
    hand_out: bool = True,
) -> Generator[tuple[list[Any], list[Any]], None, None]:
    """Record each result of ``results`` (a run ``with_inputs``) under its input's key.

    With ``hand_out``, each chunk is first yielded, as ``(inputs, results)``, and
    recorded only when the caller
    asks for the next one: a caller that stops or fails while handling a chunk leaves
    its items unrecorded, so a resumed run gives them again (at least once). Records go
    to the journal in batches of ``batch``, or sooner when results come slowly
    (:data:`RECORD_DELAY`); when the generator is closed, what it holds is recorded
    before it returns. Without ``hand_out`` it yields nothing: iterating it records
    every result.
    """
    as_record, as_failure = shape.result, shape.failure
    build = journal.keeps_payloads  # else a done item's record goes nowhere: not built
    record = journal.record
    clock = time.monotonic
    pending: list[Record] = []  # failures, and results of chunks that hold failures
    done_keys: list[Key] = []  # results of chunks without failures, column by column
    done_payloads: list[Any] = []
    done = failed = 0
    due = clock() + RECORD_DELAY
    try:
        for inputs, values in results.chunks_with_inputs():
            if hand_out:
                yield inputs, values
            chunk_keys = keys(inputs)
            # Records go to the journal in the order of their chunks, so that an ordered
            # run's keys leave the journal's claims from the front (no lookups).
            if Failure not in map(type, values):  # the usual chunk: all done
                if pending:
                    out, pending = pending, []
                    record(out)
                done_keys += chunk_keys
                n = len(values)
                done_payloads += map(as_record, inputs, values) if build else repeat(None, n)
                done += n
            else:
                if done_keys:
                    journal.record_done(done_keys, done_payloads)
                    done_keys, done_payloads = [], []
                for key, item, value in zip(chunk_keys, inputs, values, strict=True):
                    if type(value) is Failure:
                        value = as_failure(value, item)
                        payload = value.to_dict()
                        payload["input"] = item
                        payload["key"] = key_text(key)
                        error, message = value.error, value.message
                        pending.append(
                            Record(key, "failed", value.attempts, error, message, payload)
                        )
                        failed += 1
                    else:
                        pending.append(Record(key, "done", 1, None, None, as_record(item, value)))
                        done += 1
            if len(pending) + len(done_keys) >= batch or clock() >= due:
                if done_keys:
                    journal.record_done(done_keys, done_payloads)
                    done_keys, done_payloads = [], []
                if pending:
                    out, pending = pending, []
                    record(out)
                due = clock() + RECORD_DELAY
    finally:
        outcome.done += done
        outcome.failed += failed
        # What came back before a stop, an error or a second Ctrl-C; a broken journal
        # keeps its last commit.
        if done_keys:
            with contextlib.suppress(SpindleError):
                journal.record_done(done_keys, done_payloads)
        if pending:
            with contextlib.suppress(SpindleError):
                record(pending)


def _drive(
    pipeline: Pipeline,
    items: Iterable[Any],
    journal: Journal,
    key: KeyFunction,
    *,
    fallback: KeyFunction,
    total: int | None,
    services: list[Service],
    signals: SignalsFactory | None,
    grace: float,
    batch: int,
    shape: RecordShape = MAP_SHAPE,
) -> tuple[RunOutcome, Results]:
    """Run the pipeline over the claimed items and record every result; close the journal.

    Returns the outcome and the (finished) results, whose snapshot the caller may show.
    A ``SpindleError`` that stops the run is kept in ``outcome.error``.
    """
    claimer = Claimer(journal, key, fallback, ordered=pipeline.ordered)
    outcome = RunOutcome()
    results = pipeline.run(
        ChunkedSource(claimer.claimed(items)), with_inputs=True, total=total, services=services
    )
    guard = signals(results, grace) if signals is not None else None

    def report() -> Report:
        return to_json(results.snapshot())

    journal.set_report_source(report)  # called at commits, and by close() after the stop
    try:
        try:
            with guard if guard is not None else contextlib.nullcontext():
                # The caller's side: nobody takes the results but the journal.
                chunks = recorded(
                    results, journal, claimer.keys_of, outcome, batch, shape, hand_out=False
                )
                for _ in chunks:
                    pass
        except KeyboardInterrupt:
            if signals is None:
                raise
            outcome.interrupted = True
        except SpindleError as exc:
            outcome.error = exc
        finally:
            results.close()  # stops the workers and joins the source thread
            if guard is not None and guard.received is not None:
                outcome.interrupted = True
                outcome.signal = guard.received
    finally:
        try:
            journal.close()  # commits what is recorded; keys still claimed stay pending
        except SpindleError as exc:
            if outcome.error is None:
                outcome.error = exc
    stats = journal.stats()
    outcome.skipped_done = stats.skipped_done
    outcome.skipped_duplicate = stats.skipped_duplicate
    outcome.not_started = results.not_started
    return outcome, results


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
    outcome, _ = _drive(
        pipeline,
        items,
        opened,
        key_fn,
        fallback=keys.value,
        total=None,
        services=[],
        signals=None,
        grace=0.0,
        batch=batch,
    )
    if outcome.error is not None:
        raise outcome.error
    return outcome


# -- the command line ---------------------------------------------------------------


def input_identity(path: str) -> str:
    """How a journal's fingerprint names its input: the absolute path, or ``-``."""
    return "-" if path == "-" else str(Path(path).absolute())


def map_fingerprint(
    fn: Callable[..., Any], spec: str, input_path: str, fmt: str, key: str | None
) -> str:
    """What ``spindle map`` identifies a journal by: function, input, input format, key."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    function = f"{module}:{name}" if module and name else spec
    source = input_identity(input_path)
    text = f"map {function} {source} --format {fmt}"
    return text + (f" --key {key}" if key is not None else "")


class JournaledMap:
    """``spindle map ... --journal`` (and ``spindle fetch ... --journal``): an open
    journal, how to key the input and what to write."""

    def __init__(
        self,
        journal: SqliteJournal,
        key: KeyFunction,
        fallback: KeyFunction,
        shape: RecordShape = MAP_SHAPE,
    ) -> None:
        self.journal = journal
        self.key = key
        self.fallback = fallback
        self.shape = shape

    def run(
        self,
        pipeline: Pipeline,
        source: Iterable[Any],
        *,
        view: Observers,
        total: int | None,
        grace: float,
        signals: SignalsFactory,
    ) -> int:
        """Run, record, report; return the exit status (0, 1, 2, 130 or 143)."""
        summary = Summary(time.monotonic())
        if total is not None:  # the progress bar counts what is left to run
            before = self.journal.summary()
            total = max(
                total - before.done - (0 if self.journal.retry_failed else before.failed), 0
            )
        outcome, results = _drive(
            pipeline,
            source,
            self.journal,
            self.key,
            fallback=self.fallback,
            total=total,
            services=view.services(),
            signals=signals,
            grace=grace,
            batch=CHUNK,
            shape=self.shape,
        )
        summary.done = outcome.done + outcome.failed
        summary.failed = outcome.failed
        summary.not_started = outcome.not_started
        view.finish(results.snapshot())
        if outcome.error is not None:
            _echo_err(f"spindle: {outcome.error}")
            return 2
        _echo_err(summary.line(interrupted=outcome.interrupted))
        after = self.journal.summary()
        _echo_err(
            f"spindle: journal {self.journal.path}: {after.done:,} done, {after.failed:,} "
            f"failed, {after.pending:,} pending in all; this run skipped "
            f"{outcome.skipped_done:,} already recorded and {outcome.skipped_duplicate:,} "
            "duplicates"
        )
        if outcome.interrupted:
            return 143 if outcome.signal == signal.SIGTERM else 130
        return 1 if after.failed else 0


def open_map_journal(
    *,
    journal: str,
    output: str,
    fn: Callable[..., Any],
    spec: str,
    input_path: str,
    fmt: str,
    key: str | None,
    retry_failed: bool,
    force: bool,
    output_format: str | None,
) -> JournaledMap:
    """Open the journal of a ``spindle map`` command: raises ``SpindleError`` on any
    problem with its paths or options (the command exits with status 2)."""
    if is_generator_fn(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"{spec} is a generator function (several results per input), but a journaled "
            "run records one result per input: return a list instead"
        )
    if key is not None and fmt != "jsonl":
        raise ConfigError(
            f"--key {key} takes a field of each JSON object: add --format jsonl "
            "(text lines are keyed by their content)"
        )
    opened = open_journal(
        journal,
        output,
        map_fingerprint(fn, spec, input_path, fmt, key),
        output_format=output_format,
        retry_failed=retry_failed,
        force=force,
    )
    keys = keys_for(opened.key_scheme)
    fallback: KeyFunction = keys.json if fmt == "jsonl" else keys.text
    key_fn = field_key(key) if key is not None else fallback
    return JournaledMap(opened, key_fn, fallback)


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


# -- status -------------------------------------------------------------------------


def status_report(path: str, *, as_json: bool = False, plot: str | None = None) -> str:
    """The text ``spindle status`` prints; with ``plot``, also draws the run to that file."""
    text = (
        orjson.dumps(journal_status_dict(path), option=orjson.OPT_INDENT_2).decode()
        if as_json
        else journal_status_text(path)
    )
    if plot is not None:
        from .observe.plot import plot_timeline

        timeline = journal_timeline(path)
        try:
            plot_timeline(timeline, plot, title=f"spindle journal {Path(path).name}")
        except OSError as exc:
            raise ConfigError(f"cannot write the plot {plot!r}: {exc.strerror or exc}") from exc
        if not as_json:
            text += f"\nplot      {Path(plot).absolute()}"
    return text


def journal_timeline(path: str | os.PathLike[str], points: int = 120) -> list[TimelinePoint]:
    """Throughput over run time from the journal's commit times, for ``--plot``.

    The x axis is seconds of run time, the runs laid end to end (the time between a crash
    and the resume is left out). The journal knows when each commit recorded its items
    (each failure, and each log row of done keys, or the index row it was merged into),
    not how long their jobs ran: latency is left out of this plot (``NaN``); the run's
    report in ``status`` has its percentiles.
    """
    journal, conn = open_read_only(path)
    try:
        runs = conn.execute(
            "SELECT id, started, coalesce(ended, last_commit, started) FROM runs ORDER BY id"
        ).fetchall()
        offsets: dict[int, float] = {}
        elapsed = 0.0
        for rid, started, ended in runs:
            offsets[rid] = elapsed - started
            elapsed += max(ended - started, 0.0)
        width = max(elapsed / points, 1e-3)
        n = int(elapsed / width) + 1
        done = [0] * n
        failed = [0] * n

        def count(run: int, finished: float | None, state: str, items: int) -> None:
            offset = offsets.get(run)
            if offset is None or finished is None:
                return
            b = min(max(int((finished + offset) / width), 0), n - 1)
            if state == "done":
                done[b] += items
            else:
                failed[b] += items

        rows = conn.execute("SELECT run, finished, state FROM items WHERE state != 'pending'")
        while chunk := rows.fetchmany(4096):
            for run, finished, state in chunk:
                count(run, finished, state, 1)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "log" in tables:
            for run, committed, items in conn.execute("SELECT run, committed, n FROM log"):
                count(run, committed, "done", items)
    except sqlite3.DatabaseError as exc:
        raise JournalCorrupt(f"{journal} is not a readable spindle journal: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    unknown = float("nan")
    timeline: list[TimelinePoint] = []
    total_done = total_failed = 0
    for b in range(n):
        total_done += done[b]
        total_failed += failed[b]
        stage: StagePoint = {
            "done": total_done,
            "failed": total_failed,
            "rate": (done[b] + failed[b]) / width,
            "p50": unknown,
            "p95": unknown,
            "p99": unknown,
            "in_flight": 0,
            "queued": 0,
        }
        timeline.append({"t": (b + 1) * width, "stages": {"recorded": stage}})
    return timeline
