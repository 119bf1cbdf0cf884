"""What the command line shows of a run: a live display, servers, the final report and
the summary line."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from .._core.pipeline import Service
from ..observe.display import LiveDisplay
from ..observe.report import render_text, to_json


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


@dataclass(frozen=True, kw_only=True)
class Observers:
    """What the command line shows of a run, and where: the live display, a metrics
    endpoint and a dashboard while it runs; the final report and its JSON after."""

    quiet: bool
    stats_json: str | None = None
    metrics_port: int | None = None
    dashboard_port: int | None = None
    host: str = "127.0.0.1"
    token: str | None = None

    def services(self) -> list[Service]:
        """The async context managers to run beside the pipeline, on its loop."""
        out: list[Service] = [lambda snap: LiveDisplay(snap, quiet=self.quiet)]
        # The servers load aiohttp: imported only when asked for, so that a run
        # without them starts a few hundred milliseconds sooner.
        if self.metrics_port is not None:
            from ..observe.prometheus import serve_metrics

            port = self.metrics_port
            out.append(
                lambda snap: _announce(
                    "metrics", serve_metrics(snap, self.host, port, token=self.token)
                )
            )
        if self.dashboard_port is not None:
            from ..observe.dashboard import serve_dashboard

            dport = self.dashboard_port
            out.append(
                lambda snap: _announce(
                    "dashboard", serve_dashboard(snap, self.host, dport, self.token)
                )
            )
        return out

    def finish(self, snapshot: Mapping[str, Any]) -> None:
        """The final report on stderr (unless quiet), and its JSON if asked for."""
        if not self.quiet:
            print(render_text(snapshot), file=sys.stderr)
        if self.stats_json:
            try:
                with open(self.stats_json, "wb") as f:
                    f.write(orjson.dumps(to_json(snapshot), option=orjson.OPT_INDENT_2))
            except OSError as exc:
                print(
                    f"spindle: cannot write {self.stats_json!r}: {exc.strerror or exc}",
                    file=sys.stderr,
                )


@contextlib.asynccontextmanager
async def _announce(what: str, server: AbstractAsyncContextManager[str]) -> AsyncIterator[str]:
    async with server as url:
        print(f"spindle: {what} at {url}", file=sys.stderr, flush=True)
        yield url
