"""Charts of a finished run: throughput and latency over time, saved to a file.

Needs matplotlib (``pip install 'spindle[plot]'``). It draws on a bare
:class:`matplotlib.figure.Figure`, never through ``pyplot``, so it opens no window,
keeps no global figure state and is safe to call from any thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import MissingExtra
from .rates import Timeline, TimelinePoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_timeline"]

_PERCENTILES = (("p50", "-"), ("p95", "--"), ("p99", ":"))


def _figure() -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra("plotting a run needs matplotlib: pip install 'spindle[plot]'") from exc
    return Figure(figsize=(10, 7), layout="constrained")


def plot_timeline(
    timeline: Timeline | Sequence[TimelinePoint],
    path: str | os.PathLike[str],
    *,
    title: str = "spindle run",
) -> None:
    """Draw throughput (items/s) and latency percentiles per stage over the run.

    ``timeline`` is a :class:`~spindle.observe.Timeline` or its ``points()``; the file
    format follows the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``...).
    """
    points = timeline.points() if isinstance(timeline, Timeline) else list(timeline)
    fig = _figure()
    rate_ax, lat_ax = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title)
    names: dict[str, None] = {}
    for point in points:
        names.update(dict.fromkeys(point["stages"]))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        rows = [(p["t"], p["stages"][name]) for p in points if name in p["stages"]]
        times = [t for t, _ in rows]
        rate_ax.plot(times, [s["rate"] for _, s in rows], color=color, label=name)
        percentiles = {
            "p50": [s["p50"] * 1e3 for _, s in rows],
            "p95": [s["p95"] * 1e3 for _, s in rows],
            "p99": [s["p99"] * 1e3 for _, s in rows],
        }
        for key, style in _PERCENTILES:
            lat_ax.plot(
                times, percentiles[key], color=color, linestyle=style, label=f"{name} {key}"
            )
    rate_ax.set_ylabel("items/s")
    rate_ax.set_ylim(bottom=0)
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds since start")
    lat_ax.set_ylim(bottom=0)
    for ax in (rate_ax, lat_ax):
        ax.grid(True, alpha=0.3)
        if names:
            ax.legend(loc="upper left", fontsize="small", ncols=min(len(names), 4))
    if not points:
        rate_ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=rate_ax.transAxes)
    fig.savefig(os.fspath(path))
