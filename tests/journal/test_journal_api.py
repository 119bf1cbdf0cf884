"""``spindle.map(..., journal=PATH)`` and ``Pipeline.run(items, journal=PATH)``: the
Python API's resumable runs (see ``spindle/journal/_resumable.py``)."""

from __future__ import annotations

import gc
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import spindle
from spindle.journal import JournalLocked, JournalMismatch, item_states


class Calls:
    """A job that counts its calls by input (thread stages share it)."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.count: Counter[int] = Counter()
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self._lock:
            self.count[x] += 1
        if x in self.fail:
            raise ValueError(f"no {x}")
        return x * x


def square(x: int) -> int:
    return x * x


def square_but_not_50(x: int) -> int:
    if x == 50:
        raise ValueError("no 50")
    return x * x


def states(journal: Path) -> Counter[str]:
    return Counter(item_states(journal).values())


def test_a_rerun_skips_what_was_done_and_repeats_run_once(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    job = Calls()
    first = spindle.map(job, range(100), kind="thread", workers=4, journal=journal)
    assert list(first) == [x * x for x in range(100)]
    assert first.outcome.done == 100
    again = spindle.map(job, [*range(120), 5, 5, 119], kind="thread", journal=journal)
    assert list(again) == [x * x for x in range(100, 120)]
    assert again.outcome.done == 20
    # 5 and 5 again were done before (skipped as done), 119 ran in this run (a duplicate).
    assert (again.outcome.skipped_done, again.outcome.skipped_duplicate) == (102, 1)
    assert max(job.count.values()) == 1 and len(job.count) == 120
    assert states(journal) == {"done": 120}


def test_failures_are_recorded_skipped_then_retried(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    job = Calls(fail=frozenset({3, 7}))
    got = list(spindle.map(job, range(10), kind="thread", journal=journal, on_error="yield"))
    assert [type(r) is spindle.Failure for r in got].count(True) == 2
    assert got[3].message == "no 3" and got[3].item == 3
    assert states(journal) == {"done": 8, "failed": 2}
    assert list(spindle.map(job, range(10), kind="thread", journal=journal, on_error="yield")) == []
    job.fail = frozenset()
    retried = spindle.map(
        job, range(10), kind="thread", journal=journal, on_error="yield", retry_failed=True
    )
    assert list(retried) == [9, 49]
    assert job.count == Counter({x: 2 if x in (3, 7) else 1 for x in range(10)})
    assert states(journal) == {"done": 10}


def test_a_raised_failure_is_not_recorded_so_a_rerun_runs_it_again(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    # The fixed function keeps the stage's name, hence the journal's fingerprint.
    results = spindle.map(
        square_but_not_50, range(100), kind="cpu", workers=2, journal=journal, name="square"
    )
    got: list[int] = []
    with pytest.raises(ValueError, match="no 50") as raised:
        got.extend(results)
    assert isinstance(raised.value.__cause__, spindle.RemoteTraceback)
    assert got == [x * x for x in range(50)]  # in order, up to the failure
    assert "failed" not in states(journal)
    done_before = results.outcome.done
    assert done_before <= 50  # 0 when the failure came in the first chunk
    rest = list(spindle.map(square, range(100), kind="cpu", workers=2, journal=journal))
    # What the caller asked past is done; the rest, the failed item with it, runs now.
    assert rest == [x * x for x in range(done_before, 100)]
    assert states(journal) == {"done": 100}


def test_results_the_caller_did_not_finish_come_again(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    job = Calls()
    handled: list[int] = []
    with pytest.raises(RuntimeError, match="caller"):
        for r in spindle.map(job, range(5000), kind="thread", journal=journal):
            if r == 2500 * 2500:
                raise RuntimeError("the caller failed")
            handled.append(r)
    assert 2500 * 2500 not in handled
    rest = list(spindle.map(job, range(5000), kind="thread", journal=journal))
    assert 2500 * 2500 in rest  # the result the caller failed on comes again
    assert set(handled) | set(rest) == {x * x for x in range(5000)}  # nothing lost
    assert states(journal) == {"done": 5000}


def test_output_holds_one_record_per_input(tmp_path: Path) -> None:
    journal, output = tmp_path / "j.db", tmp_path / "out.jsonl"
    job = Calls(fail=frozenset({4}))
    pipeline = spindle.Pipeline([spindle.thread(job, workers=3)], on_error="yield")
    with pipeline.run(range(3000), journal=journal, output=output) as results:
        for n, _ in enumerate(results):
            if n == 1000:
                break
    list(pipeline.run(range(3000), journal=journal, output=output))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["input"] for r in records) == [x for x in range(3000) if x != 4]
    assert all(r["result"] == r["input"] ** 2 for r in records)
    failures = output.with_name("out.jsonl.failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in failures] == [4]


def test_a_caller_that_changes_its_chunks_changes_nothing_recorded(tmp_path: Path) -> None:
    journal, output = tmp_path / "j.db", tmp_path / "out.jsonl"
    pipeline = spindle.Pipeline([spindle.thread(square, workers=2)])
    taken = 0
    for chunk in pipeline.run(range(2000), journal=journal, output=output).chunks():
        taken += len(chunk)
        chunk.reverse()  # the caller's own list, to do with as it likes
        chunk.append(-1)
    assert taken == 2000
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["input"] for r in records) == list(range(2000))
    assert all(r["result"] == r["input"] ** 2 for r in records)
    assert states(journal) == {"done": 2000}


def test_keys_by_field_or_function(tmp_path: Path) -> None:
    items = [{"id": i % 10, "v": i} for i in range(30)]
    pipeline = spindle.Pipeline([spindle.thread(lambda r: r["v"])])
    assert list(pipeline.run(items, journal=tmp_path / "a.db", key="id")) == list(range(10))
    by_fn = pipeline.run(items, journal=tmp_path / "b.db", key=lambda r: r["v"] % 3)
    assert list(by_fn) == [0, 1, 2]
    assert by_fn.outcome.skipped_duplicate == 27


def test_unordered_and_with_inputs(tmp_path: Path) -> None:
    results = spindle.map(
        square, range(500), kind="cpu", journal=tmp_path / "j.db", ordered=False, with_inputs=True
    )
    assert sorted(results) == [(x, x * x) for x in range(500)]
    assert results.snapshot()["stages"][0]["done"] == 500


def test_chunks_with_inputs_of_a_journaled_run(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    pipeline = spindle.Pipeline([spindle.thread(square, workers=2)], on_error="yield")
    seen: dict[int, int] = {}
    with pipeline.run(range(3000), journal=journal, with_inputs=True) as results:
        for inputs, values in results.chunks_with_inputs():
            assert len(inputs) == len(values)
            seen.update(zip(inputs, values, strict=True))
    assert seen == {x: x * x for x in range(3000)}
    assert states(journal) == {"done": 3000}
    # Without with_inputs there are no inputs to give: said at once, as without a journal.
    plain = pipeline.run(range(10), journal=tmp_path / "other.db")
    with pytest.raises(RuntimeError, match="with_inputs=True"):
        plain.chunks_with_inputs()
    plain.close()


def test_a_run_left_open_names_itself_and_closing_releases_it(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    results = spindle.map(Calls(), range(10), kind="thread", journal=journal)
    with pytest.raises(JournalLocked, match="still open in this process"):
        spindle.map(Calls(), range(10), kind="thread", journal=journal)
    results.close()  # never iterated: nothing ran, the journal is free
    assert list(spindle.map(Calls(), range(3), kind="thread", journal=journal)) == [0, 1, 4]
    dropped = spindle.map(Calls(), range(10), kind="thread", journal=journal)
    next(iter(dropped))
    del dropped
    gc.collect()  # a dropped run closes its journal too
    assert list(spindle.map(Calls(), range(4), kind="thread", journal=journal)) == [9]


def test_another_pipelines_journal_is_refused_unless_forced(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"

    def other(x: int) -> int:
        return -x

    assert len(list(spindle.map(Calls(), range(5), kind="thread", journal=journal))) == 5
    with pytest.raises(JournalMismatch):
        spindle.map(other, range(5), kind="thread", journal=journal)
    assert list(spindle.map(other, range(3), kind="thread", journal=journal, force=True)) == [
        0,
        -1,
        -2,
    ]


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ({"output": "o.jsonl"}, "output applies"),
        ({"retry_failed": True, "force": True}, "retry_failed, force apply"),
    ],
)
def test_journal_options_without_a_journal_are_refused(given: dict[str, Any], names: str) -> None:
    with pytest.raises(spindle.ConfigError, match=names):
        spindle.map(abs, [1], kind="thread", **given)


def test_a_generator_stage_is_refused(tmp_path: Path) -> None:
    def twice(x: int) -> Any:
        yield x
        yield x

    with pytest.raises(spindle.ConfigError, match="return a list instead"):
        spindle.Pipeline([spindle.thread(twice)]).run([1], journal=tmp_path / "j.db")
    assert not (tmp_path / "j.db").exists()


_CTRL_C_CHILD = """
import os, sys, threading
import spindle

def job(x):
    if x == 700 and os.environ.get("HOLD"):
        threading.Event().wait()  # the first run cannot end by itself
    return x * x

if __name__ == "__main__":
    taken = 0
    try:
        for _ in spindle.map(job, range(1000), kind="cpu", workers=2, batch_size=1,
                             journal="j.db", output="out.jsonl"):
            taken += 1
            if taken == 600:
                print("ready", flush=True)
    finally:
        print("taken", taken, flush=True)
"""


@pytest.mark.timeout(60)
def test_ctrl_c_closes_the_journal_and_the_same_call_finishes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "child.py").write_text(_CTRL_C_CHILD)
    env = {**os.environ, "HOLD": "1"}
    proc = subprocess.Popen(
        [sys.executable, "child.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGINT  # KeyboardInterrupt, re-raised by Python
    taken = int(out.split()[-1])
    assert 600 <= taken <= 700  # in order: never past item 700, which never ends
    first = states(tmp_path / "j.db")
    # What the caller asked past, at most: the chunk it was in when the signal came is
    # not recorded (all of its results may have come in that one chunk).
    assert first["done"] <= taken
    assert first["done"] + first["pending"] >= 700  # item 700 claimed, never done
    again = subprocess.run(
        [sys.executable, "child.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.split()[-1]) == 1000 - first["done"]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in records) == list(range(1000))
    assert states(tmp_path / "j.db") == {"done": 1000}


def test_keys_of_ordered_results_are_taken_in_claim_order_past_dropped_items() -> None:
    from spindle.journal import MemoryJournal
    from spindle.journal._claims import Claimer

    items = [f"item {i}" for i in range(7)]
    claimer = Claimer(MemoryJournal(), str.upper, str.upper, ordered=True)
    chunks = list(claimer.claimed(items))
    assert [x for chunk in chunks for x in chunk] == items
    assert claimer.keys_of(items[0:2]) == ["ITEM 0", "ITEM 1"]
    # Item 2 and item 4 were dropped unstarted by a stop: they stay claimed, unrecorded.
    assert claimer.keys_of([items[3], items[5], items[6]]) == ["ITEM 3", "ITEM 5", "ITEM 6"]
    assert not claimer.claims
    with pytest.raises(RuntimeError, match="never claimed"):
        claimer.keys_of(["stranger"])
