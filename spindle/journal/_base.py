"""The journal interface: which items are done, and recording them exactly once.

The engine drives a journal like this (one thread at a time, or under its own lock)::

    journal = SqliteJournal(path, fingerprint, output=..., failures=...)   # resumes
    for batch of keys read from the source:
        run = journal.mark_started(keys)       # True: run it; False: done or a duplicate
        ... run the items with True ...
        journal.record([Record.done(key, result_record), Record.failed(...), ...])
    journal.close()                             # commits what is left, ends the run

A run may also hand the journal its report (``set_report_source``): a journal that
persists stores it with its commits, so ``status`` can show it after the run.

Execution is at least once (an item running when the process dies runs again on
resume); recording is exactly once (each key's record reaches the output once).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeAlias

from .._failure import short_repr
from ._summary import JournalStatus

#: An item's identity: text, or bytes such as a hash digest of the item.
Key: TypeAlias = str | bytes

#: What a journal calls for the run's report: a JSON-able dict (``observe.report.to_json``
#: of the run's snapshot, what ``--stats-json`` writes).
ReportSource: TypeAlias = Callable[[], Mapping[str, Any]]

#: How new journals digest inputs into keys (see ``spindle._keys``); a journal keeps the
#: scheme it was made with.
DEFAULT_KEY_SCHEME = "xxh3-128"

#: The states an item goes through in the journal.
State: TypeAlias = Literal["pending", "done", "failed"]
PENDING: Literal["pending"] = "pending"
DONE: Literal["done"] = "done"
FAILED: Literal["failed"] = "failed"


def key_text(key: object) -> str:
    """A key for people: text as is, bytes (hash digests) in hex."""
    if isinstance(key, bytes):
        return key.hex()
    return str(key)


def unwritable_failure(key: Key, exc: Exception, result: Any, attempts: int) -> dict[str, Any]:
    """The failure record of an item whose result the output cannot encode.

    The item is not lost: it becomes a failure carrying the reason and a (shortened)
    ``repr`` of the result, so that it ends as a result or as a failure like any other.
    """
    return {
        "key": key_text(key),
        "error": type(exc).__name__,
        "message": str(exc),
        "result": short_repr(result),
        "attempts": attempts,
    }


class Record(NamedTuple):
    """The outcome of one item, as handed to :meth:`Journal.record`.

    ``payload`` is what gets written: the result record for ``"done"`` (to the output),
    the failure record for ``"failed"`` (to the failures file). ``error`` and
    ``message`` are the failure reason kept in the journal (exception type name and
    ``str()``), shown grouped by ``spindle status``.

    A named tuple, not a dataclass: the engine makes one per item, and a tuple is the
    cheapest Python object to build.
    """

    key: Key
    state: Literal["done", "failed"]
    attempts: int = 1
    error: str | None = None
    message: str | None = None
    payload: Any = None

    @classmethod
    def done(cls, key: Key, payload: Any = None, *, attempts: int = 1) -> Record:
        """A finished item; ``payload`` is its result record."""
        return cls(key, DONE, attempts, None, None, payload)

    @classmethod
    def failed(
        cls,
        key: Key,
        error: str,
        message: str,
        payload: Any = None,
        *,
        attempts: int = 1,
    ) -> Record:
        """A failed item; ``payload`` is its failure record (``Failure.to_dict()`` and key)."""
        return cls(key, FAILED, attempts, error, message, payload)


@dataclass(slots=True)
class JournalStats:
    """Counters of one open journal, for progress displays and the final summary.

    Attributes:
        started: keys claimed by :meth:`Journal.mark_started` (to be run).
        skipped_done: keys skipped because the journal already has them (done, or
            failed without ``retry_failed``).
        skipped_duplicate: keys skipped because the same key is already in flight, or
            came earlier in the same batch, or was recorded earlier in this run.
        recorded_done: items recorded as done in this run (committed or queued).
        recorded_failed: items recorded as failed in this run.
        unwritable: results the output could not encode; recorded as failures.
        ignored: records for keys already recorded (not written again).
        commits: transactions committed.
        in_flight: keys claimed and not yet recorded.
    """

    started: int = 0
    skipped_done: int = 0
    skipped_duplicate: int = 0
    recorded_done: int = 0
    recorded_failed: int = 0
    unwritable: int = 0
    ignored: int = 0
    commits: int = 0
    in_flight: int = 0


class Journal(ABC):
    """Where a run remembers which items are done, so the same command resumes.

    Implementations: :class:`~spindle.journal.SqliteJournal` (the default, on disk) and
    :class:`~spindle.journal.MemoryJournal` (in memory, for tests and runs that do not
    need to resume).
    """

    #: The digest scheme of the default keys of this journal's items.
    key_scheme: str = DEFAULT_KEY_SCHEME

    @property
    def keeps_payloads(self) -> bool:
        """Whether the payloads of done items go somewhere (an output). When they do not,
        a caller may record None instead of building them."""
        return True

    @abstractmethod
    def filter_new(self, keys: Sequence[Key]) -> list[bool]:
        """For each key, whether it still has to run. Reads only; claims nothing.

        A key has to run if the journal has no record of it, or only a ``pending`` one
        from an interrupted run, or (with ``retry_failed``) a failure from an earlier
        run. A key in flight in this run, or repeated earlier in ``keys``, does not.
        """

    @abstractmethod
    def mark_started(self, keys: Sequence[Key]) -> list[bool]:
        """Claim the keys that have to run; return for each whether the caller runs it.

        Does the same check as :meth:`filter_new` and claims the keys it answers True
        for, so a later duplicate of a claimed key (in this batch or a later one, while
        it is in flight or after it is recorded) gets False and is dropped.
        """

    @abstractmethod
    def record(self, batch: Sequence[Record]) -> None:
        """Record finished items: write their payloads and mark them done or failed.

        The write and the marking commit together (see the implementation for when),
        so after a crash each key is either recorded with its payload in the output,
        or not recorded and run again. A record for a key already recorded is ignored.
        """

    def record_done(self, keys: Sequence[Key], payloads: Sequence[Any]) -> None:
        """Record items that all succeeded at their first attempt: ``record()`` of
        ``Record.done(key, payload)`` for each pair. Journals may do it column-wise,
        without a ``Record`` per item, which matters when jobs take microseconds."""
        pairs = zip(keys, payloads, strict=True)
        self.record([Record(k, DONE, 1, None, None, p) for k, p in pairs])

    def set_report_source(self, source: ReportSource | None) -> None:
        """Where the run's report comes from, or None to stop asking.

        A journal that persists calls ``source`` when it commits (not per item) and
        stores what it returns with the commit, and once more as it closes, so that
        ``status`` shows the run's report after it ended or died. ``source`` is called
        in the thread that triggers the commit, under the journal's lock: it must be
        cheap and safe to call from any thread, and must not call the journal. This
        default keeps nothing.
        """
        del source

    @abstractmethod
    def flush(self) -> None:
        """Commit everything recorded so far now, rather than at the next interval."""

    @abstractmethod
    def summary(self) -> JournalStatus:
        """Totals by state, elapsed time, throughput and failures grouped by reason."""

    @abstractmethod
    def stats(self) -> JournalStats:
        """Counters of this open journal (a snapshot)."""

    @abstractmethod
    def close(self) -> None:
        """Commit what is recorded, end the run, release the files. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
