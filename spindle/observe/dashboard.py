"""A live dashboard in the browser, served from the running process.

::

    browser ──GET /──────────────────▶ static/index.html (+ static/dashboard.js, uPlot)
            ──GET /api/snapshot──────▶ snapshot() as JSON           ┐ once a second,
            ──GET /api/timeline?since▶ Timeline points after `since` ┘ from the page

    sampler task (owned here) ──every `interval` s──▶ Timeline.add(snapshot())

The server and the sampler run on the caller's event loop and are stopped and awaited
when the ``async with`` block exits. The timeline is sampled whether or not a page is
open, so a page opened late still draws the whole run; pass your own
:class:`~spindle.observe.Timeline` to keep it after the dashboard closes (e.g. for
:func:`~spindle.observe.plot_timeline`).

The page is one HTML file, one small script and the vendored uPlot chart library
(``static/README.md``), shipped with the package: nothing is fetched from the internet.
Like every spindle server it binds to 127.0.0.1 by default and needs a token to bind
anywhere else (see :mod:`spindle.observe._server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from .._errors import ConfigError
from ._server import require_token, run_app, token_middleware
from ._snapshot import SnapshotFn, normalize
from .rates import Timeline

__all__ = ["dashboard_app", "serve_dashboard"]

_ASSETS = {
    "dashboard.js": "text/javascript",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return (resources.files("spindle.observe") / "static" / name).read_bytes()


def _json(data: Any) -> web.Response:
    body = orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, content_type="application/json", headers=_PAGE_HEADERS)


def dashboard_app(
    snapshot: SnapshotFn, *, timeline: Timeline | None = None, token: str | None = None
) -> web.Application:
    """The aiohttp application of the dashboard (for embedding in a server of your own).

    It serves the page and the API; it does not sample the timeline by itself, except
    when the page asks for a snapshot.
    """
    tl = timeline if timeline is not None else Timeline()
    page = _asset("index.html")
    assets = {name: (_asset(name), kind) for name, kind in _ASSETS.items()}

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", headers=_PAGE_HEADERS)

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        return web.Response(body=body, content_type=kind, headers=_PAGE_HEADERS)

    async def api_snapshot(request: web.Request) -> web.Response:
        raw = snapshot()
        tl.add(raw)
        return _json(normalize(raw))

    async def api_timeline(request: web.Request) -> web.Response:
        since: float | None = None
        text = request.query.get("since")
        if text is not None:
            try:
                since = float(text)
            except ValueError:
                raise web.HTTPBadRequest(text="since must be a number of seconds") from None
            if not math.isfinite(since):
                raise web.HTTPBadRequest(text="since must be a finite number of seconds")
        return _json(tl.to_dict(since))

    app = web.Application(middlewares=[token_middleware(token)] if token else [])
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/snapshot", api_snapshot)
    app.router.add_get("/api/timeline", api_timeline)
    return app


async def _sample(snapshot: SnapshotFn, timeline: Timeline, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        timeline.add(snapshot())


@asynccontextmanager
async def serve_dashboard(
    snapshot: SnapshotFn,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    *,
    timeline: Timeline | None = None,
    interval: float = 1.0,
) -> AsyncIterator[str]:
    """Serve the dashboard while the block runs; yield its URL (with the token, if any).

    ``port=0`` picks a free port. Binding beyond loopback without ``token`` raises
    :class:`~spindle.observe.TokenRequired`; with a token, every request must carry it.
    """
    require_token(host, token, "dashboard")
    if not interval > 0:
        raise ConfigError(f"interval must be a positive number of seconds, not {interval!r}")
    tl = timeline if timeline is not None else Timeline(interval=interval)
    app = dashboard_app(snapshot, timeline=tl, token=token)
    async with run_app(app, host, port) as base:
        tl.add(snapshot())
        sampler = asyncio.get_running_loop().create_task(
            _sample(snapshot, tl, interval), name="spindle-dashboard-sampler"
        )
        try:
            yield f"{base}/?token={quote(token, safe='')}" if token else f"{base}/"
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
