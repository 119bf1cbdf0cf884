"""``spindle status``: the text and the ``--json`` dict rendered from a journal file."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from spindle.connectors import FailuresOutput, JsonlOutput
from spindle.journal import (
    JournalCorrupt,
    JournalError,
    MemoryJournal,
    Record,
    SqliteJournal,
    read_status,
    render_status,
    status_dict,
    status_text,
)
from spindle.journal import _commit as commit_module
from spindle.observe.report import to_json

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
        "j.set_report_source(lambda: {'status': 'running', 'elapsed': 1.5, 'done': 3})\n"
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
    text = render_status(status)
    assert "interrupted (resume by running the same command)" in text
    # The report as of the last commit, stored before the process died.
    assert status.report is not None and status.report_state() == "interrupted"
    assert (status.report.final, status.report.report["done"]) == (False, 3)
    assert "report of run 1: interrupted (the process died); as of 1.5 s into the run" in text
    assert "  3 items done, 0 failed" in text


def test_status_of_something_else(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        read_status(tmp_path / "missing.db")
    (tmp_path / "x.db").write_bytes(b"garbage" * 100)
    with pytest.raises(JournalCorrupt):
        read_status(tmp_path / "x.db")


# -- the run's report ---------------------------------------------------------------


def fake_report(done: int, *, status: str = "running") -> dict[str, Any]:
    """What ``observe.report.to_json`` makes of a one-stage run's snapshot."""
    return to_json(
        {
            "elapsed": 2.0,
            "status": status,
            "total": 10,
            "stages": [
                {
                    "name": "parse",
                    "kind": "cpu",
                    "done": done,
                    "failed": 1,
                    "retried": 3,
                    "restarts": 2,
                    "workers": 4,
                    "latency": {
                        "count": done + 1,
                        "mean": 0.01,
                        "p50": 0.004,
                        "p95": 0.02,
                        "p99": 0.05,
                        "max": 0.1,
                    },
                }
            ],
        }
    )


class Source:
    """A report source that counts its calls; each report says how many came before."""

    def __init__(self) -> None:
        self.calls = 0
        self.status = "running"

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return dict(fake_report(self.calls, status=self.status))


def cells(line: str) -> list[str]:
    """The cells of a row of the report's table (two spaces or more between cells)."""
    return re.split(r"\s{2,}", line.strip())


def stored_reports(path: Path) -> list[tuple[int, int, dict[str, Any]]]:
    """(run, final, report) of each row of the reports table."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT run, final, report FROM reports ORDER BY run").fetchall()
    finally:
        conn.close()
    return [(run, final, orjson.loads(text)) for run, final, text in rows]


def test_report_is_stored_with_commits_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    source = Source()
    with SqliteJournal(path, "fp", commit_interval=0) as j:
        j.set_report_source(source)
        assert stored_reports(path) == []  # nothing before the first commit
        j.mark_started(["a", "b", "c"])
        j.record([Record.done("a")])  # a commit: stores the report
        assert source.calls == 1
        [(run, final, report)] = stored_reports(path)
        assert (run, final, report["stages"][0]["done"]) == (1, 0, 1)
        live = read_status(path)
        assert live.report is not None and live.report_state() == "running"
        assert "report of run 1: running; as of 2.0 s into the run" in (render_status(live))
        # At most one report a second, whatever the commit interval: the next commits
        # within that second store none.
        monkeypatch.setattr(commit_module, "_REPORT_INTERVAL", 3600.0)
        j.record([Record.done("b")])
        assert source.calls == 1
        j.flush()
        assert source.calls == 1
        source.status = "done"
    # close(): the final report, whatever the interval.
    assert source.calls == 2
    [(run, final, report)] = stored_reports(path)
    assert (run, final, report["status"], report["stages"][0]["done"]) == (1, 1, "done", 2)
    status = read_status(path)
    assert status.report is not None
    assert (status.report.run, status.report.final, status.report_state()) == (1, True, "ended")
    text = render_status(status)
    assert "report of run 1: ended (done) after 2.0 s" in text
    assert "  2 of 10 items done, 1 failed, 3 retried, 2 restarts" in text
    header = cells(next(line for line in text.splitlines() if "p50" in line))
    assert header == [
        *("stage", "kind", "done", "failed", "retried", "restarts", "items/s"),
        *("mean", "p50", "p90", "p95", "p99", "max"),
    ]
    row = cells(next(line for line in text.splitlines() if line.strip().startswith("parse")))
    assert row[:6] == ["parse", "cpu", "2", "1", "3", "2"]
    # mean, p50, p90 (not in the fake snapshot), p95, p99, max
    assert row[7:] == ["10 ms", "4 ms", "-", "20 ms", "50 ms", "100 ms"]

    info = status_dict(path)
    assert orjson.loads(orjson.dumps(info)) == info
    assert info["report"] == report
    assert info["report_run"]["run"] == 1 and info["report_run"]["state"] == "ended"
    assert info["report_run"]["final"] is True


def test_each_run_stores_its_own_report(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    for keys in (["a"], ["b"]):
        with SqliteJournal(path, "fp") as j:
            j.set_report_source(Source())
            j.mark_started(keys)
            j.record([Record.done(keys[0])])
    assert [(run, final) for run, final, _ in stored_reports(path)] == [(1, 1), (2, 1)]
    # A third run that stores no report (an older spindle, or killed before its first
    # commit): status shows run 2's and says so.
    with SqliteJournal(path, "fp"):
        pass
    status = read_status(path)
    assert status.report is not None and status.report.run == 2
    assert "report of run 2 (runs after it, up to 3, stored none): ended" in render_status(status)

    # --force starts over: the reports go with the items and runs.
    with SqliteJournal(path, "fp", force=True):
        pass
    assert stored_reports(path) == []
    assert read_status(path).report is None


def test_a_report_source_that_fails_leaves_the_run_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "journal.db"
    calls = []

    def broken() -> dict[str, Any]:
        calls.append(1)
        raise RuntimeError("no figures")

    with SqliteJournal(path, "fp", commit_interval=0) as j:
        j.set_report_source(broken)
        j.mark_started(["a", "b"])
        j.record([Record.done("a")])
        j.record([Record.done("b")])
    assert len(calls) == 1  # asked once, then no more
    assert read_status(path).done == 2
    assert stored_reports(path) == []
    err = capsys.readouterr().err
    assert "the run's report could not be stored" in err and "RuntimeError: no figures" in err


def test_journal_made_before_reports_existed(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    fill(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE reports")  # as a journal written before the table existed
    conn.commit()
    conn.close()

    status = read_status(path)
    assert status.report is None and (status.done, status.failed) == (5, 4)
    assert "report of run" not in render_status(status)
    info = status_dict(path)
    assert info["report"] is None and info["report_run"] is None
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:  # status only reads: the table is still missing
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'reports'").fetchone() is None
    finally:
        conn.close()

    # Opened for writing (a resume), it gets the table, and the run stores its report.
    with SqliteJournal(
        path,
        "fp",
        output=JsonlOutput(tmp_path / "out.jsonl"),
        failures=FailuresOutput(tmp_path / "failures.jsonl"),
    ) as j:
        j.set_report_source(Source())
        j.mark_started(["k9"])
        j.record([Record.done("k9", {"k": "k9"})])
    status = read_status(path)
    assert status.done == 6
    assert status.report is not None and status.report.run == 2


def test_a_damaged_report_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with SqliteJournal(path, "fp") as j:
        j.set_report_source(Source())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE reports SET report = 'not json{'")
    conn.commit()
    conn.close()
    status = read_status(path)
    assert status.report is None and status.runs[0].state == "finished"

    # Valid JSON with keys missing (an older or newer report): zeros where it has none.
    conn = sqlite3.connect(path)
    conn.execute("""UPDATE reports SET report = '{"done": 7, "stages": [{"name": "x"}]}'""")
    conn.commit()
    conn.close()
    status = read_status(path)
    assert status.report is not None
    assert status.report.report["done"] == 7
    assert status.report.report["stages"][0]["latency"]["p99"] == 0.0
    row = next(line for line in render_status(status).splitlines() if line.startswith("  x "))
    assert cells(row) == ["x", "0", "0", "0", "0", "0", *["-"] * 6]


def test_memory_journal_shows_the_report_too() -> None:
    source = Source()
    j = MemoryJournal()
    j.set_report_source(source)
    live = j.summary()
    assert live.report is not None and live.report_state() == "running"
    j.close()
    ended = j.summary()
    assert ended.report is not None and ended.report_state() == "ended"
    assert source.calls == 2
    assert "report of run 1: ended" in render_status(ended)
