"""What the command line shows: a live progress display and a final summary line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)


def _count(n: float) -> str:
    return f"{n:,.0f}"


@dataclass
class Summary:
    """Totals of a run, and the one line printed at its end."""

    started: float
    done: int = 0
    failed: int = 0
    not_started: int = 0

    def line(self, *, interrupted: bool = False) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        head = "spindle: interrupted after" if interrupted else "spindle:"
        tail = f", {_count(self.not_started)} read but not started" if self.not_started else ""
        return (
            f"{head} {_count(self.done)} items, {_count(self.failed)} failed, "
            f"{elapsed:.2f} s, {_count(rate)} items/s{tail}"
        )


class Progress:
    """A rich progress display on stderr, only when stderr is a terminal.

    It reads the stage counters itself on rich's refresh thread (the stats are plain
    integers, so reading them from another thread is safe), so the loop that writes
    records pays nothing per item.
    """

    def __init__(
        self,
        stats: Callable[[], list[Any]],
        *,
        total: int | None,
        enabled: bool = True,
        console: Console | None = None,
    ) -> None:
        self._stats = stats
        self._console = console or Console(stderr=True)
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self._progress: RichProgress | None = None
        self._task: TaskID | None = None
        self.total = total

    def __enter__(self) -> Progress:
        if self.enabled:
            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
                get_time=time.monotonic,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("spindle", total=self.total, detail="")
            self._refresh()
        return self

    def tick(self) -> None:
        """Update the display from the stage counters (cheap; call every few items)."""
        if self._progress is not None:
            self._refresh()

    def _refresh(self) -> None:
        if self._progress is None or self._task is None:
            return
        stages = self._stats()
        if not stages:
            return
        last = stages[-1]
        done = last.done + last.failed
        detail = " ".join(f"{s.name}: {s.in_flight} running, {s.failed} failed" for s in stages)
        self._progress.update(self._task, completed=done, detail=detail)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.__exit__(None, None, None)
            self._progress = None
