"""Reading an input file a block at a time gives exactly what reading it line by line does."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spindle import Failure
from spindle.connectors import read_items

LINES = st.sampled_from(
    [b"1", b'{"a": 2}', b"", b"   ", b'{"broken', b"\xff\xfe", b'"text"', b"[1, 2]", b"x\r"]
)


def comparable(values: list[Any]) -> list[Any]:
    return [(v.item, v.error, v.message) if type(v) is Failure else v for v in values]


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(LINES, max_size=60),
    fmt=st.sampled_from(["text", "jsonl"]),
    hint=st.integers(1, 64),
)
def test_chunks_match_line_by_line(lines: list[bytes], fmt: str, hint: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.txt"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        items = read_items(str(path), fmt)
        try:
            expected = comparable(list(items))
        finally:
            items.close()
        items = read_items(str(path), fmt)
        try:
            assert items.chunkable()
            got = comparable([x for chunk in items.chunks(size_hint=hint) for x in chunk])
        finally:
            items.close()
    assert got == expected


def test_a_pipe_is_not_read_in_blocks(tmp_path: Path) -> None:
    import os

    r, w = os.pipe()
    try:
        with open(r, "rb", closefd=False) as f:
            items = read_items("-", "text")
            items._file = f  # standard input stands for any pipe
            assert not items.chunkable()
    finally:
        os.close(r)
        os.close(w)
