"""Observability of real runs: counters, latencies, reports, metrics and the dashboard."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import workfns as jobs
from _support import CHROMIUM_ARGS, chromium

import spindle
from spindle.observe import serve_dashboard, serve_metrics


def test_counters_and_latency_counts_match_a_run_with_failures_and_retries() -> None:
    results = spindle.map(
        jobs.fail_on_multiples_of_7,
        range(1, 101),
        kind="thread",
        workers=3,
        retries=2,
        backoff=0.001,
        on_error="yield",
    )
    got = list(results)
    snap = results.snapshot()
    [stage] = snap["stages"]
    failed = [g for g in got if isinstance(g, spindle.Failure)]
    assert len(failed) == 14 == stage["failed"]
    assert stage["done"] == 86
    assert stage["retried"] == 14 * 2
    # Every attempt was timed: 100 first attempts and 28 retries.
    assert stage["latency"]["count"] == 100 + 28
    assert snap["status"] == "done"
    assert [f["item"] for f in snap["failures"]].count("7") == 1
    assert all(f["error"] == "ValueError" for f in snap["failures"])


def test_latency_percentiles_reflect_known_job_durations() -> None:
    async def wait(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    items = [0.02] * 90 + [0.2] * 10
    results = spindle.map(wait, items, kind="io", concurrency=100)
    list(results)
    lat = results.snapshot()["stages"][0]["latency"]
    assert lat["count"] == 100
    # Each percentile is the duration asked for, within the histogram's stated
    # precision (1/256 of the value), less what the event loop's timers allow: uvloop
    # counts a timer from the loop's time cached at the start of the iteration, in
    # whole milliseconds, so on a busy machine a sleep can end a few ms early.
    low = 1 - 1 / 256
    early = 0.005
    assert 0.02 * low - early <= lat["p50"] < 0.2 * low - early
    assert lat["p99"] >= 0.2 * low - early


def test_stats_json_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("1\n2\nx\n4\n")
    job = Path(__file__).parents[2] / "examples" / "jobs.py"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spindle",
            "map",
            f"{job}:collatz",
            "in.txt",
            "-o",
            "o.jsonl",
            "--stats-json",
            "stats.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["done"] == 3 and stats["failed"] == 1
    assert stats["stages"][0]["latency"]["count"] == 4
    assert "ValueError" in out.stderr  # the final report groups the failure


def _gate_job(gate: threading.Event) -> Any:
    async def job(x: int) -> int:
        if x == 0:
            raise ValueError("item zero is bad")
        while not gate.is_set():  # noqa: ASYNC110 - a threading.Event set by the test
            await asyncio.sleep(0.01)
        return x

    return job


def _run_in_thread(results: spindle.Results, into: list[Any]) -> threading.Thread:
    def consume() -> None:
        into.extend(results)

    t = threading.Thread(target=consume)
    t.start()
    return t


async def _wait_for(predicate: Any, what: str) -> None:
    async with asyncio.timeout(30):
        while not predicate():  # noqa: ASYNC110 - state owned by other threads
            await asyncio.sleep(0.02)
    assert predicate(), what


def test_prometheus_endpoint_serves_a_live_run() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gate = threading.Event()
    urls: list[str] = []

    def metrics(snapshot: Any) -> Any:
        return _Recording(serve_metrics(snapshot, port=0), urls)

    pipeline = spindle.Pipeline([spindle.io(_gate_job(gate), concurrency=4)], on_error="yield")
    results = pipeline.run(range(20), services=[metrics])
    got: list[Any] = []
    consumer = _run_in_thread(results, got)
    try:
        asyncio.run(
            _wait_for(
                lambda: urls and results.snapshot()["stages"][0]["failed"],
                "the run started and failed item 0",
            )
        )
        text = urllib.request.urlopen(urls[0], timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        failed = [s for f in families.values() for s in f.samples if "failed" in s.name]
        assert any(s.value == 1 for s in failed), text
    finally:
        gate.set()
        consumer.join()
    assert len(got) == 20


class _Recording:
    """Wraps a server context manager and records the URL it yields."""

    def __init__(self, server: Any, urls: list[str]) -> None:
        self.server = server
        self.urls = urls

    async def __aenter__(self) -> str:
        url: str = await self.server.__aenter__()
        self.urls.append(url)
        return url

    async def __aexit__(self, *exc: Any) -> None:
        await self.server.__aexit__(*exc)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dashboard_shows_a_live_run_in_a_browser(tmp_path: Path) -> None:
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (Debian package 'chromium')")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

    release = threading.Event()
    urls: list[str] = []

    async def job(x: int) -> int:
        if x == 3:
            raise RuntimeError("item three broke")
        if x >= 2000:  # the rest waits, so the run is still live while the page is read
            while not release.is_set():  # noqa: ASYNC110 - set by the test thread
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        return x

    def dashboard(snapshot: Any) -> Any:
        return _Recording(serve_dashboard(snapshot, port=0), urls)

    pipeline = spindle.Pipeline([spindle.io(job, concurrency=2)], on_error="yield")
    results = pipeline.run(range(2100), services=[dashboard])
    got: list[Any] = []
    consumer = _run_in_thread(results, got)
    done_cell = '#stages tr[data-stage="job"] td[data-field="done"]'

    def shown_done(page: Any) -> int:
        return int(page.locator(done_cell).inner_text().replace(",", "").replace(" ", ""))

    try:
        asyncio.run(_wait_for(lambda: bool(urls), "the dashboard started"))
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(urls[0])
                page.locator("#failures").get_by_text("item three broke").first.wait_for(
                    timeout=30_000
                )
                page.locator(done_cell).wait_for(timeout=30_000)
                first = shown_done(page)
                # The page polls once a second: wait for it to show a larger count.
                page.wait_for_function(
                    f"""() => {{
                        const cell = document.querySelector('{done_cell}');
                        return cell && Number(cell.innerText.replace(/[^0-9]/g, '')) > {first};
                    }}""",
                    timeout=30_000,
                )
                second = shown_done(page)
                page.screenshot(path=str(tmp_path / "dashboard-run.png"), full_page=True)
            finally:
                browser.close()
    finally:
        release.set()
        consumer.join()
    assert len(got) == 2100
    assert second > first
    assert (tmp_path / "dashboard-run.png").stat().st_size > 10_000
