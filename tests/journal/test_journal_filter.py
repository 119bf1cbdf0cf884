"""The key filter that spares a run most exact checks of its keys: no false negatives,
ever, and a false positive costs time, never an item."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from pathlib import Path

import pytest

from spindle.journal import item_states
from spindle.journal._filter import KeyFilter
from spindle.journal._sqlite import SqliteJournal


def digests(start: int, stop: int) -> list[bytes]:
    return [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(start, stop)]


def test_every_added_key_may_be_present_as_the_filter_grows() -> None:
    f = KeyFilter(first_capacity=1000)
    added: list[bytes | str] = []
    for start in range(0, 10_000, 700):  # past the first capacity, several times
        chunk: list[bytes | str] = list(digests(start, start + 700))
        f.add(chunk)
        added += chunk
    f.add([f"text key {i}" for i in range(100)])
    added += [f"text key {i}" for i in range(100)]
    assert f.maybe(added) == list(range(len(added)))
    new = digests(100_000, 110_000)
    assert f.maybe(new) == []  # digests: 64 bits each; two alike is a 1 in 10**11 chance
    assert f.maybe([*new[:10], "new text"]) == []
    assert f.maybe([*new[:10], "text key 3", added[4]]) == [10, 11]


def fixed_home(i: int, home: int = 0x5A) -> bytes:
    """A digest whose fingerprint has the high byte ``home`` and low bits from ``i``:
    those with the same ``home`` share a bucket (the filter's first table has 128)."""
    return struct.pack("<Q", (home << 56) | (i << 1)) + bytes(8)


def test_a_full_bucket_overflows_into_the_next_and_keys_are_still_found() -> None:
    f = KeyFilter(first_capacity=1000)
    crowd = [fixed_home(i) for i in range(40)]  # two and a half buckets' worth in one
    neighbours = [fixed_home(1000 + i, home=0x5C) for i in range(40)]  # the next bucket
    assert f.maybe_add(crowd[:20]) == []
    assert f.maybe_add([*crowd[10:30], *neighbours[:5]]) == list(range(10))
    assert f.maybe_add(crowd[30:] + neighbours) == list(range(10, 15))
    assert f.maybe(crowd + neighbours) == list(range(80))
    assert f.maybe([fixed_home(i) for i in range(40, 60)]) == []
    assert f.maybe([fixed_home(2000 + i, home=0x5C) for i in range(40)]) == []


def test_maybe_add_reports_keys_seen_before_as_the_table_doubles() -> None:
    f = KeyFilter(first_capacity=100)
    keys = digests(0, 20_000)
    for start in range(0, 20_000, 1000):
        chunk = keys[start : start + 1000]
        again = keys[start - 50 : start] if start else []
        assert f.maybe_add(chunk + again) == list(range(1000, 1000 + len(again)))
    assert f.maybe(keys) == list(range(20_000))


def test_a_duplicate_of_a_key_committed_earlier_in_the_run_is_caught(tmp_path: Path) -> None:
    from spindle.journal import Record

    db = tmp_path / "j.db"
    with SqliteJournal(db, "fp", commit_interval=0) as j:
        assert j.mark_started([b"a", b"b"]) == [True, True]
        j.record([Record.done(b"a", 1), Record.done(b"b", 2)])  # committed to the log
        assert log_rows(db) == 1
        # The first repeat is found by scanning the log: no index is built for it...
        assert j.mark_started([b"c", b"a"]) == [True, False]
        j.record([Record.done(b"c", 3)])
        assert log_rows(db) == 2
        # ...but an input that repeats itself gets the log indexed, once, then merged.
        assert j.mark_started([b"b", b"c", b"d"]) == [False, False, True]
        assert log_rows(db) == 0
        assert j.stats().skipped_duplicate == 3
    with SqliteJournal(db, "fp", commit_interval=0) as j:
        assert j._gate.resumed  # every key is looked up in the index
        assert j.mark_started([b"a", b"c", b"d", b"e"]) == [False, False, True, True]


def test_false_positives_of_the_filter_cost_a_scan_not_an_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spindle.journal import Record

    always_maybe(monkeypatch)
    db = tmp_path / "j.db"
    keys: list[bytes | str] = [*digests(0, 2000), "text", "keys"]
    with SqliteJournal(db, "fp", commit_interval=0) as j:
        for start in range(0, len(keys), 100):
            chunk = keys[start : start + 100]
            assert j.mark_started(chunk) == [True] * len(chunk)  # new, each of them
            j.record([Record.done(k, 1) for k in chunk])
        assert log_rows(db) == 21  # never merged: every "maybe" was found new by a scan
        assert j.mark_started(["keys", keys[5]]) == [False, False]  # repeats, found by scans
    assert item_states(db) == dict.fromkeys(keys, "done")


def always_maybe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that rules nothing out, when looking and when claiming."""
    monkeypatch.setattr(KeyFilter, "maybe", lambda self, keys, blob=None: list(range(len(keys))))
    monkeypatch.setattr(
        KeyFilter, "maybe_add", lambda self, keys, blob=None: list(range(len(keys)))
    )


def log_rows(path: Path) -> int:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM log").fetchone()[0])
    finally:
        conn.close()


def test_a_filter_that_cannot_rule_anything_out_loses_no_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key a false positive: each goes through the exact check, which must tell
    new keys (run them) from keys this run has claimed, recorded or committed."""
    from spindle.journal import Record

    always_maybe(monkeypatch)
    keys = digests(0, 3000)
    ran: list[bytes] = []
    with SqliteJournal(tmp_path / "j.db", "fp", commit_interval=0, commit_items=500) as j:
        for start in range(0, 3000, 250):
            chunk = keys[start : start + 250] + keys[max(0, start - 700) : start : 7]
            go = j.mark_started(chunk)
            todo = [k for k, g in zip(chunk, go, strict=True) if g]
            ran += todo
            j.record([Record.done(k, 1) for k in todo[: len(todo) // 2]])
            j.flush()
            j.record([Record.done(k, 1) for k in todo[len(todo) // 2 :]])
    assert sorted(ran) == sorted(keys)  # each key ran once: no repeat, none left out
    states = item_states(tmp_path / "j.db")
    assert states == dict.fromkeys(keys, "done")


def test_bytes_keys_of_other_lengths_never_share_a_fingerprint_by_accident() -> None:
    """15 + 17 bytes make a 32-byte blob too: such keys must not be cut as digests."""
    f = KeyFilter(first_capacity=100)
    odd = [b"a" * 15, b"b" * 17]
    assert f.maybe_add(odd) == []
    assert f.maybe([b"b" * 17, b"a" * 15]) == [0, 1]
    assert f.maybe([b"a" * 16, b"b" * 16]) == []  # digests: looked up in the table
