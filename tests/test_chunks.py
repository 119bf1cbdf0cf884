"""Input and output a list at a time: ChunkedSource and Results.chunks()."""

from __future__ import annotations

import pytest
import workfns as jobs

import spindle
from spindle._core.pipeline import ChunkedSource


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_chunks_hold_the_results_in_order(kind: str) -> None:
    results = spindle.Pipeline(
        [spindle.cpu(jobs.square) if kind == "cpu" else spindle.thread(jobs.square)]
    ).run(range(5000))
    chunks = list(results.chunks())
    assert all(isinstance(c, list) and c for c in chunks)
    assert [x for c in chunks for x in c] == [x * x for x in range(5000)]


def test_chunks_must_come_before_the_first_result() -> None:
    results = spindle.Pipeline([spindle.thread(jobs.square)]).run(range(10))
    try:
        assert next(results) == 0
        with pytest.raises(RuntimeError, match="before the first result"):
            results.chunks()
        assert list(results) == [x * x for x in range(1, 10)]
    finally:
        results.close()


def test_a_chunked_source_is_read_whole_lists_at_a_time() -> None:
    source = ChunkedSource([[1, 2, 3], [], [4], list(range(5, 2000))])
    got = list(spindle.Pipeline([spindle.cpu(jobs.square)]).run(source))
    assert got == [x * x for x in range(1, 2000)]


def test_a_chunked_source_with_inputs_keeps_each_input_and_failure() -> None:
    bad = spindle.Failure("oops", "ValueError", "malformed", "", 0, "input")
    source = ChunkedSource([[1, 2], [3, bad, 4]])
    pipeline = spindle.Pipeline([spindle.thread(jobs.square)], on_error="yield")
    pairs = list(pipeline.run(source, with_inputs=True))
    assert pairs[:2] == [(1, 1), (2, 4)]
    assert pairs[2] == (3, 9) and pairs[4] == (4, 16)
    item, failure = pairs[3]
    assert item == "oops" and isinstance(failure, spindle.Failure)
