"""Keys: the default digests, batch keying, and journals that keep an older scheme."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import xxhash

import spindle
from spindle.journal import item_states, run_journaled
from spindle.journal._keys import DEFAULT_SCHEME, keys_for
from spindle.journal._log import pack_keys, unpack_keys


def test_text_keys_of_a_batch_equal_keys_one_by_one() -> None:
    keys = keys_for(DEFAULT_SCHEME)
    lines = ["", "a", "ü", "x" * 3000, "\ud800 lone surrogate"]
    assert keys.text.many(lines) == [keys.text(line) for line in lines]
    assert keys.text("a") == xxhash.xxh3_128_digest(b"a")
    assert keys_for("blake2b-128").text("a") == hashlib.blake2b(b"a", digest_size=16).digest()
    assert keys.value("a") == keys.text("a")
    assert keys.value({"b": 1, "a": 2}) == keys.json({"a": 2, "b": 1})  # canonical JSON


def test_int_keys_of_a_batch_equal_their_canonical_json_keys() -> None:
    keys = keys_for(DEFAULT_SCHEME)
    ints = [0, -1, 7, 2**63 - 1, -(2**63), 10**30, -(10**30)]  # beyond 64 bits: repr
    assert keys.value.many(ints) == [keys.value(x) for x in ints]
    assert keys.value.many(ints)[2] == keys.json(7) == xxhash.xxh3_128_digest(b"7")
    assert keys.value.many([True, 1]) == [keys.json(True), keys.json(1)]  # bool is not int


def triple(line: str) -> int:
    return 3 * int(line)


def test_a_journal_keyed_with_blake2b_resumes_with_blake2b(tmp_path: Path) -> None:
    pipeline = spindle.Pipeline([spindle.thread(triple, workers=2)])
    out, journal = tmp_path / "out.jsonl", tmp_path / "j.db"
    lines = [str(i) for i in range(50)]
    first = run_journaled(pipeline, lines[:40], output=out, journal=journal)
    assert first.done == 40
    # Make it a journal of before the schemes: BLAKE2b keys and no scheme in meta.
    new, old = keys_for("xxh3-128"), keys_for("blake2b-128")
    by_new = {new.text(line): old.text(line) for line in lines}
    conn = sqlite3.connect(journal, isolation_level=None)
    assert conn.execute("SELECT value FROM meta WHERE name = 'keys'").fetchone() == ("xxh3-128",)
    conn.execute("DELETE FROM meta WHERE name = 'keys'")
    for log_id, fmt, blob in conn.execute("SELECT id, fmt, keys FROM log").fetchall():
        fmt, blob = pack_keys([by_new[k] for k in unpack_keys(fmt, blob)])  # type: ignore[index]
        conn.execute("UPDATE log SET fmt = ?, keys = ? WHERE id = ?", (fmt, blob, log_id))
    conn.close()
    again = run_journaled(pipeline, lines, output=out, journal=journal)
    assert (again.done, again.skipped_done) == (10, 40)  # only the new lines ran
    assert set(item_states(journal)) == {old.text(line) for line in lines}


def test_lines_keyed_from_their_bytes_get_the_keys_of_their_text(tmp_path: Path) -> None:
    from spindle.connectors import Items

    path = tmp_path / "in.txt"
    path.write_bytes("a\r\nü ß\n\n  spaced  \nlast".encode())
    keys = keys_for(DEFAULT_SCHEME)
    items = Items(str(path), "text")
    try:
        (block,) = list(items.chunks(keep_bytes=True))
    finally:
        items.close()
    assert block == ["a", "ü ß", "", "  spaced  ", "last"]
    assert block.clean and block.raw is not None
    assert keys.text.many(block) == [keys.text(line) for line in block]
    assert keys.value.many(block) == [keys.value(line) for line in block]

    path.write_bytes(b"fine\n\xff bad\n")  # not UTF-8: line by line, with a Failure
    items = Items(str(path), "text")
    try:
        (mixed,) = list(items.chunks(keep_bytes=True))
    finally:
        items.close()
    assert mixed[0] == "fine" and type(mixed[1]) is spindle.Failure
    assert not getattr(mixed, "clean", False)
