"""plot_timeline: a PNG of throughput and latency, and a clear error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from spindle import SpindleError
from spindle.observe import MissingExtra, Timeline, plot_timeline

from .conftest import FakeRun

pytestmark = pytest.mark.timeout(60)


def test_plot_writes_a_picture_of_the_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the plot extra")
    run = FakeRun(step_items=300, wave=True)
    timeline = Timeline()
    for _ in range(30):
        timeline.add(run.snapshot())
    png = tmp_path / "run.png"
    plot_timeline(timeline, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "run.svg"
    plot_timeline(timeline.points(), svg, title="from points")
    assert "from points" in svg.read_text()
    empty = tmp_path / "empty.png"
    plot_timeline([], empty)
    assert empty.stat().st_size > 0


def test_without_matplotlib_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    with pytest.raises(MissingExtra, match=r"spindle\[plot\]") as caught:
        plot_timeline(Timeline(), tmp_path / "never.png")
    assert isinstance(caught.value, SpindleError)
    assert isinstance(caught.value, ImportError)
    assert not (tmp_path / "never.png").exists()
