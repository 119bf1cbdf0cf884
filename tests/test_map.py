"""spindle.map on every kind: same results as the builtin map, failures, flat maps."""

from __future__ import annotations

import asyncio
import builtins
from collections import Counter
from typing import Any

import pytest
import workfns as jobs
from hypothesis import given, settings
from hypothesis import strategies as st

import spindle

SYNC_KINDS = ["cpu", "thread"]


def sync_or_async(kind: str, fn: Any, afn: Any) -> Any:
    return afn if kind == "io" else fn


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_results_match_builtin_map_in_order(kind: str) -> None:
    fn = sync_or_async(kind, jobs.square, jobs.async_square)
    assert list(spindle.map(fn, range(1000), kind=kind)) == [x * x for x in range(1000)]


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_unordered_gives_the_same_multiset(kind: str) -> None:
    fn = sync_or_async(kind, jobs.square, jobs.async_square)
    got = list(spindle.map(fn, range(2000), kind=kind, ordered=False))
    assert Counter(got) == Counter(x * x for x in range(2000))


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_empty_input(kind: str) -> None:
    fn = sync_or_async(kind, jobs.square, jobs.async_square)
    assert list(spindle.map(fn, [], kind=kind)) == []


@settings(max_examples=15, deadline=None)
@given(items=st.lists(st.integers(-(10**6), 10**6), max_size=300), ordered=st.booleans())
def test_property_cpu_equals_builtin_map(items: list[int], ordered: bool) -> None:
    got = list(spindle.map(jobs.square, items, kind="cpu", workers=2, ordered=ordered))
    expected = list(builtins.map(jobs.square, items))
    assert got == expected if ordered else Counter(got) == Counter(expected)


@settings(max_examples=25, deadline=None)
@given(
    items=st.lists(st.integers(-1000, 1000), max_size=300),
    ordered=st.booleans(),
    kind=st.sampled_from(["thread", "io"]),
)
def test_property_thread_and_io_equal_builtin_map(
    items: list[int], ordered: bool, kind: str
) -> None:
    fn = sync_or_async(kind, jobs.square, jobs.async_square)
    got = list(spindle.map(fn, items, kind=kind, ordered=ordered, concurrency=7))
    expected = [x * x for x in items]
    assert got == expected if ordered else Counter(got) == Counter(expected)


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_generator_functions_flat_map_in_order(kind: str) -> None:
    fn = sync_or_async(kind, jobs.repeat, jobs.arepeat)
    expected = [y for x in range(200) for y in jobs.repeat(x)]
    assert list(spindle.map(fn, range(200), kind=kind)) == expected


def test_lazy_generator_input_and_lambdas_and_closures_travel_to_processes() -> None:
    offset = 1000
    got = list(spindle.map(lambda x: x + offset, (i for i in range(500)), kind="cpu"))
    assert got == [i + 1000 for i in range(500)]


def test_cpu_uses_several_processes() -> None:
    pids = set(spindle.map(jobs.pid_of, range(64), kind="cpu", workers=2, batch_size=1))
    assert len(pids) == 2


def test_async_function_on_cpu_runs_an_event_loop_in_each_process() -> None:
    got = list(spindle.map(jobs.async_square, range(300), kind="cpu", workers=2, concurrency=10))
    assert got == [x * x for x in range(300)]


@pytest.mark.parametrize("kind", ["cpu", "thread", "io"])
def test_on_error_yield_puts_a_failure_in_place(kind: str) -> None:
    if kind == "io":
        got = list(spindle.map(jobs.async_fail_on_3, range(6), kind="io", on_error="yield"))
        bad, error = 3, "KeyError"
    else:
        got = list(
            spindle.map(jobs.fail_on_multiples_of_7, range(1, 30), kind=kind, on_error="yield")
        )
        bad, error = 7, "ValueError"
    failures = [g for g in got if isinstance(g, spindle.Failure)]
    assert failures[0].item == bad
    f = failures[0]
    assert f.error == error
    assert f.attempts == 1
    assert "Traceback" in f.traceback
    assert ("fail_on_multiples_of_7" in f.traceback) or ("async_fail_on_3" in f.traceback)
    ok = [g for g in got if not isinstance(g, spindle.Failure)]
    assert len(ok) + len(failures) == len(got)


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_on_error_raise_reraises_the_original_type_with_the_remote_traceback(kind: str) -> None:
    results = []
    with pytest.raises(ValueError, match="no multiples of 7") as info:
        for r in spindle.map(jobs.fail_on_multiples_of_7, range(1, 100), kind=kind):
            results.append(r)
    assert results == [x * 2 for x in range(1, 7)]  # everything before the failure, in order
    cause = info.value.__cause__
    assert isinstance(cause, spindle.RemoteTraceback)
    assert "fail_on_multiples_of_7" in cause.tb
    assert any("item 7" in n for n in getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_a_job_raising_system_exit_fails_its_item_alone(kind: str) -> None:
    got = list(spindle.map(jobs.exit_on_3, range(6), kind=kind, on_error="yield", workers=1))
    failure = got[3]
    assert isinstance(failure, spindle.Failure)
    assert (failure.error, failure.message) == ("SystemExit", "exit at 3")
    assert got[:3] + got[4:] == [0, 1, 2, 4, 5]


def test_an_async_job_raising_system_exit_fails_the_run_without_hanging() -> None:
    # asyncio lets a SystemExit leave the event loop from the task that raised it:
    # the run ends with it, and closes its workers, rather than waiting forever.
    with pytest.raises(SystemExit, match="exit at 3"):
        list(spindle.map(jobs.async_exit_on_3, range(6), kind="io"))


def test_io_raise() -> None:
    with pytest.raises(KeyError):
        list(spindle.map(jobs.async_fail_on_3, range(10), kind="io"))


def test_exception_that_cannot_be_rebuilt_becomes_job_error() -> None:
    with pytest.raises(spindle.JobError, match="Unbuildable") as info:
        list(spindle.map(jobs.raise_unbuildable, [1], kind="cpu"))
    assert isinstance(info.value.__cause__, spindle.RemoteTraceback)


def test_unpicklable_input_fails_that_item_only_and_names_it() -> None:
    import threading

    lock = threading.Lock()
    got = list(spindle.map(str, [1, lock, 3], kind="cpu", on_error="yield"))
    assert got[0] == "1" and got[2] == "3"
    assert isinstance(got[1], spindle.Failure)
    assert got[1].error == "Unpicklable"
    assert "lock" in got[1].message and "kind='thread'" in got[1].message


def test_unpicklable_result_fails_that_item_only() -> None:
    got = list(spindle.map(jobs.return_lock, range(4), kind="cpu", on_error="yield"))
    assert [g for i, g in enumerate(got) if i != 2] == [0, 1, 3]
    assert isinstance(got[2], spindle.Failure) and got[2].error == "Unpicklable"
    assert "result of item 2" in got[2].message


def test_unpicklable_function_is_a_clear_error_at_start() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(spindle.SpindleError, match="cannot be sent to worker processes"):
        list(spindle.map(lambda x: (lock, x)[1], [1], kind="cpu"))


def test_source_error_is_raised_in_the_caller() -> None:
    def source() -> Any:
        yield 1
        yield 2
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(spindle.map(jobs.square, source(), kind="thread"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gpu"}, "kind must be one of"),
        ({"kind": "cpu", "workers": 0}, "workers must be"),
        ({"kind": "io"}, "use kind='thread'"),
        ({"kind": "cpu", "on_error": "ignore"}, "on_error must be"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(spindle.ConfigError, match=message):
        list(spindle.map(jobs.square, [1], **kwargs))


def test_async_function_on_threads_is_refused() -> None:
    with pytest.raises(spindle.ConfigError, match="kind='io'"):
        spindle.map(jobs.async_square, [1], kind="thread")


def test_with_inputs_pairs_each_result_with_its_input_even_unordered() -> None:
    got = list(spindle.map(jobs.square, range(100), kind="cpu", ordered=False, with_inputs=True))
    assert sorted(got) == [(x, x * x) for x in range(100)]


def test_arun_in_a_running_loop() -> None:
    async def main() -> list[int]:
        p = spindle.Pipeline([spindle.io(jobs.async_square, concurrency=5)])
        return [x async for x in p.arun(range(50))]

    assert asyncio.run(main()) == [x * x for x in range(50)]
