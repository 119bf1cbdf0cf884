"""The dashboard in a real browser: headless Chromium driven by Playwright.

Needs Debian's ``chromium`` package (``apt-get install chromium``) and Playwright for
Python (``pip install playwright``); Playwright's own browser download is never used.
Skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

import pytest
from _support import CHROMIUM_ARGS, chromium

from spindle.observe import Timeline, serve_dashboard

from .conftest import FakeRun

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM = chromium() or "/usr/bin/chromium"
# Screenshots go to a temporary folder, or to SPINDLE_SCREENSHOTS (for example
# docs/images, to refresh the pictures in the README).
DOCS_IMAGES = Path(
    os.environ.get("SPINDLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="spindle-screens-")
)
DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
WAIT_MS = 20_000

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(
        "Playwright for Python is not installed (pip install playwright)", allow_module_level=True
    )
if not os.access(CHROMIUM, os.X_OK):  # pragma: no cover - depends on the environment
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SPINDLE_CHROMIUM)",
        allow_module_level=True,
    )

DONE_CELL = '#stages tr[data-stage="parse"] td[data-field="done"]'


def test_dashboard_shows_rising_counters_a_failure_and_charts() -> None:
    # Sixty seconds of history before the page opens, so the charts have a shape; the
    # page's own polls move the run on, and a failure appears after a few of them.
    run = FakeRun(total=100_000, step_items=400, wave=True, fail_after=63, caches=True, stream=True)
    timeline = Timeline()
    for _ in range(60):
        timeline.add(run.snapshot())

    async def scenario() -> dict[str, int]:
        seen: dict[str, int] = {}
        async with (
            serve_dashboard(
                run.snapshot, token="browser-token", timeline=timeline, interval=3600
            ) as url,
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(url)
                done = page.locator(DONE_CELL)
                await expect(done).to_have_text(re.compile(r"^[\d,]+$"), timeout=WAIT_MS)
                first = int((await done.inner_text()).replace(",", ""))
                await page.wait_for_function(
                    """([selector, before]) => {
                        const cell = document.querySelector(selector);
                        return cell && parseInt(cell.textContent.replace(/,/g, ""), 10) > before;
                    }""",
                    arg=[DONE_CELL, first],
                    timeout=WAIT_MS,
                )
                second = int((await done.inner_text()).replace(",", ""))
                seen["first"], seen["second"] = first, second

                failure = page.locator("#failures details.failure")
                await expect(failure).to_have_count(1, timeout=WAIT_MS)
                await expect(failure).to_contain_text("ConnectionResetError")
                await expect(failure).to_contain_text("peer reset the connection")
                traceback = failure.locator("pre.traceback")
                await expect(traceback).to_be_hidden()
                await failure.locator("summary").click()
                await expect(traceback).to_be_visible()
                await expect(traceback).to_contain_text("body = await response.read()")
                # The expanded failure stays open across the next refreshes.
                updated = int(float(await page.evaluate("document.body.dataset.updated")))
                await page.wait_for_function(
                    "(t) => Number(document.body.dataset.updated) > t", arg=updated, timeout=WAIT_MS
                )
                await expect(traceback).to_be_visible()

                await expect(page.locator("#status")).to_have_text("running")
                await expect(page.locator("#hosts-section")).to_be_visible()
                await expect(page.locator('#hosts tr[data-host="example.test"]')).to_be_visible()
                await expect(page.locator("#caches-section")).to_be_visible()
                ring = page.locator('#caches tr[data-cache="/dev/shm/spindle-cache-ring"]')
                await expect(ring).to_contain_text("2/3 up")
                await expect(ring).to_contain_text("950 B")
                await expect(
                    page.locator('#caches tr[data-cache="/dev/shm/spindle-cache-a"]')
                ).to_contain_text("16 MB")
                await expect(page.locator("#connectors-section")).to_be_visible()
                source = page.locator('#sources tr[data-source="redis://127.0.0.1:6379/0 events"]')
                await expect(source).to_contain_text("claimed 3")
                await expect(
                    page.locator('#sinks tr[data-sink="postgres://db/results"]')
                ).to_contain_text("duplicates 1")
                await expect(
                    page.locator('#workers .workers-stage[data-stage="parse"] .worker')
                ).to_have_count(4)
                await expect(page.locator('#workers .worker[data-state="starting"]')).to_have_count(
                    1
                )
                for chart in ("chart-rate", "chart-latency", "chart-load"):
                    await expect(page.locator(f"#{chart} canvas")).to_have_count(1)
                await expect(page.locator("#chart-latency")).to_contain_text("parse p99")
                assert errors == []

                await page.screenshot(path=str(DOCS_IMAGES / "dashboard.png"), full_page=True)
            finally:
                await browser.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["second"] > seen["first"] >= 60 * 400 * 0.5
    assert (DOCS_IMAGES / "dashboard.png").stat().st_size > 10_000


def test_sections_a_run_does_not_have_stay_hidden() -> None:
    run = FakeRun(hosts=False)

    async def scenario() -> None:
        async with (
            serve_dashboard(run.snapshot, interval=3600) as url,
            async_playwright() as pw,
        ):
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = await browser.new_page()
                await page.goto(url)
                await expect(page.locator(DONE_CELL)).to_have_text(
                    re.compile(r"^[\d,]+$"), timeout=WAIT_MS
                )
                for section in ("#hosts-section", "#caches-section", "#connectors-section"):
                    await expect(page.locator(section)).to_be_hidden()
            finally:
                await browser.close()

    asyncio.run(scenario())
