"""The public surface of spindle.journal and spindle.outputs, pinned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import spindle.journal
import spindle.outputs

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
    "Key",
    "MemoryJournal",
    "Record",
    "ReportSource",
    "RunInfo",
    "RunReport",
    "SqliteJournal",
    "State",
    "item_states",
    "read_status",
    "render_status",
    "status_dict",
    "status_text",
}

OUTPUTS = {
    "FORMATS",
    "AppendFileOutput",
    "CsvOutput",
    "FailuresOutput",
    "JsonlOutput",
    "Output",
    "OutputCorrupt",
    "OutputError",
    "OutputExists",
    "ParquetOutput",
    "SqliteOutput",
    "UnwritableRecord",
    "format_for",
    "open_output",
}


def test_journal_exports() -> None:
    assert set(spindle.journal.__all__) == JOURNAL
    for name in JOURNAL:
        assert getattr(spindle.journal, name) is not None


def test_outputs_exports() -> None:
    assert set(spindle.outputs.__all__) == OUTPUTS
    for name in OUTPUTS:
        assert getattr(spindle.outputs, name) is not None
    assert set(spindle.outputs.FORMATS) == {"jsonl", "csv", "sqlite", "parquet"}


def test_importing_outputs_does_not_import_pyarrow() -> None:
    code = "import sys, spindle.outputs; print('pyarrow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "False", out.stderr
