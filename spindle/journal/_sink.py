"""The sink side of a journaled run: each result recorded under its input's key.

::

    (inputs, results) ──▶ keys_of(inputs) ──▶ records, a batch at a time ──▶ journal
        a chunk             (the claimer)      done: keys + payloads, column   │ commit: output
                                               by column; failures one by one  ▼ then states

A :class:`JournalSink` is the :class:`~spindle.connectors.Sink` of every journaled run:
``spindle map --journal``, ``spindle fetch --journal`` and ``Pipeline.run(journal=)``.
Records go to the journal in batches of :data:`CHUNK`, or sooner when results come slowly
(:data:`RECORD_DELAY`), and in the order of their chunks, so that an ordered run's keys
leave the journal's claims from the front (no lookups). Closing the sink records what it
holds and closes the journal, whose last commit makes it durable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from .._errors import SpindleError
from .._failure import Failure
from ..connectors import Sink
from ._base import Journal, Key, Record, key_text

__all__ = ["CHUNK", "MAP_SHAPE", "RECORD_DELAY", "JournalSink", "RecordShape"]

#: Records per ``record`` call.
CHUNK = 256
#: Seconds a finished result may wait in the sink's batch before it goes to the journal
#: (checked as results arrive), so that slow jobs do not sit there for a whole batch.
RECORD_DELAY = 0.2


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


#: The records of ``spindle map`` and of the Python API.
MAP_SHAPE = RecordShape(_map_record, _same_failure)


class JournalSink(Sink):
    """Records each result of a run under its input's key (see the module docstring).

    ``keys`` gives the keys of a chunk's inputs (:meth:`Claimer.keys_of`). ``written``
    and ``failed`` count the results and failures this sink recorded.
    """

    def __init__(
        self,
        journal: Journal,
        keys: Callable[[list[Any]], list[Key]],
        *,
        batch: int = CHUNK,
        shape: RecordShape = MAP_SHAPE,
    ) -> None:
        self.journal = journal
        self.keys = keys
        self.batch = batch
        self.shape = shape
        #: Whether the journal keeps records: if not, a done item's record is not built.
        self._build = journal.keeps_payloads
        self._pending: list[Record] = []  # failures, and results of chunks holding failures
        self._done_keys: list[Key] = []  # results of chunks without failures, by column
        self._done_payloads: list[Any] = []
        self._due = time.monotonic() + RECORD_DELAY
        self._closed = False

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        chunk_keys = self.keys(inputs)
        if Failure not in map(type, values):  # the usual chunk: all done
            if self._pending:
                self._record_pending()
            n = len(values)
            self._done_keys += chunk_keys
            self._done_payloads += (
                map(self.shape.result, inputs, values) if self._build else repeat(None, n)
            )
            self.written += n
        else:
            self._record_done()
            self._add_mixed(chunk_keys, inputs, values)
        if len(self._pending) + len(self._done_keys) >= self.batch or (
            time.monotonic() >= self._due
        ):
            self.flush()

    def _add_mixed(self, keys: list[Key], inputs: list[Any], values: list[Any]) -> None:
        as_record, as_failure = self.shape.result, self.shape.failure
        pending = self._pending
        for key, item, value in zip(keys, inputs, values, strict=True):
            if type(value) is Failure:
                value = as_failure(value, item)
                payload = value.to_dict()
                payload["input"] = item
                payload["key"] = key_text(key)
                pending.append(
                    Record(key, "failed", value.attempts, value.error, value.message, payload)
                )
                self.failed += 1
            else:
                pending.append(Record(key, "done", 1, None, None, as_record(item, value)))
                self.written += 1

    def flush(self) -> None:
        """Hand what the sink holds to the journal (which commits on its own schedule)."""
        self._record_done()
        self._record_pending()
        self._due = time.monotonic() + RECORD_DELAY

    def _record_done(self) -> None:
        if self._done_keys:
            keys, payloads = self._done_keys, self._done_payloads
            self._done_keys, self._done_payloads = [], []
            self.journal.record_done(keys, payloads)

    def _record_pending(self) -> None:
        if self._pending:
            out, self._pending = self._pending, []
            self.journal.record(out)

    def close(self) -> None:
        """Record what the sink holds, then close the journal (its last commit). What came
        back before a stop or an error is kept if it can be; a broken journal keeps its
        last commit. Does nothing the second time."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(SpindleError):
                self.flush()
        finally:
            self.journal.close()
