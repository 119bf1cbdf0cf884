"""The live progress display: a rich table on a terminal, a log line elsewhere.

The engine's ``snapshot()`` is meant to be called on the event loop thread, so the
display never reads it from a thread of its own. It is driven by :meth:`LiveDisplay.tick`,
either by the caller or, inside ``async with``, by a task it owns and awaits on exit::

    async with LiveDisplay(snapshot):        # a task: tick() every `refresh` seconds
        await pipeline.run()                 # on exit: cancel and await the task, tick once more

    with LiveDisplay(snapshot) as display:   # no task: the caller ticks
        ...; display.tick()

On a terminal each tick redraws one line per stage (done, failed, in flight, queued,
items/s now and overall, p50/p95/p99, and a bar with an ETA when the input size is
known), then a line for each cache of the run's stages and one for a stream run's
source and sink. When stderr is not a terminal (a log file, CI) it prints one compact
line every ``log_every`` seconds of the run instead. rich's own refresh thread is not
used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._errors import ConfigError
from . import _format as fmt
from ._sections import cache_summary, stream_summary
from ._snapshot import Snapshot, SnapshotFn, normalize
from .rates import RateWindow

__all__ = ["LiveDisplay"]

_STATUS_STYLE = {"running": "green", "stopping": "yellow", "done": "bold green", "failed": "red"}


class LiveDisplay:
    """Progress of a run on ``console`` (stderr by default), read from ``snapshot()``.

    ``quiet=True`` shows nothing. ``refresh`` is the redraw period of ``async with``;
    ``log_every`` the period (seconds of the run) of the log line when the console is
    not a terminal; ``window`` the span of the recent rate.
    """

    def __init__(
        self,
        snapshot: SnapshotFn,
        *,
        console: Console | None = None,
        quiet: bool = False,
        refresh: float = 0.5,
        log_every: float = 5.0,
        window: float = 10.0,
    ) -> None:
        if not refresh > 0:
            raise ConfigError(f"refresh must be a positive number of seconds, not {refresh!r}")
        if not log_every > 0:
            raise ConfigError(f"log_every must be a positive number of seconds, not {log_every!r}")
        self._snapshot = snapshot
        self.console = console if console is not None else Console(stderr=True)
        self.quiet = quiet
        self.refresh = refresh
        self.log_every = log_every
        self._window = window
        self._rates: dict[str, RateWindow] = {}
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._last_log: float | None = None
        self._logged_final = False
        self._last: Snapshot | None = None

    @property
    def mode(self) -> str:
        """``"quiet"``, ``"live"`` (a terminal) or ``"log"`` (anything else)."""
        if self.quiet:
            return "quiet"
        return "live" if self.console.is_terminal else "log"

    @property
    def last(self) -> Snapshot | None:
        """The last snapshot shown (normalised), e.g. for the final report."""
        return self._last

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Begin showing progress (takes the terminal's bottom lines in live mode)."""
        if self._started:
            return
        self._started = True
        if self.mode == "live":
            self._live = Live(
                console=self.console,
                auto_refresh=False,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def stop(self) -> None:
        """Give the terminal back; the last drawing stays on screen."""
        if not self._started:
            return
        self._started = False
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def __enter__(self) -> LiveDisplay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._started:
                self.tick()
        finally:
            self.stop()

    async def __aenter__(self) -> LiveDisplay:
        self.start()
        if self.mode != "quiet":
            try:
                self.tick()
            except BaseException:
                self.stop()
                raise
            self._task = asyncio.get_running_loop().create_task(
                self._ticker(), name="spindle-live-display"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.__exit__(exc_type, exc, tb)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            self.tick()

    # -- drawing -------------------------------------------------------------------------

    def tick(self) -> None:
        """Read a snapshot and show it (call it on the thread that owns ``snapshot``)."""
        if self.quiet:
            return
        snap = self._observe(self._snapshot())
        if self._live is not None:
            self._live.update(self.renderable(snap), refresh=True)
        elif self.mode == "log":
            final = snap["status"] in ("done", "failed")
            if (
                self._last_log is None
                or snap["elapsed"] - self._last_log >= self.log_every
                or (final and not self._logged_final)
            ):
                self._last_log = snap["elapsed"]
                self._logged_final = final
                self.console.print(
                    self.log_line(snap), markup=False, highlight=False, soft_wrap=True
                )

    def _observe(self, raw: Mapping[str, Any]) -> Snapshot:
        snap = normalize(raw)
        for stage in snap["stages"]:
            rates = self._rates.get(stage["name"])
            if rates is None:
                rates = self._rates[stage["name"]] = RateWindow(self._window)
            rates.update(snap["elapsed"], stage["done"] + stage["failed"])
        self._last = snap
        return snap

    def _rate(self, name: str) -> RateWindow:
        return self._rates.get(name) or RateWindow(self._window)

    def renderable(self, snap: Snapshot) -> RenderableType:
        """The table for one snapshot (rates come from the snapshots seen so far)."""
        status = snap["status"]
        total = snap["total"]
        head = Text.assemble(
            ("spindle ", "bold"),
            (status, _STATUS_STYLE.get(status, "")),
            f"  {fmt.duration(snap['elapsed'])}",
        )
        if snap["stages"]:
            last = snap["stages"][-1]
            processed = last["done"] + last["failed"]
            head.append(
                f"  {fmt.count(processed)}" + (f" / {fmt.count(total)}" if total else "") + " items"
            )
        table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold dim")
        table.add_column("stage", no_wrap=True)
        if total:
            table.add_column("progress", no_wrap=True, width=22)
            table.add_column("eta", justify="right", no_wrap=True)
        for col in ("done", "failed", "in flight", "queued", "/s now", "/s avg"):
            table.add_column(col, justify="right", no_wrap=True)
        for col in ("p50", "p95", "p99"):
            table.add_column(col, justify="right", no_wrap=True)
        for stage in snap["stages"]:
            rates = self._rate(stage["name"])
            lat = stage["latency"]
            name = Text(stage["name"], style="bold")
            if stage["kind"]:
                name.append(f" {stage['kind']}", style="dim")
            cells: list[RenderableType] = [name]
            if total:
                processed = stage["done"] + stage["failed"]
                cells.append(ProgressBar(total=float(total), completed=float(processed), width=22))
                eta = None if status in ("done", "failed") else rates.eta(total)
                cells.append(fmt.duration(eta) if eta is not None else "-")
            cells += [
                fmt.count(stage["done"]),
                Text(fmt.count(stage["failed"]), style="red" if stage["failed"] else ""),
                fmt.count(stage["in_flight"]),
                fmt.count(stage["queued"]),
                fmt.rate(rates.recent),
                fmt.rate(rates.overall),
                fmt.latency(lat["p50"]),
                fmt.latency(lat["p95"]),
                fmt.latency(lat["p99"]),
            ]
            table.add_row(*cells)
        return Group(head, table, *(Text(line, style="dim") for line in _section_lines(snap)))

    def log_line(self, snap: Snapshot) -> str:
        """One compact line for logs: every stage's counters, rate and p95, then the
        caches and a stream's source and sink."""
        parts = [f"spindle {snap['status']} {fmt.duration(snap['elapsed'])}"]
        total = snap["total"]
        for stage in snap["stages"]:
            rates = self._rate(stage["name"])
            processed = stage["done"] + stage["failed"]
            of = f"/{fmt.count(total)}" if total else ""
            parts.append(
                f"{stage['name']}: {fmt.count(stage['done'])}{of} done, "
                f"{fmt.count(stage['failed'])} failed, {fmt.count(stage['in_flight'])} in flight, "
                f"{fmt.count(stage['queued'])} queued, {fmt.rate(rates.recent)}/s, "
                f"p95 {fmt.latency(stage['latency']['p95'])}"
                + (f", {100.0 * processed / total:.0f}%" if total else "")
            )
        parts += _section_lines(snap)
        return " | ".join(parts)

    def __repr__(self) -> str:
        return f"LiveDisplay(mode={self.mode!r}, started={self._started})"


def _section_lines(snap: Snapshot) -> list[str]:
    """A line for each cache, and one for a stream's source and sink."""
    lines = [cache_summary(c) for c in snap.get("caches", [])]
    connectors = snap.get("connectors")
    if connectors:
        lines.append(stream_summary(connectors))
    return lines
