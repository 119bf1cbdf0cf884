"""LiveDisplay rendered to in-memory consoles: a terminal, a log, and quiet."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from spindle import ConfigError
from spindle.observe import LiveDisplay

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(30)

# Screenshots go to a temporary folder, or to SPINDLE_SCREENSHOTS (for example
# docs/images, to refresh the pictures in the README).
DOCS_IMAGES = Path(
    os.environ.get("SPINDLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="spindle-screens-")
)
DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal(width: int = 160) -> tuple[Console, StringIO]:
    out = StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


def plain(out: StringIO) -> str:
    return ANSI.sub("", out.getvalue())


def test_terminal_shows_one_line_per_stage_with_rates_latencies_and_eta(
    fake_run: FakeRun,
) -> None:
    console, out = terminal()
    with LiveDisplay(fake_run.snapshot, console=console) as display:
        assert display.mode == "live"
        for _ in range(5):
            display.tick()
    text = plain(out)
    assert fake_run.calls == 6  # five ticks and the final one on exit
    last = text[text.rindex("spindle running") :]
    for header in ("stage", "done", "failed", "in flight", "queued", "/s now", "/s avg"):
        assert header in last
    for header in ("p50", "p95", "p99", "eta", "progress"):
        assert header in last
    fetch = next(line for line in last.splitlines() if line.lstrip().startswith("fetch"))
    parse = next(line for line in last.splitlines() if line.lstrip().startswith("parse"))
    assert "605" in fetch and "40" in fetch and "12" in fetch  # done, in flight, queued
    assert "600" in parse
    assert "100" in parse  # items/s, recent and overall
    assert " ms" in fetch and " ms" in parse  # latency percentiles
    assert "1:34" in parse  # ETA: 9,400 items left at 100 items/s
    assert "━" in parse  # the bar
    assert "600 / 10,000 items" in last
    assert display.last is not None and display.last["elapsed"] == 6.0


def test_terminal_without_a_known_total_has_no_bar(make_run: Callable[..., FakeRun]) -> None:
    run = make_run(total=None)
    console, out = terminal()
    with LiveDisplay(run.snapshot, console=console) as display:
        display.tick()
    text = plain(out)
    assert "eta" not in text
    assert "━" not in text
    assert "100 items" in text


def test_log_mode_prints_a_compact_line_every_n_seconds(fake_run: FakeRun) -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    with LiveDisplay(fake_run.snapshot, console=console, log_every=5) as display:
        assert display.mode == "log"
        for _ in range(11):  # elapsed 1..11
            display.tick()
        fake_run.status = "done"
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1.0", "6.0", "11.0", "12.0"]
    assert lines[0].startswith("spindle running 1.0 s | fetch: 105/10,000 done, 0 failed")
    assert "parse: 100/10,000 done" in lines[0]
    assert "p95" in lines[0] and "in flight" in lines[0] and "queued" in lines[0]
    assert lines[-1].startswith("spindle done 12.0 s")
    assert all("\x1b" not in line for line in lines)


def test_quiet_shows_nothing_and_reads_nothing(fake_run: FakeRun) -> None:
    console, out = terminal()
    with LiveDisplay(fake_run.snapshot, console=console, quiet=True) as display:
        display.tick()
        assert display.mode == "quiet"
    assert out.getvalue() == ""
    assert fake_run.calls == 0


def test_async_context_ticks_on_its_own_task_and_awaits_it(fake_run: FakeRun) -> None:
    console, out = terminal()

    async def scenario() -> None:
        display = LiveDisplay(fake_run.snapshot, console=console, refresh=3600)
        async with display:
            tasks = [t for t in asyncio.all_tasks() if t.get_name() == "spindle-live-display"]
            assert len(tasks) == 1
        assert tasks[0].done()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "spindle-live-display"]

    asyncio.run(scenario())
    assert fake_run.calls == 2  # once on entry, once on exit
    assert "parse" in plain(out)


def test_bad_settings_are_refused(fake_run: FakeRun) -> None:
    with pytest.raises(ConfigError):
        LiveDisplay(fake_run.snapshot, refresh=0)
    with pytest.raises(ConfigError):
        LiveDisplay(fake_run.snapshot, log_every=-1)


def test_terminal_picture_for_the_docs(make_run: Callable[..., FakeRun]) -> None:
    """Renders the display as SVG into docs/images/terminal.svg."""
    run = make_run(total=50_000, step_items=400, wave=True)
    console, _ = terminal(width=150)
    with LiveDisplay(run.snapshot, console=console) as display:
        for _ in range(12):
            display.tick()
    assert display.last is not None
    recorder = Console(record=True, width=150, file=StringIO(), force_terminal=True)
    recorder.print(display.renderable(display.last))
    target = DOCS_IMAGES / "terminal.svg"
    recorder.save_svg(str(target), title="spindle")
    svg = target.read_text()
    assert svg.startswith("<svg") and "fetch" in svg and "parse" in svg
