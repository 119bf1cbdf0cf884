"""Results on every kind of executor: what comes out, in which order, and how lazily."""

from __future__ import annotations

from collections import Counter
from typing import Any

from _support import Counted

import spindle

from ._suite import (
    REPEAT,
    SQUARE,
    TENS,
    TENS_BUT_3_FAILS,
    UNEVEN_SQUARE,
    ExecutorMixin,
    Job,
    create_executor_tests,
)


class ResultsBehaviour(ExecutorMixin):
    def test_spindle_map_gives_what_the_builtin_map_gives(self) -> None:
        results = self.map(SQUARE, range(500))
        assert list(results) == [x * x for x in range(500)]
        [stats] = results.stats()
        assert (stats.done, stats.failed) == (500, 0)

    def test_an_empty_input_gives_no_results(self) -> None:
        results = self.run(SQUARE, [])
        assert list(results) == []
        assert results.stats()[0].done == 0
        assert list(self.map(SQUARE, iter(()))) == []

    def test_a_generator_input_is_read_no_further_ahead_than_the_bound(self) -> None:
        # Small buffers and batches keep the bound, and so the input, small; an async
        # stage's batches are single items already.
        batches: dict[str, Any] = {} if self.asynchronous else {"batch_size": 16}
        pipeline = self.pipeline(SQUARE, buffer=64, **batches)
        bound = pipeline.bound()
        source = Counted(5000)
        assert 4 * bound < source.n  # else the test could not tell
        consumed = worst = 0
        for result in pipeline.run(source):
            assert result == consumed * consumed
            consumed += 1
            worst = max(worst, source.drawn - consumed)
        assert consumed == source.n
        assert worst <= bound, (worst, bound)

    def test_ordered_results_keep_the_input_order_when_jobs_take_uneven_times(self) -> None:
        # Single-item batches on several workers: a later item often finishes first.
        got = list(self.run(UNEVEN_SQUARE, range(60), batch_size=1))
        assert got == [x * x for x in range(60)]

    def test_unordered_results_are_all_there(self) -> None:
        got = list(self.run(UNEVEN_SQUARE, range(60), ordered=False, batch_size=1))
        assert Counter(got) == Counter(x * x for x in range(60))

    def test_unordered_results_can_be_paired_with_their_inputs(self) -> None:
        got = list(self.run(SQUARE, range(100), ordered=False, with_inputs=True))
        assert sorted(got) == [(x, x * x) for x in range(100)]

    def test_a_generator_function_gives_each_input_0_to_n_outputs_in_input_order(
        self,
    ) -> None:
        got = list(self.run(REPEAT, range(200)))
        assert got == [x for x in range(200) for _ in range(x % 4)]

    def test_the_outputs_of_one_input_stay_together_when_unordered(self) -> None:
        got = list(self.run(TENS, range(100), ordered=False))
        assert len(got) == 200
        pairs = [(got[i], got[i + 1]) for i in range(0, 200, 2)]
        assert all(first % 10 == 0 and second == first + 1 for first, second in pairs)
        assert sorted(first // 10 for first, _ in pairs) == list(range(100))

    def test_a_generator_that_fails_gives_one_failure_and_none_of_its_outputs(self) -> None:
        got = list(self.run(TENS_BUT_3_FAILS, range(6), on_error="yield"))
        [failure] = [g for g in got if isinstance(g, spindle.Failure)]
        assert failure.item == 3 and failure.error == "ValueError"
        assert got.index(failure) == 6  # after the two outputs of each of 0, 1 and 2
        assert [g for g in got if g is not failure] == [
            y for x in (0, 1, 2, 4, 5) for y in (x * 10, x * 10 + 1)
        ]

    def test_a_closure_defined_in_the_test_runs(self) -> None:
        # Processes get it by value (cloudpickle), spawned ones included.
        offset = 1000

        async def add_offset(x: int) -> int:
            return x + offset

        job = Job(lambda x: x + offset, add_offset)
        assert list(self.run(job, range(50))) == [x + 1000 for x in range(50)]


create_executor_tests(globals(), ResultsBehaviour)
