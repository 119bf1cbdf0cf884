"""The keys in flight: cheap while recorded in claim order, a set once they are not."""

from __future__ import annotations

import hashlib
from pathlib import Path

from spindle.connectors import JsonlOutput
from spindle.journal import Record, SqliteJournal, item_states
from spindle.journal._filter import KeyFilter
from spindle.journal._inflight import InFlight


def keys(start: int, stop: int) -> list[bytes]:
    return [hashlib.blake2b(str(i).encode(), digest_size=16).digest() for i in range(start, stop)]


def test_keys_taken_in_claim_order_across_chunks() -> None:
    live = InFlight()
    a, b, c = keys(0, 3), keys(3, 5), keys(5, 9)
    for chunk in (a, b, c):
        live.add_new(chunk)
    assert len(live) == 9 and list(live) == a + b + c
    assert live.take_in_order(a[:2])
    assert live.take_in_order([a[2], *b, c[0]])  # across three chunks
    assert list(live) == c[1:]
    assert live.intersection([c[2], a[0]]) == {c[2]}


def test_a_take_out_of_order_changes_nothing_and_a_set_takes_over() -> None:
    live = InFlight()
    claimed = keys(0, 6)
    live.add_new(claimed[:3])
    live.add_new(claimed[3:])
    assert not live.take_in_order([claimed[0], claimed[2]])  # skips one
    assert not live.take_in_order(keys(0, 1))  # equal, but not the object claimed
    assert not live.take_in_order(claimed * 2)  # more than there is
    assert list(live) == claimed
    assert live.take_in_order(claimed[:1])
    as_set = live.as_set()
    assert as_set == set(claimed[1:])
    assert not live.take_in_order(claimed[1:2])  # a set now: the caller uses it
    live.add_new(keys(6, 7))
    assert len(live) == 6 and keys(6, 7)[0] in as_set


def test_maybe_add_names_repeats_within_a_chunk() -> None:
    f = KeyFilter()
    k = keys(0, 4)
    assert f.maybe_add([k[0], k[1], k[0], k[2], k[1]]) == [2, 4]
    assert f.maybe_add([k[3], k[0]]) == [1]
    g = KeyFilter()
    assert g.maybe_add(["a", "b", "a", "c", "a"]) == [2, 4]
    assert g.maybe_add(["d", "b"]) == [1]


def test_an_ordered_run_never_builds_a_set_and_an_unordered_one_still_works(
    tmp_path: Path,
) -> None:
    claimed = keys(0, 3000)
    output = JsonlOutput(tmp_path / "a.jsonl")
    with SqliteJournal(tmp_path / "a.db", "fp", output=output, commit_items=700) as j:
        for start in range(0, 3000, 1000):
            assert all(j.mark_started(claimed[start : start + 1000]))
            for at in range(start, start + 1000, 256):
                chunk = claimed[at : min(at + 256, start + 1000)]
                j.record_done(chunk, [1] * len(chunk))
        assert len(j._gate.inflight) == 0
        assert j._gate.inflight._set is None  # every record came in claim order
    assert len((tmp_path / "a.jsonl").read_bytes().splitlines()) == 3000
    with SqliteJournal(tmp_path / "b.db", "fp", commit_items=700) as j:
        assert all(j.mark_started(claimed[:1000]))
        j.record_done(claimed[500:1000], [1] * 500)  # out of order
        j.record([Record.failed(k, "E", "m") for k in claimed[:10]])
        j.record_done(claimed[10:500], [1] * 490)
        j.record_done(claimed[10:20], [1] * 10)  # recorded already: ignored
        assert len(j._gate.inflight) == 0
    states = item_states(tmp_path / "b.db")
    assert states == {k: "failed" if i < 10 else "done" for i, k in enumerate(claimed[:1000])}


def test_bytes_keys_of_other_lengths_are_logged_as_they_are(tmp_path: Path) -> None:
    """15 + 17 bytes make 32, like two digests: the log must not cut them as digests."""
    odd = [b"a" * 15, b"b" * 17]
    with SqliteJournal(tmp_path / "j.db", "fp", commit_interval=0) as j:
        assert j.mark_started(keys(0, 2)) == [True, True]  # digests first
        j.record_done(keys(0, 2), [1, 1])
        assert j.mark_started(odd) == [True, True]
        j.record_done(odd, [1, 1])
    assert item_states(tmp_path / "j.db") == dict.fromkeys([*keys(0, 2), *odd], "done")
