"""The journal: which items of a run are done, so that running the same command resumes.

:class:`SqliteJournal` (the default) keeps item states in an SQLite database in WAL mode
and coordinates the output writers of :mod:`spindle.connectors`: each commit makes the
output durable up to a point, then records that point and the items' states in one
transaction. On resume the output is cut back to the recorded point. Execution is at least
once; recording is exactly once: one record per distinct key, none missing, none torn.
A journaled run also stores its report (per-stage counts and latency percentiles) with
its commits, which ``status`` shows after the run, or after its process died.
The mechanism and its guarantees are described in ``docs/journal.md``.
"""

from __future__ import annotations

from ._base import DONE as DONE
from ._base import FAILED as FAILED
from ._base import PENDING as PENDING
from ._base import Journal as Journal
from ._base import JournalStats as JournalStats
from ._base import Key as Key
from ._base import Record as Record
from ._base import ReportSource as ReportSource
from ._base import State as State
from ._driver import JournaledRun as JournaledRun
from ._driver import RunOutcome as RunOutcome
from ._driver import open_journal as open_journal
from ._driver import run_journaled as run_journaled
from ._errors import JournalCorrupt as JournalCorrupt
from ._errors import JournalError as JournalError
from ._errors import JournalLocked as JournalLocked
from ._errors import JournalMismatch as JournalMismatch
from ._keys import KeyFunction as KeyFunction
from ._keys import MissingKey as MissingKey
from ._keys import field_key as field_key
from ._keys import keys_for as keys_for
from ._memory import MemoryJournal as MemoryJournal
from ._sink import JournalSink as JournalSink
from ._sink import RecordShape as RecordShape
from ._sqlite import SqliteJournal as SqliteJournal
from ._status import item_states as item_states
from ._status import read_status as read_status
from ._status import render_status as render_status
from ._status import status_dict as status_dict
from ._status import status_text as status_text
from ._summary import FailureGroup as FailureGroup
from ._summary import JournalStatus as JournalStatus
from ._summary import RunInfo as RunInfo
from ._summary import RunReport as RunReport
from ._timeline import journal_timeline as journal_timeline

__all__ = [
    "DONE",
    "FAILED",
    "PENDING",
    "FailureGroup",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalMismatch",
    "JournalSink",
    "JournalStats",
    "JournalStatus",
    "JournaledRun",
    "Key",
    "KeyFunction",
    "MemoryJournal",
    "MissingKey",
    "Record",
    "RecordShape",
    "ReportSource",
    "RunInfo",
    "RunOutcome",
    "RunReport",
    "SqliteJournal",
    "State",
    "field_key",
    "item_states",
    "journal_timeline",
    "keys_for",
    "open_journal",
    "read_status",
    "render_status",
    "run_journaled",
    "status_dict",
    "status_text",
]
