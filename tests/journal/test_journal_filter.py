"""The key filter that spares a fresh journal its lookups: no false negatives, ever."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    assert len(f.maybe(new)) < 50  # 1 in 10,000 per filter, a few filters


def test_a_fresh_journal_catches_a_duplicate_committed_earlier_in_the_run(tmp_path: Path) -> None:
    from spindle.journal import Record

    with SqliteJournal(tmp_path / "j.db", "fp", commit_interval=0) as j:
        assert j._filter is not None  # fresh: lookups go through the filter
        assert j.mark_started([b"a", b"b"]) == [True, True]
        j.record([Record.done(b"a", 1), Record.done(b"b", 2)])  # committed: out of memory
        assert j.mark_started([b"c", b"a", b"b"]) == [True, False, False]
        assert j.stats().skipped_duplicate == 2
    with SqliteJournal(tmp_path / "j.db", "fp", commit_interval=0) as j:
        assert j._filter is None  # resumed: every key is looked up
        assert j.mark_started([b"a", b"c", b"d"]) == [False, True, True]
