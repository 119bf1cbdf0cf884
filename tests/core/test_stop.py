"""Clean stops: break, consumer errors, Ctrl-C and dying workers leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import workfns as jobs

import spindle


def test_break_stops_every_process_without_waiting_for_running_jobs() -> None:
    items = [0.0] * 4 + [60.0] * 50  # four quick results, then jobs of a minute each
    results = spindle.map(jobs.sleepy, items, kind="cpu", workers=2, batch_size=1)
    for i, _ in enumerate(results):
        if i == 2:
            break
    t0 = time.monotonic()
    results.close()
    # The running jobs sleep for a minute: stopping must kill them, not wait.
    assert time.monotonic() - t0 < 5
    assert psutil.Process().children() == []


def test_break_abandons_running_thread_jobs_instead_of_waiting() -> None:
    # A thread cannot be killed: close() returns without waiting for the 3-second
    # jobs, and the threads end on their own when those jobs return (the leak
    # check joins them).
    items = [0.0] * 4 + [3.0] * 50
    results = spindle.map(jobs.sleepy, items, kind="thread", workers=2, batch_size=1)
    for i, _ in enumerate(results):
        if i == 2:
            break
    t0 = time.monotonic()
    results.close()
    assert time.monotonic() - t0 < 2.5


def test_consumer_exception_stops_the_run() -> None:
    with pytest.raises(RuntimeError, match="consumer broke"):
        for x in spindle.map(jobs.square, range(10**9), kind="cpu"):
            if x > 100:
                raise RuntimeError("consumer broke")
    assert psutil.Process().children() == []


def test_io_break() -> None:
    results = spindle.map(jobs.async_square, range(10**9), kind="io")
    assert next(results) == 0
    results.close()


def test_a_worker_killed_by_sigkill_fails_only_its_item() -> None:
    got = list(spindle.map(jobs.kill_self_on_5, range(40), kind="cpu", on_error="yield"))
    failures = [g for g in got if isinstance(g, spindle.Failure)]
    assert [f.item for f in failures] == [5]
    assert failures[0].error == "WorkerCrashed"
    assert "SIGKILL" in failures[0].message
    assert [g for g in got if not isinstance(g, spindle.Failure)] == [
        x for x in range(40) if x != 5
    ]


SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import spindle, workfns
    items = [0.0] * 4 + [60.0] * 50
    for i, r in enumerate(spindle.map(workfns.sleepy, items, kind="cpu", workers=2)):
        if i == 0:
            print("first result", flush=True)
    """
)


def test_ctrl_c_stops_the_run_and_every_worker(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parents[1])))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "first result"
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (-signal.SIGINT, 130, 1), err
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []


def test_a_replacement_still_starting_when_the_run_ends_is_ended_not_awaited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers retire after two jobs; their replacements take a minute to start. The run
    ends first: closing ends the replacements at once, and the snapshot taken after the
    run counts them as never started instead of failing on their cut-short start-up."""
    monkeypatch.setenv("SPINDLE_TEST_MARKS", str(tmp_path))
    stage = spindle.cpu(
        jobs.square, workers=2, batch_size=1, max_jobs_per_worker=2, init=jobs.slow_after_two_inits
    )
    pipeline = spindle.Pipeline([stage])
    t0 = time.monotonic()
    assert list(pipeline.run(range(4))) == [0, 1, 4, 9]
    assert time.monotonic() - t0 < 30  # the replacements' minute-long start was not awaited
    snapshot = pipeline.snapshot()
    assert snapshot["stages"][0]["done"] == 4
    assert psutil.Process().children() == []
