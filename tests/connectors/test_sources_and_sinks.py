"""The connectors' two interfaces, their fakes, and the one error tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spindle
from spindle.connectors import (
    InputError,
    MemorySink,
    MemorySource,
    OutputError,
    RecordWriter,
    Sink,
    Source,
    read_items,
)
from spindle.journal import MemoryJournal


def double(x: int) -> int:
    if x == 3:
        raise ValueError("no 3")
    return 2 * x


def run_into(sink: Sink, source: Source) -> None:
    """What the command line's driver does, without its display and signals."""
    pipeline = spindle.Pipeline([spindle.thread(double, workers=2)], on_error="yield")
    feed = source
    with pipeline.run(feed, with_inputs=True) as results, sink:
        for inputs, values in results.chunks_with_inputs():
            sink.write(inputs, values)


def test_a_memory_source_into_a_memory_sink() -> None:
    source = MemorySource(range(10))
    sink = MemorySink()
    assert source.total == 10 and not source.chunkable()
    run_into(sink, source)
    assert sink.closed
    assert sink.results == [(x, 2 * x) for x in range(10) if x != 3]
    [(item, failure)] = sink.failures
    assert item == 3 and failure.error == "ValueError" and failure.message == "no 3"
    assert (sink.written, sink.failed) == (9, 1)


def test_a_chunked_memory_source_gives_its_lists() -> None:
    source = MemorySource(iter(range(10)), chunk=4)
    assert source.chunkable() and source.total is None
    assert list(source.chunks()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_sink_refuses_writes_after_close() -> None:
    sink = MemorySink()
    sink.close()
    with pytest.raises(RuntimeError, match="after close"):
        sink.write([1], [1])


def test_the_file_sink_writes_results_and_failures(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with read_items_of(tmp_path, ["1", "2", "3"]) as source:
        run_into(RecordWriter(str(out)), source)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"input": 1, "result": 2}, {"input": 2, "result": 4}]
    failures = (tmp_path / "out.jsonl.failures.jsonl").read_text().splitlines()
    assert [json.loads(f)["input"] for f in failures] == [3]


def read_items_of(tmp_path: Path, lines: list[str]) -> Source:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return read_items(str(path), "jsonl")


def test_one_output_error_for_the_plain_and_the_journaled_outputs(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "out.jsonl"
    with pytest.raises(OutputError, match="no such dir"):
        RecordWriter(str(missing))
    with pytest.raises(OutputError, match="no such dir"):
        spindle.map(abs, [1], journal=tmp_path / "j.db", output=missing)
    assert issubclass(OutputError, spindle.SpindleError)
    assert issubclass(InputError, spindle.SpindleError)
    with pytest.raises(InputError, match="cannot read input"):
        read_items(str(tmp_path / "missing.txt"), "text")


def test_the_journals_sink_records_every_result_once() -> None:
    from spindle.journal import JournalSink

    journal = MemoryJournal()
    keys = [f"k{i}".encode() for i in range(6)]
    assert all(journal.mark_started(keys))
    by_input = dict(zip(range(6), keys, strict=True))
    sink = JournalSink(journal, lambda inputs: [by_input[i] for i in inputs], batch=4)
    sink.write([0, 1, 2], [0, 2, 4])
    failure = spindle.Failure(3, "ValueError", "no 3", "", 1, "double")
    sink.write([3, 4, 5], [failure, 8, 10])
    sink.close()
    assert (sink.written, sink.failed) == (5, 1)
    status = journal.summary()
    assert (status.done, status.failed, status.pending) == (5, 1, 0)
