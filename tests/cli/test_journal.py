"""`spindle map --journal` and `spindle status`, run as a user runs them.

Calls of the job are counted through a side channel (``journal_jobs.counted`` appends each
input to a file), so "skipped" means "never ran", not "not written twice". The crash tests
SIGKILL a run at random moments, resume it, and check that the output holds exactly one
correct record per distinct input and that the journal agrees.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from journal_jobs import FAIL_EVERY

from spindle.journal import JournalError, read_status

HERE = Path(__file__).parents[1]  # tests/
JOBS = HERE / "journal_jobs.py"


def spindle(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spindle", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def job(name: str) -> str:
    return f"{JOBS}:{name}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def calls(work: Path) -> list[str]:
    path = work / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def status(work: Path, journal: str = "j.db") -> dict[str, Any]:
    out = spindle("status", journal, "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "nums.txt").write_text("".join(f"{i}\n" for i in range(1, 1001)))
    return tmp_path


def env_for(work: Path, **extra: str) -> dict[str, str]:
    return {"SPINDLE_TEST_CALLS": str(work / "calls.txt"), **extra}


def mapped(
    work: Path, *args: str, fn: str = "counted", **env: str
) -> subprocess.CompletedProcess[str]:
    return spindle(
        "map",
        job(fn),
        "nums.txt",
        "-o",
        "out.jsonl",
        "--journal",
        "j.db",
        "-q",
        *args,
        cwd=work,
        env=env_for(work, **env),
    )


# -- resume, retries, duplicates, keys ----------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_resume_runs_only_what_is_not_done(work: Path, sig: str, code: int) -> None:
    # The job stops its own run with a signal at item 500 and blocks: one worker, one item
    # at a time, so items before 500 are done and item 500 is in flight. The run records
    # what finished, closes the journal and exits 143 (SIGTERM) or 130 (Ctrl-C).
    env = {"SPINDLE_TEST_STOPPED": str(work / "stopped"), "SPINDLE_TEST_SIGNAL": sig}
    args = ["--kind", "cpu", "--workers", "1", "--batch-size", "1"]
    first = mapped(work, *args, "--grace", "0", fn="stop_parent_at_500", **env)
    assert first.returncode == code, first.stderr
    assert "interrupted after" in first.stderr
    before = status(work)["totals"]
    assert 0 < before["done"] < 500
    assert before["pending"] >= 1  # item 500 at least: claimed, never recorded
    assert before["done"] + before["pending"] <= 1000
    assert [run["state"] for run in status(work)["runs"]] == ["finished"]
    # The run ended (it closed the journal) and stored its final report: stopped. The
    # report counts the jobs that finished; the stop may drop a result on its way to
    # being recorded (its item stays pending and runs again).
    stopped = status(work)
    assert stopped["report_run"]["state"] == "ended" and stopped["report_run"]["final"]
    assert stopped["report"]["status"] == "stopped"
    assert before["done"] <= stopped["report"]["done"] <= before["done"] + before["pending"]
    ran_first = len(calls(work))
    assert len(read_jsonl(work / "out.jsonl")) == before["done"]

    second = mapped(work, *args, fn="stop_parent_at_500", **env)
    assert second.returncode == 0, second.stderr
    # Exactly the items not recorded ran again; the done ones never did.
    assert len(calls(work)) - ran_first == 1000 - before["done"]
    records = read_jsonl(work / "out.jsonl")
    assert sorted(int(r["input"]) for r in records) == list(range(1, 1001))
    assert all(r["result"] == r["input"] for r in records)
    after = status(work)
    assert after["totals"] == {
        "done": 1000,
        "failed": 0,
        "pending": 0,
        "in_flight": 0,
        "total": 1000,
    }
    assert [run["state"] for run in after["runs"]] == ["finished", "finished"]

    third = mapped(work, *args, fn="stop_parent_at_500", **env)
    assert third.returncode == 0, third.stderr
    assert len(calls(work)) - ran_first == 1000 - before["done"]  # nothing ran
    assert "skipped 1,000 already recorded" in third.stderr


@pytest.mark.timeout(180)
def test_second_ctrl_c_stops_at_once_and_the_journal_stays_whole(work: Path) -> None:
    # The first Ctrl-C comes from the job at item 500, which then blocks; with a grace of
    # two minutes only the second Ctrl-C, sent once the first was handled, ends the run.
    env = env_for(work, SPINDLE_TEST_STOPPED=str(work / "stopped"), SPINDLE_TEST_SIGNAL="SIGINT")
    args = ["map", job("stop_parent_at_500"), "nums.txt", "-o", "out.jsonl", "--journal", "j.db"]
    args += ["--workers", "1", "--batch-size", "1", "--grace", "120", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "spindle", *args],
        cwd=work,
        env={**os.environ, **env, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "stopping: no new jobs" in line, line
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # show where it is stuck (PYTHONFAULTHANDLER)
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail(f"no exit 60 s after the second Ctrl-C:\n{proc.stderr.read()}")
        err = proc.stderr.read()
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert "interrupted after" in err
    before = status(work)["totals"]
    assert 0 < before["done"] < 500
    assert len(read_jsonl(work / "out.jsonl")) == before["done"]

    again = mapped(work, "--workers", "1", fn="stop_parent_at_500", **env)
    assert again.returncode == 0, again.stderr
    records = read_jsonl(work / "out.jsonl")
    assert sorted(int(r["input"]) for r in records) == list(range(1, 1001))
    assert status(work)["totals"]["done"] == 1000


def test_retry_failed_runs_only_the_failed_items(work: Path) -> None:
    fixed = work / "fixed"
    first = mapped(work, SPINDLE_TEST_FIXED=str(fixed))
    assert first.returncode == 1, first.stderr
    assert len(calls(work)) == 1000
    assert len(read_jsonl(work / "out.jsonl")) == 1000 - 142
    failures = read_jsonl(work / "out.jsonl.failures.jsonl")
    assert sorted(int(f["input"]) for f in failures) == list(range(7, 1001, 7))
    assert {f["error"] for f in failures} == {"ValueError"}
    assert all(f["traceback"] and f["key"] for f in failures)

    again = mapped(work, SPINDLE_TEST_FIXED=str(fixed))
    assert again.returncode == 1  # the journal still holds failures
    assert len(calls(work)) == 1000  # nothing ran: failed items wait for --retry-failed

    fixed.touch()
    retry = mapped(work, "--retry-failed", SPINDLE_TEST_FIXED=str(fixed))
    assert retry.returncode == 0, retry.stderr
    assert sorted(int(x) for x in calls(work)[1000:]) == list(range(7, 1001, 7))
    records = read_jsonl(work / "out.jsonl")
    assert sorted(int(r["input"]) for r in records) == list(range(1, 1001))
    assert status(work)["totals"]["failed"] == 0


def test_duplicate_inputs_run_once(work: Path) -> None:
    lines = [f"{i % 300}\n" for i in range(1000)]  # 300 distinct values, most repeated
    (work / "nums.txt").write_text("".join(lines))
    out = mapped(work, "--unordered", SPINDLE_TEST_FIXED=str(work / "fixed"))
    assert out.returncode == 1, out.stderr  # multiples of 7 fail
    assert sorted(Counter(calls(work)).values()) == [1] * 300
    records = read_jsonl(work / "out.jsonl")
    failures = read_jsonl(work / "out.jsonl.failures.jsonl")
    assert len(records) + len(failures) == 300
    assert len({r["input"] for r in records} | {f["input"] for f in failures}) == 300
    assert "and 700 duplicates" in out.stderr
    totals = status(work)["totals"]
    assert (totals["done"], totals["failed"]) == (300 - 43, 43)


def test_key_field_identifies_items(work: Path) -> None:
    rows = [{"id": f"u{i % 50}", "v": i} for i in range(100)]  # each id twice, other values differ
    rows.append({"v": 7})  # no id: fails, with a message naming the field
    rows.append({"id": None, "v": 8})
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, "{not json")
    (work / "in.jsonl").write_text("\n".join(lines) + "\n")
    args = ["map", job("counted_record"), "in.jsonl", "--format", "jsonl", "-o", "out.jsonl"]
    args += ["--journal", "j.db", "--key", "id", "-q"]
    out = spindle(*args, cwd=work, env=env_for(work))
    assert out.returncode == 1, out.stderr
    assert sorted(calls(work)) == sorted(f"u{i}" for i in range(50))
    records = read_jsonl(work / "out.jsonl")
    assert sorted(r["input"]["id"] for r in records) == sorted(f"u{i}" for i in range(50))
    assert all(r["input"]["v"] < 50 for r in records)  # the first occurrence ran
    failures = read_jsonl(work / "out.jsonl.failures.jsonl")
    by_input = {
        json.dumps(f["input"], sort_keys=True): (f["error"], f["message"]) for f in failures
    }
    assert len(failures) == 3
    missing, null, malformed = (
        by_input['{"v": 7}'],
        by_input['{"id": null, "v": 8}'],
        by_input['"{not json"'],
    )
    assert missing[0] == "MissingKey" and "--key id: the field 'id' is missing" in missing[1]
    assert null[0] == "MissingKey" and "'id' is null" in null[1]
    assert malformed[0] == "MalformedInput" and "line 11" in malformed[1]
    text = spindle("status", "j.db", cwd=work).stdout
    assert "2  MissingKey: --key id" in text and "1  MalformedInput: line 11" in text

    again = spindle(*args, cwd=work, env=env_for(work))
    assert again.returncode == 1
    assert len(calls(work)) == 50  # resumed by id: nothing ran again

    bad = spindle(
        "map",
        job("counted"),
        "nums.txt",
        "-o",
        "o2.jsonl",
        "--journal",
        "j2.db",
        "--key",
        "id",
        cwd=work,
    )
    assert bad.returncode == 2
    assert "--format jsonl" in bad.stderr


def test_standard_input_and_unordered_threads(work: Path) -> None:
    lines = "".join(f"{i}\n" for i in range(1, 201))
    args = ["map", job("triple"), "-", "-o", "out.jsonl", "--journal", "j.db", "-q"]
    args += ["--kind", "thread", "--unordered"]
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "spindle", *args],
            cwd=work,
            input=lines,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    assert "skipped 200 already recorded" in out.stderr
    records = read_jsonl(work / "out.jsonl")
    assert sorted((int(r["input"]), r["result"]) for r in records) == [
        (i, 3 * i) for i in range(1, 201)
    ]


def test_run_journaled_from_python(tmp_path: Path) -> None:
    import threading

    import spindle
    from spindle.journal import run_journaled

    seen: list[int] = []
    lock = threading.Lock()

    def work(record: dict[str, int]) -> int:
        with lock:
            seen.append(record["v"])
        if record["id"] == 13:
            raise KeyError("thirteen")
        return record["v"] * 10

    items = [{"id": i % 30, "v": i} for i in range(60)]
    pipeline = spindle.Pipeline([spindle.thread(work, workers=4)], on_error="yield")
    out, journal = tmp_path / "o.jsonl", tmp_path / "j.db"
    first = run_journaled(pipeline, items, output=out, journal=journal, key="id")
    assert (first.done, first.failed, first.skipped_duplicate) == (29, 1, 30)
    assert sorted(seen) == list(range(30))
    again = run_journaled(pipeline, items, output=out, journal=journal, key="id")
    assert (again.done, again.failed) == (0, 0)
    assert again.skipped_done + again.skipped_duplicate == 60
    assert len(seen) == 30
    assert sorted(r["result"] for r in read_jsonl(out)) == [10 * i for i in range(30) if i != 13]

    flat = spindle.Pipeline([spindle.thread(lambda x: (yield x))], on_error="yield")
    with pytest.raises(spindle.ConfigError, match="return a list instead"):
        run_journaled(flat, items, output=tmp_path / "f.jsonl", journal=tmp_path / "f.db")
    assert not (tmp_path / "f.db").exists()


# -- refusing what would lose or mix results ----------------------------------------


def test_journal_of_another_command_is_refused_unless_forced(work: Path) -> None:
    assert mapped(work, fn="triple").returncode == 0
    first = (work / "out.jsonl").read_bytes()
    (work / "other.txt").write_text("1\n2\n")
    for args in (
        ["map", job("counted"), "nums.txt"],  # another function
        ["map", job("triple"), "other.txt"],  # another input
        ["map", job("triple"), "nums.txt", "--format", "jsonl"],  # another input format
    ):
        out = spindle(*args, "-o", "out.jsonl", "--journal", "j.db", cwd=work, env=env_for(work))
        assert out.returncode == 2, (args, out.stderr)
        assert "made by another command" in out.stderr
        assert "--force" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert (work / "out.jsonl").read_bytes() == first
    assert calls(work) == []

    forced = mapped(work, "--force", SPINDLE_TEST_FIXED=str(work / "fixed"))
    assert forced.returncode == 1, forced.stderr  # multiples of 7 fail
    records = read_jsonl(work / "out.jsonl")
    assert len(records) == 1000 - 142
    assert all(r["result"] == 2 * int(r["input"]) for r in records)
    assert len(calls(work)) == 1000


def test_corrupt_journal_is_reported_and_left_alone(work: Path) -> None:
    garbage = b"this is not a database\n" * 100
    (work / "j.db").write_bytes(garbage)
    out = mapped(work)
    assert out.returncode == 2
    assert "not a spindle journal" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert (work / "j.db").read_bytes() == garbage
    assert not (work / "out.jsonl").exists() or (work / "out.jsonl").stat().st_size == 0
    assert calls(work) == []
    st = spindle("status", "j.db", cwd=work)
    assert st.returncode == 2
    assert "not a" in st.stderr

    sqlite3.connect(work / "other.db").execute("CREATE TABLE t (x)").connection.close()
    out = spindle(
        "map", job("counted"), "nums.txt", "-o", "o.jsonl", "--journal", "other.db", cwd=work
    )
    assert out.returncode == 2
    assert "not a spindle journal" in out.stderr


@pytest.mark.parametrize(
    ("output", "journal", "says"),
    [
        ("missing/out.jsonl", "j.db", "missing"),
        ("out.jsonl", "missing/j.db", "missing"),
        ("afile/out.jsonl", "j.db", "afile"),
        ("out.jsonl", "afile/j.db", "afile"),
        ("out.jsonl", "adir", "is a directory"),
        ("-", "j.db", "output file, not -"),
        ("out.json", "j.db", "extension"),
    ],
)
def test_unwritable_paths_fail_at_start(work: Path, output: str, journal: str, says: str) -> None:
    (work / "afile").write_text("a file, not a directory\n")
    (work / "adir").mkdir()
    out = spindle(
        "map",
        job("counted"),
        "nums.txt",
        "-o",
        output,
        "--journal",
        journal,
        cwd=work,
        env=env_for(work),
    )
    assert out.returncode == 2, out.stderr
    assert says in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert calls(work) == []
    assert not (work / "j.db").exists()  # no journal left behind naming this command


def test_read_only_directory_fails_at_start(work: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for output, journal in (("ro/out.jsonl", "j.db"), ("out.jsonl", "ro/j.db")):
            out = spindle(
                "map", job("counted"), "nums.txt", "-o", output, "--journal", journal, cwd=work
            )
            assert out.returncode == 2, out.stderr
            assert "ro/" in out.stderr
            assert len(out.stderr.strip().splitlines()) == 1
    finally:
        ro.chmod(0o755)


def test_other_refusals(work: Path) -> None:
    out = spindle(
        "map",
        job("counted"),
        "nums.txt",
        "-o",
        "o.jsonl",
        "--retry-failed",
        "--key",
        "id",
        cwd=work,
    )
    assert out.returncode == 2
    assert "--key, --retry-failed apply only to a journaled run" in out.stderr
    out = spindle("map", job("several"), "nums.txt", "-o", "o.jsonl", "--journal", "j.db", cwd=work)
    assert out.returncode == 2
    assert "generator function" in out.stderr
    assert not (work / "j.db").exists()
    # An output that holds data the journal did not write is not overwritten.
    (work / "taken.jsonl").write_text('{"someone": "else"}\n')
    out = spindle(
        "map", job("counted"), "nums.txt", "-o", "taken.jsonl", "--journal", "j.db", cwd=work
    )
    assert out.returncode == 2
    assert "already exists" in out.stderr
    assert (work / "taken.jsonl").read_text() == '{"someone": "else"}\n'


# -- output formats -------------------------------------------------------------------


def _rows_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["input", "result"]
        return [(a, b) for a, b in reader]


def _rows_sqlite(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return [(str(a), str(b)) for a, b in conn.execute("SELECT input, result FROM results")]
    finally:
        conn.close()


def _rows_parquet(path: Path) -> list[tuple[str, str]]:
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(path)
    return [
        (str(a), str(b))
        for a, b in zip(table["input"].to_pylist(), table["result"].to_pylist(), strict=True)
    ]


@pytest.mark.parametrize(
    ("output", "extra", "read"),
    [
        ("out.csv", [], _rows_csv),
        ("out.sqlite", [], _rows_sqlite),
        ("out.db", [], _rows_sqlite),
        ("out.parquet", [], _rows_parquet),
        ("results.data", ["--output-format", "csv"], _rows_csv),
    ],
)
def test_output_formats(work: Path, output: str, extra: list[str], read: Any) -> None:
    fixed = work / "fixed"
    args = ["map", job("counted"), "nums.txt", "-o", output, "--journal", "j.db", "-q", *extra]
    first = spindle(*args, cwd=work, env=env_for(work, SPINDLE_TEST_FIXED=str(fixed)))
    assert first.returncode == 1, first.stderr
    rows = read(work / output)
    assert sorted(int(a) for a, _ in rows) == [i for i in range(1, 1001) if i % 7]
    assert all(int(b) == 2 * int(a) for a, b in rows)
    assert len(read_jsonl(work / f"{output}.failures.jsonl")) == 142
    fixed.touch()
    retry = spindle(
        *args, "--retry-failed", cwd=work, env=env_for(work, SPINDLE_TEST_FIXED=str(fixed))
    )
    assert retry.returncode == 0, retry.stderr
    rows = read(work / output)
    assert sorted(int(a) for a, _ in rows) == list(range(1, 1001))
    assert len(calls(work)) == 1000 + 142


# -- status -----------------------------------------------------------------------------


def test_status_text_json_and_plot(work: Path) -> None:
    out = mapped(work, SPINDLE_TEST_FIXED=str(work / "fixed"))
    assert out.returncode == 1
    text = spindle("status", "j.db", cwd=work)
    assert text.returncode == 0, text.stderr
    for expected in (
        "state     finished",
        "done      858",
        "failed    142",
        "pending   0",
        "items/s",
        "failures by reason:",
        "142  ValueError: ",
        "e.g. key ",
    ):
        assert expected in text.stdout, text.stdout
    data = status(work)
    assert data["totals"] == {
        "done": 858,
        "failed": 142,
        "pending": 0,
        "in_flight": 0,
        "total": 1000,
    }
    assert data["running"] is False
    assert data["elapsed_seconds"] >= 0 and data["throughput_per_second"] >= 0
    [group] = data["failures"]
    assert group["error"] == "ValueError" and group["count"] == 142
    assert "multiple of 7" in group["example_message"]
    assert data["outputs"]["results"].endswith("out.jsonl")

    pytest.importorskip("matplotlib")
    plotted = spindle("status", "j.db", "--plot", "run.png", cwd=work)
    assert plotted.returncode == 0, plotted.stderr
    assert (work / "run.png").read_bytes()[:4] == b"\x89PNG"

    missing = spindle("status", "nope.db", cwd=work)
    assert missing.returncode == 2
    assert "no journal at" in missing.stderr


def cells(line: str) -> list[str]:
    """The cells of a row of the report's table (two spaces or more between cells)."""
    return re.split(r"\s{2,}", line.strip())


def report_table(text: str) -> dict[str, list[str]]:
    """The per-stage table of the report in ``spindle status``'s text: stage -> cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("report of run"))
    header = next(i for i in range(start, len(lines)) if cells(lines[i])[:2] == ["stage", "kind"])
    assert cells(lines[header])[7:] == ["mean", "p50", "p90", "p95", "p99", "max"]
    rows = {}
    for line in lines[header + 1 :]:
        if not line.startswith("  "):
            break
        row = cells(line)
        rows[row[0]] = row
    return rows


def test_status_shows_the_report_of_the_run(work: Path) -> None:
    out = mapped(work, "--workers", "2", "--stats-json", "stats.json")
    assert out.returncode == 1, out.stderr  # multiples of 7 fail
    stats = json.loads((work / "stats.json").read_text())

    text = spindle("status", "j.db", cwd=work)
    assert text.returncode == 0, text.stderr
    assert "\nreport of run 1: ended (done) after " in text.stdout, text.stdout
    assert "  858 items done, 142 failed, 0 retried, 0 restarts, " in text.stdout
    [(name, row)] = report_table(text.stdout).items()
    assert name == "counted" and row[1:6] == ["cpu", "858", "142", "0", "0"]
    assert all(cell != "-" for cell in row[7:])  # mean, p50, p90, p95, p99, max

    # --json: the report of the run, as --stats-json wrote it at the end of the run (the
    # two were taken a moment apart, after the run stopped: only the time differs).
    data = status(work)
    report = data["report"]
    assert data["report_run"]["run"] == 1 and data["report_run"]["state"] == "ended"
    assert data["report_run"]["final"] is True
    assert set(report) == set(stats)
    timed = {"elapsed", "throughput"}
    assert {k: v for k, v in report.items() if k not in timed | {"stages"}} == {
        k: v for k, v in stats.items() if k not in timed | {"stages"}
    }
    [stage] = report["stages"]
    assert {k: v for k, v in stage.items() if k != "throughput"} == {
        k: v for k, v in stats["stages"][0].items() if k != "throughput"
    }
    assert (report["done"], report["failed"], report["status"]) == (858, 142, "done")
    latency = stage["latency"]
    assert latency["count"] == 1000
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]

    # A second run finds every item recorded: its report is of a run that did nothing.
    again = mapped(work)
    assert again.returncode == 1, again.stderr
    data = status(work)
    assert data["report_run"]["run"] == 2
    assert (data["report"]["done"], data["report"]["failed"]) == (0, 0)
    assert data["totals"]["done"] == 858


# -- crashes ------------------------------------------------------------------------------

CRASH_ITEMS = 200_000


def crash_input(path: Path) -> set[int]:
    """0..CRASH_ITEMS-1, every tenth value repeated a little later."""
    values: list[int] = []
    for i in range(CRASH_ITEMS):
        values.append(i)
        if i % 10 == 9:
            values.append(i - 5)
    path.write_text("".join(f"{v}\n" for v in values))
    return set(values)


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> bool:
    """SIGKILL ``proc`` once ``ready()``; False if it ended first.

    There is no event to wait on in another process, so ``ready`` is polled, with a
    bound. The descendants (worker processes, which die with their parent) are waited
    for, so that no stray worker still holds the journal's lock when the run is resumed.
    """
    deadline = time.monotonic() + 60
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, f"{what} within 60 s"
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    return True


def kill_when_output_reaches(proc: subprocess.Popen[bytes], output: Path, size: int) -> bool:
    """SIGKILL ``proc`` once ``output`` holds ``size`` bytes; False if it ended first."""

    def reached() -> bool:
        try:
            return output.stat().st_size >= size
        except FileNotFoundError:
            return False

    return kill_when(proc, reached, "the run made no progress")


def check_crash_results(work: Path, output: Path, distinct: set[int]) -> None:
    failing = {v for v in distinct if v % FAIL_EVERY == 0}
    inputs = Counter()
    for line in output.read_text().splitlines():
        record = json.loads(line)  # a torn line would fail here
        n = int(record["input"])
        assert record["result"] == n * n
        inputs[n] += 1
    assert set(inputs) == distinct - failing
    assert max(inputs.values()) == 1, [n for n, c in inputs.items() if c > 1][:10]
    failures = Counter(
        int(f["input"]) for f in read_jsonl(output.with_name(output.name + ".failures.jsonl"))
    )
    assert set(failures) == failing
    assert max(failures.values()) == 1
    totals = status(work, "crash.db")["totals"]
    assert totals == {
        "done": len(distinct - failing),
        "failed": len(failing),
        "pending": 0,
        "in_flight": 0,
        "total": len(distinct),
    }


def crash_and_resume(
    work: Path, command: list[str], output: Path, distinct: set[int], seed: int
) -> None:
    """Start ``command``, SIGKILL it at 5 random output sizes, then let it finish."""
    print(f"kill moments from random seed {seed}")  # shown if the test fails
    rng = random.Random(seed)
    expected = sum(len(f'{{"input":"{n}","result":{n * n}}}\n') for n in distinct if n % FAIL_EVERY)
    # Up to 70 % of the final size: however far a kill overshoots, the next run still
    # has its 100 kB of progress to make before the end.
    targets = sorted(int(rng.uniform(0.05, 0.7) * expected) for _ in range(5))
    kills = 0
    reached = 0
    for target in targets:
        with open(work / f"run-{kills}.err", "wb") as err:
            proc = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=err)
        # Beyond what the last run left, so that every run makes progress before its kill.
        killed = kill_when_output_reaches(proc, output, max(target, reached + 100_000))
        log = (work / f"run-{kills}.err").read_text()
        assert killed, f"the run ended before its kill (seed {seed}): {log}"
        kills += 1
        reached = output.stat().st_size
        # The journal is readable between runs; the output may hold an uncommitted tail,
        # which the next run cuts off.
        assert status(work, "crash.db")["totals"]["done"] <= len(output.read_bytes().splitlines())
    assert kills >= 5
    final = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert final.returncode in (0, 1), final.stderr


@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    distinct = crash_input(tmp_path / "in.txt")
    seed = random.randrange(1 << 30)
    command = [
        sys.executable,
        "-m",
        "spindle",
        "map",
        job("square_line"),
        "in.txt",
        "-o",
        "out.jsonl",
    ]
    command += ["--journal", "crash.db", "--kind", "cpu", "--workers", "2", "-q"]
    crash_and_resume(tmp_path, command, tmp_path / "out.jsonl", distinct, seed)
    check_crash_results(tmp_path, tmp_path / "out.jsonl", distinct)


@pytest.mark.timeout(180)
def test_sigkill_io_pipeline_at_random_moments_then_resume(tmp_path: Path) -> None:
    distinct = crash_input(tmp_path / "in.txt")
    seed = random.randrange(1 << 30)
    command = [sys.executable, str(JOBS), "in.txt", "out.jsonl", "crash.db"]
    crash_and_resume(tmp_path, command, tmp_path / "out.jsonl", distinct, seed)
    check_crash_results(tmp_path, tmp_path / "out.jsonl", distinct)


@pytest.mark.timeout(180)
def test_status_shows_the_report_of_a_killed_run(tmp_path: Path) -> None:
    # The last input never returns, so the run cannot end; more than commit_items
    # (100 000) results come back before it, so at least one commit, which stores the
    # report, happens before the kill.
    n = 150_000
    (tmp_path / "in.txt").write_text("".join(f"{i}\n" for i in range(n)))
    journal = tmp_path / "j.db"
    command = [sys.executable, "-m", "spindle", "map", job("square_or_hold"), "in.txt"]
    command += ["-o", "out.jsonl", "--journal", "j.db", "--workers", "2", "-q"]

    def has_report() -> bool:
        try:
            return read_status(journal).report is not None
        except JournalError:  # not created yet
            return False

    with open(tmp_path / "run.err", "wb") as err:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, "SPINDLE_TEST_HOLD": str(n - 1)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    assert kill_when(proc, has_report, "no report was stored"), (tmp_path / "run.err").read_text()

    text = spindle("status", "j.db", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "state     interrupted" in text.stdout
    assert "report of run 1: interrupted (the process died); as of " in text.stdout
    [(name, row)] = report_table(text.stdout).items()
    assert name == "square_or_hold" and row[1] == "cpu"
    assert all(cell != "-" for cell in row[7:])  # latency percentiles were measured
    data = status(tmp_path, "j.db")
    assert data["report_run"]["state"] == "interrupted" and data["report_run"]["final"] is False
    killed = data["report"]
    assert killed["status"] == "running"
    assert 0 < killed["done"] + killed["failed"] < n
    assert killed["stages"][0]["workers"] == 2
    assert killed["stages"][0]["latency"]["p99"] > 0

    # Resumed to the end (nothing held now): run 2's report counts exactly what it ran,
    # the items the killed run had not committed.
    before = data["totals"]
    final = spindle(*command[3:], cwd=tmp_path)
    assert final.returncode == 1, final.stderr  # multiples of FAIL_EVERY fail
    data = status(tmp_path, "j.db")
    assert data["report_run"] == {**data["report_run"], "run": 2, "state": "ended"}
    resumed = data["report"]
    assert resumed["status"] == "done"
    assert resumed["done"] + resumed["failed"] == n - before["done"] - before["failed"]
    assert data["totals"]["done"] + data["totals"]["failed"] == n
    assert [run["state"] for run in data["runs"]] == ["interrupted", "finished"]
