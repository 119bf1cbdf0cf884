"""The commit/cut-back protocol under simulated crashes, with hypothesis.

A run is a sequence of sessions over the same input. Each session but the last dies at
a random risky operation: in the middle of writing the output (part of the bytes reach
the file), right after the output committed but before the journal did, or in the middle
of the journal's SQLite transaction. The dead session is abandoned without any cleanup,
as a killed process would be. After every reopen the output must hold exactly the
records of the keys the journal says are done, and after the last session exactly one
record per distinct input key.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from journal_helpers import EXTENSIONS, journal_states, journal_totals, read_jsonl, read_output

from spindle._errors import SpindleError
from spindle.connectors import (
    CsvOutput,
    FailuresOutput,
    JsonlOutput,
    Output,
    ParquetOutput,
    SqliteOutput,
)
from spindle.journal import Record, SqliteJournal


class Crash(BaseException):
    """Stands for the process dying at this point."""


class Fuse:
    """Counts risky operations and blows at number ``at`` (never if ``None``)."""

    def __init__(self, at: int | None, partial: float) -> None:
        self.at = at
        self.partial = partial
        self.count = 0
        self.blown = False

    def tick(self) -> bool:
        self.count += 1
        if self.at is not None and self.count == self.at:
            self.blown = True
        return self.blown and self.count == self.at

    def progress(self) -> int:
        """SQLite progress handler: a non-zero return aborts the statement."""
        return 1 if self.tick() else 0


class CrashingFile:
    """For the file writers: die in the middle of a write, or between the two commits."""

    fuse: Fuse

    def _write_all(self, fd: int, data: bytes) -> None:
        if self.fuse.tick():
            os.write(fd, data[: int(len(data) * self.fuse.partial)])
            raise Crash
        super()._write_all(fd, data)  # type: ignore[misc]

    def commit(self, *, final: bool = False) -> str | None:
        point: str | None = super().commit(final=final)  # type: ignore[misc]
        if self.fuse.tick():
            raise Crash
        return point

    def rollback(self, point: str) -> None:
        if not self.fuse.blown:  # a dead process rolls nothing back
            super().rollback(point)  # type: ignore[misc]


class CrashingJsonl(CrashingFile, JsonlOutput):
    def __init__(self, path: Path, fuse: Fuse) -> None:
        super().__init__(path, fsync=False)
        self.fuse = fuse


class CrashingFailures(CrashingFile, FailuresOutput):
    def __init__(self, path: Path, fuse: Fuse) -> None:
        super().__init__(path, fsync=False)
        self.fuse = fuse


class CrashingCsv(CrashingFile, CsvOutput):
    def __init__(self, path: Path, fuse: Fuse) -> None:
        super().__init__(path, fsync=False)
        self.fuse = fuse


class CrashingSqlite(SqliteOutput):
    def __init__(self, path: Path, fuse: Fuse) -> None:
        super().__init__(path, fsync=False)
        self.fuse = fuse

    def write(self, rows: Any) -> None:
        super().write(rows)
        if self.fuse.tick():  # rows inserted, transaction never committed
            raise Crash

    def commit(self, *, final: bool = False) -> str:
        point = super().commit(final=final)
        if self.fuse.tick():
            raise Crash
        return point

    def rollback(self, point: str) -> None:
        if not self.fuse.blown:
            super().rollback(point)


class CrashingParquet(ParquetOutput):
    def __init__(self, path: Path, fuse: Fuse, min_rows: int) -> None:
        super().__init__(path, fsync=False, min_rows=min_rows, max_delay=3600)
        self.fuse = fuse

    def commit(self, *, final: bool = False) -> str | None:
        if self.buffered and self.fuse.tick():  # dies while writing a part
            (self.path / f".part-{int(self._parts):06d}.parquet.tmp").write_bytes(b"PAR1 torn")
            raise Crash
        point = super().commit(final=final)
        if self.fuse.tick():
            raise Crash
        return point

    def rollback(self, point: str) -> None:
        if not self.fuse.blown:
            super().rollback(point)


def make_output(fmt: str, directory: Path, fuse: Fuse, min_rows: int) -> Output[Any]:
    path = directory / f"out.{EXTENSIONS[fmt]}"
    if fmt == "jsonl":
        return CrashingJsonl(path, fuse)
    if fmt == "csv":
        return CrashingCsv(path, fuse)
    if fmt == "sqlite":
        return CrashingSqlite(path, fuse)
    return CrashingParquet(path, fuse, min_rows)


def abandon(journal: SqliteJournal) -> None:
    """Release what a dead process would lose, and nothing else: no commit, no cleanup."""
    job = journal._commits.job
    if job is not None and job.thread is not None:
        job.thread.join()  # a commit in flight: the crash lands after it, or in it
    for out in journal._outputs.values():
        out.close()
    for conn in (journal._reader, journal._conn):
        if conn is not None:
            conn.close()
    journal._lock.release()
    journal._closed = True


def is_failure(value: int) -> bool:
    return value % 5 == 0


def run_session(journal: SqliteJournal, inputs: list[int], batch: int) -> None:
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        keys = [f"k{v}" for v in chunk]
        go = journal.mark_started(keys)
        records = []
        for key, value, run in zip(keys, chunk, go, strict=True):
            if not run:
                continue
            if is_failure(value):
                records.append(
                    Record.failed(key, "ValueError", f"bad {value}", {"key": key, "v": value})
                )
            else:
                records.append(Record.done(key, {"key": key, "value": value * 2}))
        journal.record(records)


def check_consistent(directory: Path, fmt: str) -> tuple[list[Any], list[Any]]:
    """Output and journal agree: one record per done key, one failure per failed key."""
    states = journal_states(directory / "journal.db")
    journal_totals(directory / "journal.db")
    rows = read_output(directory / f"out.{EXTENSIONS[fmt]}", fmt)
    failures = read_jsonl(directory / "failures.jsonl")
    out_keys = Counter(row["key"] for row in rows)
    fail_keys = Counter(row["key"] for row in failures)
    assert all(n == 1 for n in out_keys.values()), out_keys
    assert all(n == 1 for n in fail_keys.values()), fail_keys
    assert set(out_keys) == {k for k, s in states.items() if s == "done"}
    assert set(fail_keys) == {k for k, s in states.items() if s == "failed"}
    return rows, failures


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "sqlite", "parquet"])
@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_crash_anywhere_then_resume(fmt: str, data: st.DataObject) -> None:
    inputs = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=120), label="inputs")
    crashes = data.draw(st.lists(st.integers(1, 20), max_size=4), label="crash at")
    partial = data.draw(st.floats(0, 1), label="fraction written by the torn write")
    interval = data.draw(st.sampled_from([0.0, 3600.0]), label="commit interval")
    commit_items = data.draw(st.integers(1, 40), label="commit items")
    min_rows = data.draw(st.integers(1, 10), label="parquet min rows")
    in_sqlite = data.draw(st.booleans(), label="some crashes inside the SQLite transaction")
    # Drawn up front: a draw that runs out of data raises, and must not leave a journal open.
    batches = [data.draw(st.integers(1, 25), label="batch size") for _ in range(len(crashes) + 1)]
    with tempfile.TemporaryDirectory(prefix="spindle-") as tmp:
        directory = Path(tmp)
        for crash_at, batch in zip([*crashes, None], batches, strict=True):
            fuse = Fuse(crash_at, partial)
            journal = SqliteJournal(
                directory / "journal.db",
                "fp",
                output=make_output(fmt, directory, fuse, min_rows),
                failures=CrashingFailures(directory / "failures.jsonl", fuse),
                commit_interval=interval,
                commit_items=commit_items,
            )
            try:
                check_consistent(directory, fmt)
                if in_sqlite and crash_at is not None:
                    assert journal._conn is not None
                    journal._conn.set_progress_handler(fuse.progress, 200)
                run_session(journal, inputs, batch)
                journal.close()
            except (Crash, SpindleError):
                if not fuse.blown:
                    raise
            finally:
                abandon(journal)  # after close() it releases nothing more

        rows, failures = check_consistent(directory, fmt)
        distinct = set(inputs)
        expected_done = {f"k{v}": v * 2 for v in distinct if not is_failure(v)}
        expected_failed = {f"k{v}": v for v in distinct if is_failure(v)}
        assert len(rows) == len(expected_done)
        got = {row["key"]: row["value"] for row in rows}
        if fmt == "csv":
            expected_done = {k: str(v) for k, v in expected_done.items()}  # type: ignore[misc]
        assert got == expected_done
        assert {row["key"]: row["v"] for row in failures} == expected_failed
        states = journal_states(directory / "journal.db")
        assert states == {
            **dict.fromkeys(expected_done, "done"),
            **dict.fromkeys(expected_failed, "failed"),
        }
