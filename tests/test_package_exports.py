"""The public surface of spindle.journal, spindle.connectors and spindle.cache, pinned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import spindle.cache
import spindle.connectors
import spindle.journal

JOURNAL = {
    "DONE",
    "FAILED",
    "PENDING",
    "FailureGroup",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalMismatch",
    "JournalStats",
    "JournalStatus",
    "JournalSink",
    "JournaledRun",
    "Key",
    "KeyFunction",
    "MissingKey",
    "RecordShape",
    "RunOutcome",
    "MemoryJournal",
    "Record",
    "ReportSource",
    "RunInfo",
    "RunReport",
    "SqliteJournal",
    "State",
    "item_states",
    "journal_timeline",
    "keys_for",
    "field_key",
    "open_journal",
    "run_journaled",
    "read_status",
    "render_status",
    "status_dict",
    "status_text",
}

CONNECTORS = {
    # the interfaces, and their in-memory fakes
    "Source",
    "Sink",
    "MemorySource",
    "MemorySink",
    # files: lines in, JSON lines out (a plain run)
    "Items",
    "Lines",
    "read_items",
    "RecordWriter",
    "AppendLines",
    "JsonLine",
    "WRITTEN",
    "WriteFailed",
    "encode_line",
    "json_default",
    # the committed outputs of a journaled run
    "FORMATS",
    "AppendFileOutput",
    "CsvOutput",
    "FailuresOutput",
    "JsonlOutput",
    "Output",
    "ParquetOutput",
    "SqliteOutput",
    "format_for",
    "open_output",
    # one error tree
    "InputError",
    "OutputCorrupt",
    "OutputError",
    "OutputExists",
    "UnwritableRecord",
    # brokers and databases: acknowledged once durable
    "AckSource",
    "Message",
    "MemoryAckSource",
    "StreamRun",
    "DurableLines",
    "RedisStreamSource",
    "RedisStreamSink",
    "RabbitSource",
    "RabbitSink",
    "NatsSource",
    "NatsSink",
    "PostgresSink",
    "PostgresQuerySource",
    "PostgresQueueSource",
    "acknowledges",
    "is_url",
    "open_source",
    "open_sink",
}


CACHE = {
    "Cache",
    "CacheError",
    "CacheStats",
    "Installed",
    "current",
    "install",
    "installed",
    "memoize",
}


def test_journal_exports() -> None:
    assert set(spindle.journal.__all__) == JOURNAL
    for name in JOURNAL:
        assert getattr(spindle.journal, name) is not None


def test_connectors_exports() -> None:
    assert set(spindle.connectors.__all__) == CONNECTORS
    for name in CONNECTORS:
        assert getattr(spindle.connectors, name) is not None
    assert set(spindle.connectors.FORMATS) == {"jsonl", "csv", "sqlite", "parquet"}


def test_cache_exports() -> None:
    assert set(spindle.cache.__all__) == CACHE
    for name in CACHE:
        assert getattr(spindle.cache, name) is not None
    assert callable(spindle.cache)  # spindle.cache() is the current run's cache


def test_importing_connectors_does_not_import_pyarrow() -> None:
    code = "import sys, spindle.connectors; print('pyarrow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert out.stdout.strip() == "False", out.stderr
