"""Worker reports: figures made by a stage's reporter in each worker, merged for snapshots."""

from __future__ import annotations

import time
from typing import Any

import pytest
import workfns as jobs

import spindle
from spindle.executors._reports import ReportBook, sum_reports
from spindle.executors.processes import ProcessExecutor

pytestmark = pytest.mark.timeout(60)

#: (kind, job, workers): each way a stage runs, and how many workers report.
KINDS = [
    ("cpu", jobs.count_job, 2),
    ("cpu", jobs.async_count_job, 2),
    ("thread", jobs.count_job, 3),
    ("io", jobs.async_count_job, 1),
]


def run(stage: spindle.Stage, items: Any) -> tuple[list[Any], dict[str, Any], Any]:
    pipeline = spindle.Pipeline([stage], on_error="yield")
    results = pipeline.run(items)
    out = list(results)
    return out, pipeline.snapshot(), results._ex.executors[0]


@pytest.mark.parametrize(("kind", "fn", "workers"), KINDS, ids=["cpu", "cpu-async", "thread", "io"])
def test_every_workers_last_report_is_in_the_snapshot_at_the_end(
    kind: str, fn: Any, workers: int
) -> None:
    options: dict[str, Any] = {"concurrency": 10} if kind == "io" else {"workers": workers}
    stage = spindle.cpu if kind == "cpu" else spindle.thread if kind == "thread" else spindle.io
    made = stage(fn, init=jobs.job_counter, reporter=jobs.report_jobs, **options)

    out, snap, _ = run(made, range(500))

    assert out == list(range(500))
    report = snap["stages"][0]["report"]
    assert report["jobs"] == 500  # each worker's count, added up (the default merge)
    assert len(report["by_worker"]) == workers  # idle ones too: each reports as it stops
    assert sum(report["by_worker"].values()) == 500
    assert "hosts" not in snap  # only a report with "hosts" rows fills that section


def test_a_retired_workers_figures_still_count() -> None:
    stage = spindle.cpu(
        jobs.count_job,
        workers=2,
        batch_size=10,
        max_jobs_per_worker=100,
        init=jobs.job_counter,
        reporter=jobs.report_jobs,
    )

    out, snap, _ = run(stage, range(500))

    assert len(out) == 500
    report = snap["stages"][0]["report"]
    assert report["jobs"] == 500
    assert len(report["by_worker"]) >= 5  # 100 jobs each at most: retired workers too
    assert snap["stages"][0]["restarts"] >= 3


def test_reports_come_at_most_about_once_a_second_per_worker() -> None:
    stage = spindle.cpu(
        jobs.count_job,
        workers=2,
        batch_size=1,
        init=jobs.job_counter,
        reporter=jobs.report_jobs,
    )
    started = time.monotonic()

    out, snap, executor = run(stage, range(3000))

    elapsed = time.monotonic() - started
    assert len(out) == 3000 and snap["stages"][0]["report"]["jobs"] == 3000
    # 3,000 batches: a report per batch would be 3,000 frames. Per worker: one a
    # second at most (the first after its first batch), and the last one at STOP.
    assert executor.reports.received <= 2 * (elapsed + 2)


def test_a_stage_without_a_reporter_sends_and_keeps_no_report(monkeypatch) -> None:
    frames: list[bytes] = []
    original = ProcessExecutor.on_report

    def counting(self: ProcessExecutor, worker: Any, payload: bytes) -> None:
        frames.append(payload)
        original(self, worker, payload)

    monkeypatch.setattr(ProcessExecutor, "on_report", counting)
    stage = spindle.cpu(jobs.count_job, workers=2, init=jobs.job_counter)

    out, snap, executor = run(stage, range(2000))

    assert len(out) == 2000
    assert frames == []  # no REPORT frame ever crossed the wire
    assert executor.reports is None and executor._config.reporter is None
    assert "report" not in snap["stages"][0] and "hosts" not in snap
    for other in (spindle.thread(jobs.square, workers=2), spindle.io(jobs.async_square)):
        _, snap, executor = run(other, range(10))
        assert executor.reports is None and "report" not in snap["stages"][0]


def test_a_failing_reporter_is_shown_once_and_the_run_goes_on(capfd) -> None:
    stage = spindle.cpu(
        jobs.count_job, workers=2, init=jobs.job_counter, reporter=jobs.broken_reporter
    )

    out, snap, _ = run(stage, range(200))

    assert out == list(range(200))
    assert "report" not in snap["stages"][0]
    err = capfd.readouterr().err
    assert 1 <= err.count("the reporter of stage 'count_job' failed") <= 2  # once per worker
    assert "RuntimeError: the reporter has a bug" in err


def test_a_failing_merge_is_raised_by_the_snapshot() -> None:
    def bad_merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
        raise ValueError("cannot merge")

    stage = spindle.thread(
        jobs.count_job, workers=2, init=jobs.job_counter, reporter=jobs.report_jobs,
        merge_reports=bad_merge,
    )  # fmt: skip
    pipeline = spindle.Pipeline([stage])
    assert list(pipeline.run(range(10))) == list(range(10))
    with pytest.raises(spindle.SpindleError, match="merge_reports function of stage 'count_job'"):
        pipeline.snapshot()


def test_merge_reports_needs_a_reporter() -> None:
    with pytest.raises(spindle.ConfigError, match="needs reporter="):
        spindle.cpu(jobs.count_job, merge_reports=sum_reports)
    with pytest.raises(spindle.ConfigError, match="reporter must be a function"):
        spindle.cpu(jobs.count_job, reporter=42)  # type: ignore[arg-type]


def test_the_book_merges_ended_workers_first_and_stays_bounded() -> None:
    seen: list[list[str]] = []

    def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
        seen.append([r.get("who", "merged") for r in reports])
        return {"who": "merged", "n": sum(r["n"] for r in reports)}

    book = ReportBook("s", merge)
    assert book.merged() is None  # nothing reported yet
    book.update("a", {"who": "a", "n": 1})
    book.update("b", {"who": "b", "n": 2})
    book.update("a", {"who": "a", "n": 3})  # a newer report replaces the older one
    book.end("a")
    assert book.merged() == {"who": "merged", "n": 5}
    assert seen[-1] == ["a", "b"]  # the ended worker first, then the live one
    for i in range(200):
        book.update(i, {"who": "x", "n": 1})
        book.end(i)
    assert len(book._ended) < 64  # folded into one as they pile up
    assert book.merged() == {"who": "merged", "n": 205}


def test_the_default_merge_adds_numbers_and_nested_dicts() -> None:
    merged = sum_reports(
        [
            {"n": 1, "x": 0.5, "tag": "a", "by": {"p": 1}, "ok": True},
            {"n": 2, "x": 0.25, "tag": "b", "by": {"p": 1, "q": 4}, "ok": False},
        ]
    )
    assert merged == {"n": 3, "x": 0.75, "tag": "b", "by": {"p": 2, "q": 4}, "ok": False}


def test_a_report_that_cannot_be_unpickled_is_a_warning_not_the_runs_end() -> None:
    import pickle

    book = ReportBook("parse", None)
    book.take("w1", pickle.dumps({"rows": 3}), "parent")
    unpickled = r"report of stage 'parse' could not be unpickled in the driver"
    with pytest.warns(RuntimeWarning, match=unpickled):
        book.take("w2", b"\x80\x05not a pickle", "driver")
    assert book.received == 1 and book.merged() == {"rows": 3}
