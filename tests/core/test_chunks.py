"""Input and output a list at a time: ChunkedSource and Results.chunks()."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import workfns as jobs

import spindle
from spindle._core.source import ChunkedSource


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


def _gen(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("source", ["list", "generator", "chunked"])
def test_inputs_follow_their_results_through_a_flat_stage_and_failures(
    source: str, ordered: bool
) -> None:
    # Stage 1 gives two outputs per input (x * 10, x * 10 + 1); stage 2 doubles them
    # and fails on the multiples of 7. Every pair must carry the input it came from,
    # whatever the batching, the order and the source's form.
    n = 3000
    items: Any = {
        "list": list(range(n)),
        "generator": _gen(n),
        "chunked": ChunkedSource([list(range(i, min(i + 700, n))) for i in range(0, n, 700)]),
    }[source]
    pipeline = spindle.Pipeline(
        [spindle.cpu(jobs.tens, batch_size=3), spindle.thread(jobs.fail_on_multiples_of_7)],
        ordered=ordered,
        on_error="yield",
    )
    pairs = list(pipeline.run(items, with_inputs=True))
    assert len(pairs) == 2 * n
    for x, out in pairs:
        if isinstance(out, spindle.Failure):
            assert out.item % 7 == 0 and out.item // 10 == x
        else:
            assert out % 7 != 0 and out // 20 == x
    assert sorted(x for x, _ in pairs) == sorted([*range(n), *range(n)])
    if ordered:
        assert [x for x, _ in pairs] == [x for x in range(n) for _ in range(2)]


def test_chunks_with_inputs_gives_two_lists_of_the_same_length() -> None:
    results = spindle.Pipeline([spindle.cpu(jobs.square)]).run(_gen(5000), with_inputs=True)
    columns = list(results.chunks_with_inputs())
    assert all(len(inputs) == len(values) > 0 for inputs, values in columns)
    assert [x for inputs, _ in columns for x in inputs] == list(range(5000))
    assert [y for _, values in columns for y in values] == [x * x for x in range(5000)]


def test_chunks_with_inputs_needs_a_run_with_inputs_and_comes_first() -> None:
    plain = spindle.Pipeline([spindle.thread(jobs.square)]).run(range(10))
    with pytest.raises(RuntimeError, match="with_inputs=True"):
        plain.chunks_with_inputs()
    plain.close()
    results = spindle.Pipeline([spindle.thread(jobs.square)]).run(range(10), with_inputs=True)
    try:
        assert next(results) == (0, 0)
        with pytest.raises(RuntimeError, match="before the first result"):
            results.chunks_with_inputs()
    finally:
        results.close()


def test_arun_with_inputs_pairs_a_generator_source() -> None:
    async def main() -> list[tuple[int, int]]:
        pipeline = spindle.Pipeline([spindle.cpu(jobs.square)])
        return [pair async for pair in pipeline.arun(_gen(2000), with_inputs=True)]

    assert asyncio.run(main()) == [(x, x * x) for x in range(2000)]
