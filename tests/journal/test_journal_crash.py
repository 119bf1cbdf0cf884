"""Real crashes: a child process writing through the journal is SIGKILLed, then resumed.

The child (``crash_child.py``) prints a line after each commit; the test reads a random
number of them and kills the child, which is then somewhere in its next batch: encoding,
writing the output, fsyncing, or inside the SQLite transaction. After each kill the
journal is reopened (which cuts the output back) and checked against the output; then
the child runs to completion, and the output must hold exactly one correct record per
distinct input key.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from crash_child import EXTENSIONS, inputs, is_failure, key_of
from journal_helpers import journal_states, journal_totals, read_jsonl, read_output

from spindle.connectors import FailuresOutput, open_output
from spindle.journal import SqliteJournal, read_status

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def start_child(
    directory: Path, fmt: str, items: int, seed: int, interval: float
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    args = [str(directory), fmt, str(items), str(seed), str(interval)]
    # The child keeps its own copy of the stderr descriptor; ours is closed at once.
    with open(directory / f"child-{seed}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(HERE / "crash_child.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill if still running, reap, close the pipes: no process or descriptor outlives this."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()


def read_line(proc: subprocess.Popen[str], directory: Path, seed: int) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        err = (directory / f"child-{seed}.err").read_text()
        pytest.fail(f"the child exited with {proc.returncode} unexpectedly:\n{err}")
    return line.strip()


def reopen_and_check(directory: Path, fmt: str) -> None:
    """Open the journal as a resume would (cutting the output back) and compare."""
    ext = EXTENSIONS[fmt]
    options = {"min_rows": 500, "max_delay": 0.0} if fmt == "parquet" else {}
    journal = SqliteJournal(
        directory / "journal.db",
        "crash-test",
        output=open_output(directory / f"out.{ext}", **options),
        failures=FailuresOutput(directory / "failures.jsonl"),
    )
    try:
        states = journal_states(directory / "journal.db")
        journal_totals(directory / "journal.db")
        out = Counter(row["key"] for row in read_output(directory / f"out.{ext}", fmt))
        fails = Counter(row["key"] for row in read_jsonl(directory / "failures.jsonl"))
    finally:
        journal.close()
    assert max(out.values(), default=1) == 1 and max(fails.values(), default=1) == 1
    assert set(out) == {k.hex() for k, s in states.items() if s == "done"}
    assert set(fails) == {k.hex() for k, s in states.items() if s == "failed"}


def crash_and_resume(
    tmp_path: Path, fmt: str, items: int, kills: int, interval: float, seed: int
) -> int:
    rng = random.Random(seed)
    killed = 0
    for session in range(kills + 1):
        proc = start_child(tmp_path, fmt, items, session, interval)
        try:
            assert read_line(proc, tmp_path, session) == "ready"
            if session == kills:  # the last run goes to the end
                while (line := read_line(proc, tmp_path, session)) != "finished":
                    assert line.startswith("commit")
                assert proc.wait(timeout=60) == 0
                break
            wanted = rng.randint(1, 6)
            seen = 0
            line = ""
            while seen < wanted and line != "finished":
                line = read_line(proc, tmp_path, session)
                seen += line.startswith("commit")
            if line != "finished":
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
                killed += 1
        finally:
            stop(proc)
        reopen_and_check(tmp_path, fmt)
    verify_complete(tmp_path, fmt, items)
    return killed


def verify_complete(directory: Path, fmt: str, items: int) -> None:
    distinct = sorted(set(inputs(items)))
    rows = read_output(directory / f"out.{EXTENSIONS[fmt]}", fmt)
    failures = read_jsonl(directory / "failures.jsonl")
    expected = {key_of(v).hex(): v for v in distinct if not is_failure(v)}
    expected_failed = {key_of(v).hex(): v for v in distinct if is_failure(v)}
    assert len(rows) == len(expected), "a record is missing or duplicated"
    for row in rows:
        value = expected[row["key"]]
        assert int(row["item"]) == value and int(row["sq"]) == value**2
    assert len({row["key"] for row in rows}) == len(rows)
    assert len(failures) == len(expected_failed)
    assert {row["key"]: row["item"] for row in failures} == expected_failed
    states = journal_states(directory / "journal.db")
    assert Counter(states.values()) == {"done": len(expected), "failed": len(expected_failed)}
    status = read_status(directory / "journal.db")
    assert (status.done, status.failed, status.pending) == (len(expected), len(expected_failed), 0)
    assert status.runs[-1].state == "finished"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "sqlite"])
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, fmt: str) -> None:
    killed = crash_and_resume(tmp_path, fmt, items=20_000, kills=5, interval=0.0, seed=7)
    assert killed >= 3  # most runs were killed before they could finish


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "sqlite", "parquet"])
@pytest.mark.parametrize("interval", [0.0, 0.02])
def test_sigkill_many_times_then_resume(tmp_path: Path, fmt: str, interval: float) -> None:
    crash_and_resume(tmp_path, fmt, items=50_000, kills=15, interval=interval, seed=11)
