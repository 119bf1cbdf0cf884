"""Workers appending their records to one output file: whole lines, clear failures."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from spindle.connectors import WRITTEN, AppendLines, JsonLine, OutputError, WriteFailed, encode_line
from spindle.jobs.fetch._run import FetchWriter

pytestmark = pytest.mark.timeout(60)

LINE_BYTES = 200 * 1024  # larger than a pipe's buffer and a page: a torn write would show


async def _as_line(item: int) -> JsonLine:
    return encode_line({"writer": item // 1000, "n": item, "pad": chr(97 + item % 26) * LINE_BYTES})


WRITER = """
import asyncio, pickle, sys
from tests.connectors.test_append_lines import AppendLines, WRITTEN, _as_line
path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
append = pickle.loads(pickle.dumps(AppendLines(path, _as_line)))  # as a worker gets it
async def main():
    for item in range(start, start + count):
        assert await append(item) is WRITTEN
asyncio.run(main())
"""


def test_two_processes_appending_leave_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    root = Path(__file__).resolve().parents[2]
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w * 1000), "60"], cwd=root)
        for w in (0, 1)
    ]
    for writer in writers:
        assert writer.wait(timeout=50) == 0
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted(r["n"] for r in records) == [*range(60), *range(1000, 1060)]
    for record in records:
        assert record["pad"] == chr(97 + record["n"] % 26) * LINE_BYTES


def test_a_value_that_is_not_a_line_goes_back_to_the_parent(tmp_path: Path) -> None:
    async def unwritable(item: int) -> object:
        return encode_line({"value": unwritable})  # not JSON: comes back as the record

    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    value = asyncio.run(AppendLines(str(path), unwritable)(1))
    assert value == {"value": unwritable}
    assert path.read_bytes() == b""


def test_a_failed_write_comes_back_as_write_failed_and_stops_the_writer(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "out.jsonl"
    value = asyncio.run(AppendLines(str(missing), _as_line)(3))
    assert type(value) is WriteFailed
    assert value.message == f"cannot write to {str(missing)!r}: No such file or directory"

    writer = FetchWriter(str(tmp_path / "out.jsonl"))
    try:
        writer.results(["http://a/", "http://b/"], [WRITTEN, WRITTEN])
        assert writer.written == 2
        with pytest.raises(OutputError, match="No such file or directory"):
            writer.results(["http://c/", "http://d/"], [WRITTEN, value])
    finally:
        writer.close()


def test_written_is_one_value_in_every_process() -> None:
    assert pickle.loads(pickle.dumps(WRITTEN)) is WRITTEN
