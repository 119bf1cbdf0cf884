"""A stream run over the fakes: acknowledged only once durable, bounded, stoppable."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import spindle
from spindle._core.source import ChunkedSource, TaggedChunk
from spindle.cli._driver import StreamTarget
from spindle.connectors import (
    AckSource,
    MemoryAckSource,
    MemorySink,
    Message,
    OutputError,
    Sink,
    StreamRun,
)
from spindle.connectors._keys import content_key, field_key, keyed


def double(x: int) -> int:
    if x == 13:
        raise ValueError("no 13")
    return 2 * x


def pipeline(kind: str = "thread") -> spindle.Pipeline:
    stage = spindle.thread(double, workers=2) if kind == "thread" else spindle.cpu(double)
    return spindle.Pipeline([stage], on_error="yield")


class WatchingSink(Sink):
    """Keeps results by key and checks, at every write and commit, that none of the
    chunk's messages is acknowledged yet."""

    takes_messages = True

    def __init__(self, source: MemoryAckSource, fail_on: int | None = None) -> None:
        self.source = source
        self.fail_on = fail_on
        self.rows: dict[str, Any] = {}
        self.failures: dict[str, Any] = {}
        self.early_acks: list[Any] = []
        self.chunks: list[list[Any]] = []
        self._last: list[Any] = []

    def _check(self, tokens: list[Any]) -> None:
        acked = set(self.source.acked)
        self.early_acks.extend(t for t in tokens if t in acked)

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        tokens = [m.token for m in inputs]
        self._check(tokens)
        if self.fail_on is not None and self.fail_on in tokens:
            raise OutputError("the database went away")
        for m, v in zip(inputs, values, strict=True):
            assert isinstance(m, Message)
            if type(v) is spindle.Failure:
                self.failures[m.key] = v
                self.failed += 1
            else:
                self.rows.setdefault(m.key, v)
                self.written += 1
        self.chunks.append(tokens)
        self._last = tokens

    def commit(self) -> None:
        self._check(self._last)

    def close(self) -> None:
        pass


def test_every_message_is_acknowledged_after_its_chunk_is_committed() -> None:
    source = MemoryAckSource(range(5000))
    sink = WatchingSink(source)
    run = StreamRun(source, sink, read_size=128)
    run.run(pipeline())
    assert sink.early_acks == []
    assert sorted(source.acked) == list(range(5000))
    assert source.pending() == [] and source.unknown_acks == []
    assert len(sink.rows) == 4999 and set(sink.failures) == {"13"}
    # one acknowledgement a commit, holding exactly that chunk's messages
    assert source.ack_calls == sink.chunks
    assert run.read == run.acked == 5000 and run.unacked == 0 and run.commits == len(sink.chunks)


def test_a_sink_that_raises_acknowledges_nothing_of_its_chunk() -> None:
    source = MemoryAckSource(range(3000))
    sink = WatchingSink(source, fail_on=1500)
    run = StreamRun(source, sink, read_size=100)
    with pytest.raises(OutputError, match="went away"):
        run.run(pipeline())
    acked = set(source.acked)
    assert 1500 not in acked
    assert acked == {t for chunk in sink.chunks for t in chunk}  # only committed chunks
    assert set(source.pending()) == set(range(run.read)) - acked
    assert sink.early_acks == []


def test_a_failing_job_in_a_raising_pipeline_leaves_it_and_later_ones_unacknowledged() -> None:
    source = MemoryAckSource(range(100))
    sink = MemorySink()
    stage = spindle.thread(double, workers=1)
    with pytest.raises(ValueError, match="no 13"):
        StreamRun(source, sink, read_size=10).run(spindle.Pipeline([stage]))
    assert 13 not in source.acked
    assert set(source.acked) <= set(range(13))
    assert [x for x, _ in sink.results] == source.acked  # a plain sink gets the bodies


class GatedSource(MemoryAckSource):
    """Tells waiting tests each time it has been read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = threading.Condition()

    def read(self, max_n: int, wait: float) -> list[Message]:
        out = super().read(max_n, wait)
        with self.reads:
            self.reads.notify_all()
        return out

    def wait_pending(self, n: int) -> None:
        with self.reads:
            assert self.reads.wait_for(lambda: len(self.pending()) >= n, timeout=30)


def test_a_slow_sink_holds_the_intake_at_the_bound() -> None:
    source = GatedSource(range(20_000))
    sink = WatchingSink(source)
    run = StreamRun(source, sink, max_unacked=300, read_size=64)
    results, acking = run.start(pipeline())
    try:
        chunks = results.chunks_with_inputs()
        first = next(chunks)
        # The sink has not written anything yet: the source fills the bound, and stops.
        source.wait_pending(300)
        assert len(source.pending()) == 300 and run.unacked == 300
        acking.write(*first)
        for chunk in chunks:
            acking.write(*chunk)
    finally:
        run.stop_intake()
        results.close()
    assert source.max_pending == 300 == run.peak_unacked
    assert run.intake_waits > 0
    assert sorted(source.acked) == list(range(20_000))


def test_the_default_bound_is_the_pipelines() -> None:
    source = MemoryAckSource(range(10))
    p = pipeline()
    run = StreamRun(source, MemorySink())
    run.run(p)
    assert run.limit == p.bound()


def test_stopping_leaves_what_was_not_written_for_redelivery() -> None:
    gate = threading.Event()

    def held(x: int) -> int:
        if x >= 100:  # the jobs from 100 on wait until the run is told to stop
            assert gate.wait(30)
        return x

    source = MemoryAckSource(range(2000), drain=False)
    sink = WatchingSink(source)
    run = StreamRun(source, sink, read_size=50, wait=0.05)
    p = spindle.Pipeline([spindle.thread(held, workers=2)], on_error="yield")
    results, acking = run.start(p)
    try:
        for n, chunk in enumerate(results.chunks_with_inputs()):
            acking.write(*chunk)
            if n == 0:  # what the first Ctrl-C does; then the jobs in flight finish
                run.stop_intake()
                results.stop_intake(30.0)
                gate.set()
    finally:
        gate.set()
        run.stop_intake()
        results.close()
    acked = set(source.acked)
    left = source.pending()
    assert acked and left
    assert acked.isdisjoint(left) and len(acked) + len(left) == run.read
    # The broker gives them again, marked, and a drain run finishes the work.
    assert source.redeliver() == len(left)
    source.drain = True
    again = StreamRun(source, sink)
    again.run(p)
    assert again.redelivered == len(left)
    assert sorted(source.acked) == list(range(2000)) and source.unknown_acks == []
    assert len(sink.rows) == 2000


def test_a_message_that_could_not_be_read_fails_alone_and_is_acknowledged() -> None:
    bad = spindle.Failure("{oops", "MalformedInput", "message 1: not valid JSON", "", 0, "input")
    source = MemoryAckSource([1, bad, 3])
    sink = WatchingSink(source)
    StreamRun(source, sink).run(pipeline())
    assert sorted(source.acked) == [0, 1, 2]
    assert sink.rows == {"0": 2, "2": 6}
    assert sink.failures["1"].error == "MalformedInput"


def test_rows_show_the_source_and_the_sink() -> None:
    source = MemoryAckSource(range(100))
    run = StreamRun(source, MemorySink())
    run.run(pipeline())
    src, snk = run.rows()
    assert src["role"] == "source" and src["read"] == src["acked"] == 100 and src["lag"] == 0
    assert snk["role"] == "sink" and snk["written"] == 99 and snk["failed"] == 1
    assert snk["commits"] == snk["commit_latency"]["count"] >= 1
    lines = run.lines()
    assert "100 read (0 redelivered), 100 acknowledged, 0 left unacknowledged" in lines[0]
    assert "99 results, 1 failures" in lines[1]


def test_an_ack_source_is_not_iterated() -> None:
    with pytest.raises(TypeError, match="StreamRun"):
        next(MemoryAckSource([1]))


def test_tagged_chunks_bring_their_inputs_beside_the_results() -> None:
    tags = [Message(i, str(i), i) for i in range(5)]
    chunks = [TaggedChunk([m.body for m in tags[:3]], tags[:3]), TaggedChunk([3, 4], tags[3:])]
    p = spindle.Pipeline([spindle.thread(lambda x: x * 10)])
    got = list(p.run(ChunkedSource(chunks), with_inputs=True))
    assert got == [(m, m.body * 10) for m in tags]
    plain = [TaggedChunk([1, 2], tags[:2])]
    assert list(p.run(ChunkedSource(plain))) == [10, 20]


def test_keys_of_messages_of_fields_and_of_content() -> None:
    msgs = [Message({"id": "a"}, "k1", 1), Message({"id": "b"}, "k2", 2)]
    assert keyed(msgs, [1, 2], content_key)[0] == ["k1", "k2"]
    keys, items, values = keyed([{"id": 7}, {"x": 1}], [1, 2], field_key("id"))
    assert keys[0] == "7" and keys[1] == content_key({"x": 1})
    assert values[0] == 1 and values[1].error == "MissingKey" and items == [{"id": 7}, {"x": 1}]
    assert content_key("a") == content_key("a") != content_key(["a"])
    assert len(content_key({"b": 1, "a": 2})) == 32
    assert content_key({"b": 1, "a": 2}) == content_key({"a": 2, "b": 1})


def test_an_ack_source_may_be_written_by_a_user() -> None:
    class Ticks(AckSource):
        drain = True

        def __init__(self) -> None:
            self.left = 3
            self.acked: list[int] = []

        def read(self, max_n: int, wait: float) -> list[Message]:
            if not self.left:
                return []
            self.left -= 1
            return [Message(self.left, str(self.left), self.left)]

        def ack(self, tokens: list[Any]) -> None:
            self.acked.extend(tokens)

    source = Ticks()
    StreamRun(source, MemorySink()).run(pipeline())
    assert sorted(source.acked) == [0, 1, 2]


def test_importing_the_connectors_loads_no_broker_client() -> None:
    code = (
        "import sys, spindle.connectors, spindle.cli.map; "
        "print([m for m in ('redis', 'psycopg', 'asyncpg') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_the_run_snapshot_shows_the_connectors() -> None:
    seen: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def service(snapshot: Callable[[], Any]) -> AsyncIterator[None]:
        yield
        seen.append(dict(snapshot()))  # what a display's last look at the run finds

    source = MemoryAckSource(range(50))
    target = StreamTarget(StreamRun(source, MemorySink()))
    results, sink = target.start(pipeline(), source, total=None, services=[service])
    with results:
        for chunk in results.chunks_with_inputs():
            sink.write(*chunk)
    (snap,) = seen
    assert [row["role"] for row in snap["connectors"]] == ["source", "sink"]
    assert "stages" in snap
    assert target.sections()["connectors"][0]["acked"] == 50
    lines, failed = target.finish(results, sink)
    assert failed and "50 acknowledged" in lines[0]
