"""SqliteJournal operations one by one: claiming, recording, commits, opening, errors."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from journal_helpers import journal_states, journal_totals, read_jsonl, read_sqlite

from spindle._errors import SpindleError
from spindle.connectors import FailuresOutput, JsonlOutput, OutputError, SqliteOutput
from spindle.journal import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalMismatch,
    Key,
    MemoryJournal,
    Record,
    SqliteJournal,
    read_status,
)
from spindle.journal import _commit as commit_module
from spindle.journal import _sqlite as sqlite_module


def open_journal(tmp: Path, fp: str = "fp", **kwargs: Any) -> SqliteJournal:
    kwargs.setdefault("output", JsonlOutput(tmp / "out.jsonl"))
    kwargs.setdefault("failures", FailuresOutput(tmp / "failures.jsonl"))
    kwargs.setdefault("commit_interval", 0)
    return SqliteJournal(tmp / "journal.db", fp, **kwargs)


def done(key: str, **extra: Any) -> Record:
    return Record.done(key, {"key": key, **extra})


def failed(key: str, error: str = "ValueError", message: str = "bad") -> Record:
    return Record.failed(key, error, f"{message} {key}", {"key": key, "error": error})


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    j = open_journal(tmp_path)
    yield j
    j.close()


def test_is_a_journal_and_errors_are_spindle_errors(journal: SqliteJournal) -> None:
    assert isinstance(journal, Journal)
    for cls in (JournalError, JournalMismatch, JournalCorrupt, JournalLocked):
        assert issubclass(cls, SpindleError)


# -- claiming -----------------------------------------------------------------------------


def test_new_keys_are_new_and_duplicates_in_a_batch_run_once(journal: SqliteJournal) -> None:
    keys = ["a", "b", "a", b"a", "c", "b"]
    assert journal.filter_new(keys) == [True, True, False, True, True, False]
    assert journal.mark_started(keys) == [True, True, False, True, True, False]
    stats = journal.stats()
    assert (stats.started, stats.skipped_duplicate, stats.in_flight) == (4, 2, 4)


def test_keys_in_flight_are_not_new_again(journal: SqliteJournal) -> None:
    assert journal.mark_started(["a", "b"]) == [True, True]
    assert journal.filter_new(["a", "b", "c"]) == [False, False, True]
    assert journal.mark_started(["b", "c"]) == [False, True]


def test_filter_new_claims_nothing(journal: SqliteJournal) -> None:
    assert journal.filter_new(["a"]) == [True]
    assert journal.filter_new(["a"]) == [True]
    assert journal.stats().in_flight == 0


def test_recorded_keys_are_not_run_again_in_the_same_run(journal: SqliteJournal) -> None:
    journal.mark_started(["a", "b"])
    journal.record([done("a"), failed("b")])
    assert journal.mark_started(["a", "b", "c"]) == [False, False, True]
    assert journal.stats().skipped_duplicate == 2


def test_done_and_failed_keys_are_skipped_on_resume(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b", "c"])
        j.record([done("a"), failed("b")])
    with open_journal(tmp_path) as j:
        assert j.mark_started(["a", "b", "c", "d"]) == [False, False, True, True]
        assert j.stats().skipped_done == 2


def test_retry_failed_runs_failures_of_earlier_runs_only(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b"])
        j.record([done("a"), failed("b")])
    with open_journal(tmp_path, retry_failed=True) as j:
        assert j.filter_new(["a", "b"]) == [False, True]
        assert j.mark_started(["a", "b"]) == [False, True]
        j.record([failed("b", message="again")])
        assert j.mark_started(["b"]) == [False]  # failed in this run: not retried again
    with open_journal(tmp_path, retry_failed=True) as j:
        j.mark_started(["b"])
        j.record([done("b")])
    assert journal_states(tmp_path / "journal.db") == {"a": "done", "b": "done"}
    assert journal_totals(tmp_path / "journal.db") == {"pending": 0, "done": 2, "failed": 0}
    assert [r["key"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a", "b"]
    assert [r["key"] for r in read_jsonl(tmp_path / "failures.jsonl")] == ["b", "b"]


def test_unrecorded_keys_are_pending_and_run_again(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b"])
        j.record([done("a")])
    assert journal_states(tmp_path / "journal.db") == {"a": "done", "b": "pending"}
    with open_journal(tmp_path) as j:
        assert j.mark_started(["a", "b"]) == [False, True]
        j.record([done("b")])
    assert journal_totals(tmp_path / "journal.db") == {"pending": 0, "done": 2, "failed": 0}


def test_many_keys_cross_lookup_chunks(journal: SqliteJournal) -> None:
    keys = [f"k{i}" for i in range(1000)]
    journal.mark_started(keys[:600])
    journal.record([done(k) for k in keys[:600:2]])
    flags = journal.filter_new(keys)
    assert flags == [False] * 600 + [True] * 400


@pytest.mark.parametrize("n", [1, 15, 17, 100, 257, 333])
def test_lookups_of_any_batch_size(journal: SqliteJournal, n: int) -> None:
    keys = [f"k{i}" for i in range(n)]
    journal.mark_started(keys[::3])
    journal.record([done(k) for k in keys[::3]])
    assert journal.filter_new(keys) == [i % 3 != 0 for i in range(n)]


def test_bytes_keys(journal: SqliteJournal) -> None:
    keys = [bytes([i]) * 16 for i in range(5)]
    assert journal.mark_started(keys) == [True] * 5
    journal.record([Record.done(k, {"i": i}) for i, k in enumerate(keys)])
    assert journal.filter_new(keys) == [False] * 5


# -- recording ----------------------------------------------------------------------------


def test_record_writes_output_and_failures(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b", "c"])
        j.record([done("a", v=1), failed("b"), done("c", v=3)])
        stats = j.stats()
    assert (stats.recorded_done, stats.recorded_failed, stats.in_flight) == (2, 1, 0)
    assert read_jsonl(tmp_path / "out.jsonl") == [{"key": "a", "v": 1}, {"key": "c", "v": 3}]
    assert read_jsonl(tmp_path / "failures.jsonl") == [{"key": "b", "error": "ValueError"}]


def test_a_key_is_recorded_once_even_if_recorded_twice(journal: SqliteJournal) -> None:
    journal.mark_started(["a"])
    journal.record([done("a", n=1), done("a", n=2)])
    journal.record([done("a", n=3)])
    assert journal.stats().ignored == 2
    journal.close()
    assert read_jsonl(journal.path.parent / "out.jsonl") == [{"key": "a", "n": 1}]


def test_record_without_mark_started_claims_or_drops(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.record([done("a")])
    with open_journal(tmp_path) as j:
        j.record([done("a", again=True), done("b")])
        assert j.stats().ignored == 1
    assert [r["key"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a", "b"]


def test_unwritable_result_becomes_a_failure(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b"])
        j.record([Record.done("a", {"x": object()}), done("b")])
        assert j.stats().unwritable == 1
        summary = j.summary()
    assert (summary.done, summary.failed) == (1, 1)
    assert summary.failures[0].error == "UnwritableRecord"
    (failure,) = read_jsonl(tmp_path / "failures.jsonl")
    assert failure["key"] == "a" and "cannot be written as JSON" in failure["message"]
    assert "<object object" in failure["result"]


def test_no_outputs_at_all(tmp_path: Path) -> None:
    with SqliteJournal(tmp_path / "j.db", "fp", commit_interval=0) as j:
        j.mark_started(["a", "b"])
        j.record([done("a"), failed("b")])
    assert journal_totals(tmp_path / "j.db") == {"pending": 0, "done": 1, "failed": 1}


def test_invalid_state_breaks_the_journal(journal: SqliteJournal) -> None:
    journal.mark_started(["a"])
    with pytest.raises(JournalError, match="invalid state"):
        journal.record([Record("a", "weird", 1, None, None, None)])  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="stopped after an error"):
        journal.mark_started(["b"])


# -- group commit -------------------------------------------------------------------------


def test_records_are_committed_at_the_interval_or_on_flush(tmp_path: Path) -> None:
    j = open_journal(tmp_path, commit_interval=3600, commit_items=1000)
    try:
        j.mark_started(["a", "b"])
        j.record([done("a"), done("b")])
        assert journal_states(tmp_path / "journal.db") == {}
        assert j.stats().commits == 0
        assert j.filter_new(["a"]) == [False]  # queued keys count as known
        j.flush()
        assert journal_states(tmp_path / "journal.db") == {"a": "done", "b": "done"}
    finally:
        j.close()


def test_commit_items_triggers_a_commit(tmp_path: Path) -> None:
    with open_journal(tmp_path, commit_interval=3600, commit_items=3) as j:
        j.mark_started(["a", "b", "c", "d"])
        j.record([done("a"), done("b")])
        assert j.stats().commits == 0
        j.record([done("c")])
        assert j.stats().commits == 1
        j.record([done("d")])
        j.summary()  # waits for the commit in flight (it runs in a thread)
        # d was in flight at that commit: written as pending, so status shows it
        assert journal_states(tmp_path / "journal.db") == {
            **dict.fromkeys("abc", "done"),
            "d": "pending",
        }
    assert journal_states(tmp_path / "journal.db") == dict.fromkeys("abcd", "done")


class FakeTime:
    """Stands for the time module in the journal: ``monotonic()`` is set by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.time = time.time

    def monotonic(self) -> float:
        return self.now


def test_commits_are_an_interval_apart_from_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    for module in (sqlite_module, commit_module):  # opening, and the commits
        monkeypatch.setattr(module, "time", clock)
    with open_journal(tmp_path, commit_interval=1.0) as j:
        j.mark_started(["a", "b", "c"])
        clock.now = 1.0
        j.record([done("a")])  # the interval is up: a commit, in a thread
        assert j.stats().commits == 1
        job = j._commits.job
        assert job is not None and job.thread is not None
        job.thread.join()  # finished, not yet settled
        j.record([done("b")])  # the same moment: no second commit right after the first
        assert j.stats().commits == 1
        clock.now = 2.0
        j.record([done("c")])
        assert j.stats().commits == 2


def test_close_commits_and_ends_the_run(tmp_path: Path) -> None:
    j = open_journal(tmp_path, commit_interval=3600)
    j.mark_started(["a", "b"])
    j.record([done("a")])
    j.close()
    j.close()  # idempotent
    assert journal_states(tmp_path / "journal.db") == {"a": "done", "b": "pending"}
    status = j.summary()  # read from the file once closed
    assert status.runs[-1].state == "finished"
    with pytest.raises(JournalError, match="closed"):
        j.mark_started(["c"])


def test_threads_may_share_a_journal(journal: SqliteJournal) -> None:
    def work(prefix: str) -> None:
        for n in range(20):
            keys = [f"{prefix}{n}-{i}" for i in range(10)]
            journal.mark_started(keys)
            journal.record([done(k) for k in keys])

    threads = [threading.Thread(target=work, args=(p,)) for p in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.summary().done == 600


# -- opening ------------------------------------------------------------------------------


def test_fingerprint_mismatch_and_force(tmp_path: Path) -> None:
    with open_journal(tmp_path, "cmd-1") as j:
        j.mark_started(["a"])
        j.record([done("a")])
    with pytest.raises(JournalMismatch, match=r"new journal path.*--force"):
        open_journal(tmp_path, "cmd-2")
    with open_journal(tmp_path, "cmd-2", force=True) as j:
        assert j.summary().done == 0
        assert j.mark_started(["a"]) == [True]
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_output_must_stay_the_same(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a"])
        j.record([done("a")])
    with pytest.raises(JournalMismatch, match="same outputs"):
        open_journal(tmp_path, output=JsonlOutput(tmp_path / "other.jsonl"))
    with pytest.raises(JournalMismatch, match="no output"):
        open_journal(tmp_path, output=None, failures=None)


def test_output_may_change_while_nothing_is_recorded(tmp_path: Path) -> None:
    with open_journal(tmp_path) as j:
        j.mark_started(["a"])
    with open_journal(tmp_path, output=JsonlOutput(tmp_path / "other.jsonl")) as j:
        j.record([done("a")])
    assert read_jsonl(tmp_path / "other.jsonl") == [{"key": "a"}]


def test_existing_output_of_another_run_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "out.jsonl").write_text('{"old": 1}\n')
    with pytest.raises(OutputError, match="--force"):
        open_journal(tmp_path)
    assert (tmp_path / "out.jsonl").read_text() == '{"old": 1}\n'
    # the failed open released everything: the journal can be opened again
    with open_journal(tmp_path, force=True):
        pass


def test_not_a_journal_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    garbage = b"this is not a database\n" * 300
    path.write_bytes(garbage)
    with pytest.raises(JournalCorrupt, match=str(path)):
        open_journal(tmp_path)
    with pytest.raises(JournalCorrupt):
        open_journal(tmp_path, force=True)
    assert path.read_bytes() == garbage
    assert not (tmp_path / "out.jsonl").exists()


def test_other_sqlite_database_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(JournalCorrupt, match="not a spindle journal"):
        open_journal(tmp_path, force=True)
    assert path.read_bytes() == before


def test_newer_journal_format_is_refused(tmp_path: Path) -> None:
    open_journal(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("UPDATE meta SET value = 99 WHERE name = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(JournalError, match="newer spindle"):
        open_journal(tmp_path)


def test_one_run_at_a_time(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    try:
        with pytest.raises(JournalLocked, match="in use by another spindle run"):
            open_journal(tmp_path / ".." / tmp_path.name)
        j.mark_started(["a"])  # the refused open did not disturb the first
        j.record([done("a")])
    finally:
        j.close()
    assert not (tmp_path / "journal.db-lock").exists()
    with open_journal(tmp_path) as j:
        assert j.filter_new(["a"]) == [False]


def test_lock_is_held_against_other_processes(tmp_path: Path) -> None:
    code = (
        "import sys; from spindle.journal import SqliteJournal, JournalLocked\n"
        "try:\n    SqliteJournal(sys.argv[1], 'fp')\nexcept JournalLocked:\n    print('locked')\n"
    )
    with open_journal(tmp_path):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "journal.db")],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[2],
            timeout=30,
        )
    assert out.stdout.strip() == "locked"


def test_unwritable_journal_path_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="does not exist"):
        SqliteJournal(tmp_path / "missing" / "j.db", "fp")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="is not a directory"):
        SqliteJournal(blocker / "j.db", "fp")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_journal_directory(tmp_path: Path) -> None:  # pragma: no cover
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(JournalError, match="Permission denied"):
        SqliteJournal(ro / "j.db", "fp")


def test_failed_open_of_an_output_releases_everything(tmp_path: Path) -> None:
    with pytest.raises(OutputError):
        open_journal(tmp_path, output=JsonlOutput(tmp_path / "missing" / "o.jsonl"))
    assert not (tmp_path / "journal.db-lock").exists()
    open_journal(tmp_path).close()


# -- write errors -------------------------------------------------------------------------


class FullDisk(JsonlOutput):
    """A JSON lines output whose disk fills up after ``room`` more bytes."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path)
        self.room = room

    def _write_all(self, fd: int, data: bytes) -> None:
        n = max(0, min(self.room, len(data)))
        os.write(fd, data[:n])
        self.room -= n
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_on_the_output(tmp_path: Path) -> None:
    j = open_journal(tmp_path, output=FullDisk(tmp_path / "out.jsonl", room=100))
    try:
        j.mark_started([f"k{i}" for i in range(20)])
        j.record([done("k0"), done("k1")])
        with pytest.raises(OutputError, match=r"no space left.*run the same command again"):
            j.record([done(f"k{i}", pad="x" * 20) for i in range(2, 20)])
        with pytest.raises(JournalError, match="stopped after an error"):
            j.record([done("k5")])
    finally:
        j.close()
    # consistent without a reopen (rolled back at once) ...
    assert [r["key"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["k0", "k1"]
    # ... and the next run goes on from there
    with open_journal(tmp_path) as j:
        keys = [f"k{i}" for i in range(20)]
        run = j.mark_started(keys)
        assert run == [False, False] + [True] * 18
        j.record([done(k) for k in keys[2:]])
    assert [r["key"] for r in read_jsonl(tmp_path / "out.jsonl")] == keys
    assert journal_totals(tmp_path / "journal.db")["done"] == 20


def test_disk_full_on_the_journal(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    try:
        j.mark_started(["a"])
        j.record([done("a")])
        pages = j._conn.execute("PRAGMA page_count").fetchone()[0]
        j._conn.execute(f"PRAGMA max_page_count = {pages}")
        keys = [f"key-{i:06d}-" + "x" * 50 for i in range(2000)]
        j.mark_started(keys)
        with pytest.raises(JournalError, match="no space left"):
            j.record([done(k) for k in keys])
    finally:
        j.close()
    assert [r["key"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a"]
    with open_journal(tmp_path) as j:
        assert j.summary().done == 1


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=10)


@pytest.mark.parametrize("fmt", ["jsonl", "sqlite"])
def test_real_full_disk(tmp_path: Path, fmt: str) -> None:
    with tiny_tmpfs(tmp_path / "small", "256k") as small:
        output = (
            JsonlOutput(small / "out.jsonl") if fmt == "jsonl" else SqliteOutput(small / "o.db")
        )
        j = SqliteJournal(tmp_path / "journal.db", "fp", output=output, commit_interval=0)
        n = 0
        try:
            with pytest.raises(OutputError, match="no space left"):
                while True:
                    keys = [f"k{n + i}" for i in range(100)]
                    j.mark_started(keys)
                    j.record([done(k, pad="y" * 200) for k in keys])
                    n += 100
        finally:
            j.close()
        assert n > 0
        j = SqliteJournal(tmp_path / "journal.db", "fp", output=output.__class__(output.path))
        j.close()
        rows = read_jsonl(output.path) if fmt == "jsonl" else read_sqlite(output.path)
        assert [r["key"] for r in rows] == [f"k{i}" for i in range(n)]
        assert journal_totals(tmp_path / "journal.db")["done"] == n


# -- in-memory journal --------------------------------------------------------------------


def test_memory_journal_behaves_alike(tmp_path: Path) -> None:
    with MemoryJournal(output=JsonlOutput(tmp_path / "o.jsonl")) as j:
        assert j.mark_started(["a", "b", "a"]) == [True, True, False]
        j.record([done("a"), failed("b"), done("a")])
        assert j.mark_started(["a", "b", "c"]) == [False, False, True]
        assert j.filter_new(["c", "d"]) == [False, True]
        summary = j.summary()
        assert (summary.done, summary.failed, summary.in_flight) == (1, 1, 1)
        assert summary.failures[0].error == "ValueError"
        assert j.stats().ignored == 1
    assert read_jsonl(tmp_path / "o.jsonl") == [{"key": "a"}]


def table_count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_a_run_logs_its_keys_and_the_next_open_indexes_them(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b", "c"])
        j.record([done("a"), done("b")])
        j.record([failed("c")])
    # Done keys are one log row per commit, not an items row each; failures are rows.
    assert table_count(db, "SELECT count(*) FROM log") == 1
    assert table_count(db, "SELECT count(*) FROM items") == 1
    assert journal_totals(db) == {"pending": 0, "done": 2, "failed": 1}
    with open_journal(tmp_path) as j:
        assert table_count(db, "SELECT count(*) FROM log") == 0
        assert table_count(db, "SELECT count(*) FROM items WHERE state = 'done'") == 2
        assert j.mark_started(["a", "b", "c", "d"]) == [False, False, False, True]
    assert journal_states(db) == {"a": "done", "b": "done", "c": "failed", "d": "pending"}


def test_keys_in_flight_at_the_last_commit_are_pending_until_they_are_done(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    j = open_journal(tmp_path)
    j.mark_started(["a", "b", "c"])
    j.record([done("a")])  # commits: b and c are stored as in flight
    assert SqliteJournal.summary(j).pending == 2
    # As if the process died here: files closed, no final commit.
    for out in j._outputs.values():
        out.close()
    for conn in (j._conn, j._reader):
        assert conn is not None
        conn.close()
    j._lock.release()
    assert journal_totals(db) == {"pending": 2, "done": 1, "failed": 0}
    with open_journal(tmp_path) as j2:
        assert table_count(db, "SELECT count(*) FROM items WHERE state = 'pending'") == 2
        assert j2.mark_started(["a", "b", "c"]) == [False, True, True]
        j2.record([done("b"), done("c")])
    assert journal_totals(db) == {"pending": 0, "done": 3, "failed": 0}


def test_a_journal_of_format_1_is_upgraded_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b"])
        j.record([done("a"), failed("b")])
    # Format 1 kept every key as an items row and had no log.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO items (key, state, attempts, run) VALUES ('a', 'done', 1, 1)")
    conn.execute("DROP TABLE log")
    conn.execute("ALTER TABLE runs DROP COLUMN inflight")
    conn.execute("ALTER TABLE runs DROP COLUMN inflight_n")
    conn.execute("ALTER TABLE runs DROP COLUMN inflight_fmt")
    conn.execute("UPDATE meta SET value = 1 WHERE name = 'version'")
    conn.close()
    assert read_status(db).done == 1
    with open_journal(tmp_path) as j:
        assert j.mark_started(["a", "b", "c"]) == [False, False, True]
        j.record([done("c")])
    assert table_count(db, "SELECT value FROM meta WHERE name = 'version'") == 2
    assert journal_totals(db) == {"pending": 0, "done": 2, "failed": 1}


def test_the_timeline_counts_logged_and_indexed_items_alike(tmp_path: Path) -> None:
    from spindle.journal import journal_timeline

    db = tmp_path / "journal.db"

    def last() -> tuple[int, int]:
        stage = journal_timeline(db)[-1]["stages"]["recorded"]
        return stage["done"], stage["failed"]

    with open_journal(tmp_path) as j:
        j.mark_started(["a", "b", "c"])
        j.record([done("a"), done("b"), failed("c")])
    assert last() == (2, 1)  # a and b in the log, c an items row
    with open_journal(tmp_path) as j:  # merged into the index on open
        j.mark_started(["d"])
        j.record([done("d")])
    assert last() == (3, 1)


@pytest.mark.parametrize("digests", [True, False], ids=["digest keys", "text keys"])
def test_resuming_decides_alike_for_digest_and_text_keys(tmp_path: Path, digests: bool) -> None:
    """Digest keys are looked up by one SQL statement per batch, other keys one by one:
    both must skip, retry and claim the same keys."""

    def k(name: str) -> Key:
        return name.encode().ljust(16, b".") if digests else name

    with open_journal(tmp_path) as j:
        j.mark_started([k(x) for x in "abcd"])
        j.record([Record.done(k("a"), {"key": "a"}), Record.failed(k("b"), "E", "m", {})])
        j.flush()
        j.record([Record.done(k("c"), {"key": "c"})])  # d stays in flight: pending
    with open_journal(tmp_path) as j:
        batch = [k(x) for x in "abcdeae"]
        assert j.mark_started(batch) == [False, False, False, True, True, False, False]
        stats = j.stats()
        # a, b, c and a again were recorded before; e again repeats a key claimed now.
        assert (stats.skipped_done, stats.skipped_duplicate) == (4, 1)
        j.record([Record.failed(k("d"), "E", "again", {}), Record.done(k("e"), {"key": "e"})])
        j.flush()
        assert j.mark_started([k("d"), k("e"), k("f")]) == [False, False, True]
    with open_journal(tmp_path, retry_failed=True) as j:
        assert j.mark_started([k(x) for x in "abcdef"]) == [False, True, False, True, False, True]
