"""``spindle status``: the text and the ``--json`` dict rendered from a journal file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from spindle.journal import (
    JournalCorrupt,
    JournalError,
    Record,
    SqliteJournal,
    read_status,
    render_status,
    status_dict,
    status_text,
)
from spindle.outputs import FailuresOutput, JsonlOutput

ROOT = Path(__file__).parents[2]


def fill(path: Path) -> None:
    with SqliteJournal(
        path / "journal.db",
        "fp",
        output=JsonlOutput(path / "out.jsonl"),
        failures=FailuresOutput(path / "failures.jsonl"),
    ) as j:
        keys = [f"k{i}" for i in range(10)]
        j.mark_started(keys)
        records = [Record.done(k, {"k": k}) for k in keys[:5]]
        records += [Record.failed(k, "TimeoutError", f"timed out on {k}") for k in keys[5:8]]
        records += [Record.failed("k8", "ValueError", "bad value\nsecond line")]
        j.record(records)  # k9 never finishes: pending


def test_status_text(tmp_path: Path) -> None:
    fill(tmp_path)
    text = status_text(tmp_path / "journal.db")
    assert "state     finished" in text
    assert "done      5" in text
    assert "failed    4" in text
    assert "pending   1" in text
    assert "runs      1" in text and "items/s" in text
    assert f"results   jsonl:{tmp_path / 'out.jsonl'}" in text
    lines = text.splitlines()
    i = lines.index("failures by reason:")
    assert lines[i + 1].split() == ["3", "TimeoutError:", "timed", "out", "on", "k5"]
    assert lines[i + 2].strip() == "e.g. key k5"
    assert lines[i + 3].split() == ["1", "ValueError:", "bad", "value"]  # first line only


def test_status_dict_is_json(tmp_path: Path) -> None:
    fill(tmp_path)
    info = status_dict(tmp_path / "journal.db")
    assert orjson.loads(orjson.dumps(info)) == info
    assert info["totals"] == {"done": 5, "failed": 4, "pending": 1, "in_flight": 0, "total": 10}
    assert info["running"] is False
    assert info["failures"][0] == {
        "error": "TimeoutError",
        "count": 3,
        "example_key": "k5",
        "example_message": "timed out on k5",
    }
    assert info["runs"][0]["state"] == "finished"
    assert info["elapsed_seconds"] >= 0 and info["throughput_per_second"] >= 0
    assert set(info["outputs"]) == {"results", "failures"}


def test_status_of_a_running_journal(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "journal.db", "fp", commit_interval=0) as j:
        j.mark_started(["a", "b"])
        j.record([Record.done("a")])
        status = read_status(tmp_path / "journal.db")
        assert status.running and status.runs[-1].state == "running"
        assert (status.done, status.pending) == (1, 1)
        live = j.summary()
        assert live.in_flight == 1 and live.running
        assert "(1 in flight)" in render_status(live)


def test_status_of_an_interrupted_run(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from spindle.journal import SqliteJournal, Record\n"
        "j = SqliteJournal(sys.argv[1], 'fp', commit_interval=0)\n"
        "j.mark_started([b'\\x01\\x02', b'\\x03'])\n"
        "j.record([Record.failed(b'\\x01\\x02', 'OSError', 'disk')])\n"
        "os._exit(0)\n"  # dies without closing the journal
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "journal.db")],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    status = read_status(tmp_path / "journal.db")
    assert status.runs[-1].state == "interrupted" and not status.running
    assert status.failures[0].example_key == "0102"  # bytes keys are shown in hex
    assert status.pending == 1
    assert "interrupted (resume by running the same command)" in render_status(status)


def test_status_of_something_else(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        read_status(tmp_path / "missing.db")
    (tmp_path / "x.db").write_bytes(b"garbage" * 100)
    with pytest.raises(JournalCorrupt):
        read_status(tmp_path / "x.db")
