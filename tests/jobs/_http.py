"""Local HTTP test servers: each binds 127.0.0.1 on an ephemeral port, so two are two hosts.

Each server records when each request arrived and how many were in flight at
once, so politeness is asserted where it matters: at the server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from spindle.jobs.fetch import FetchOptions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Fast retries and short timeouts, so failure paths take milliseconds.
TEST_OPTIONS = FetchOptions(
    robots=False,
    backoff=(0.01, 0.05),
    connect_timeout=2.0,
    read_timeout=2.0,
    total_timeout=10.0,
)


@dataclass
class Meter:
    """Requests in flight, across every server that shares it."""

    in_flight: int = 0
    max_in_flight: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.changed.set()

    def leave(self) -> None:
        self.in_flight -= 1

    async def reached(self, count: int, within: float = 5.0) -> None:
        """Wait until ``count`` requests have been in flight together (or time out)."""

        async def wait() -> None:
            while self.max_in_flight < count:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            pass  # the test's assertion on max_in_flight reports it


class Server:
    """An aiohttp server on 127.0.0.1 that records every request it receives."""

    def __init__(self, routes: dict[str, Handler], meters: Sequence[Meter] = ()) -> None:
        self.routes = routes
        self.meter = Meter()
        #: More meters to count this server's requests in (shared with other servers).
        self.meters = [self.meter, *meters]
        self.hits: list[tuple[float, str]] = []
        #: Set on teardown so that slow handlers end at once.
        self.released = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def times(self, path: str | None = None) -> list[float]:
        return [at for at, p in self.hits if path is None or p == path]

    def count(self, path: str | None = None) -> int:
        return len(self.times(path))

    async def pause(self, seconds: float) -> None:
        """Be slow for ``seconds``, unless the server is being closed."""
        try:
            await asyncio.wait_for(self.released.wait(), seconds)
        except TimeoutError:
            pass

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits.append((asyncio.get_running_loop().time(), request.path))
        for meter in self.meters:
            meter.enter()
        try:
            return await handler(request)
        finally:
            for meter in self.meters:
                meter.leave()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._track])
        for path, handler in self.routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self.released.set()
        if self._runner is not None:
            await self._runner.cleanup()


def text(body: str, **headers: str) -> Handler:
    """A handler answering 200 with ``body``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, headers=headers)

    return handler


def script(*steps: Handler) -> Handler:
    """A handler that answers the n-th request with the n-th step (the last one repeats)."""
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        step = steps[min(calls, len(steps) - 1)]
        calls += 1
        return await step(request)

    return handler


def status(code: int, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=f"status {code}", headers=headers)

    return handler


def redirect(location: str, code: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return handler


def held(meter: Meter, together: int) -> Handler:
    """A handler holding each request until ``together`` were in flight at once on ``meter``.

    Holding until then, rather than sleeping for some time, makes sure the limit is
    actually reached; if it never is, the handler gives up after a while and the
    test's assertion on ``max_in_flight`` fails.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        await meter.reached(together)
        return web.Response(text="done")

    return handler


def open_sockets() -> set[str]:
    """Sockets this process holds, by inode (Linux only)."""
    fds = "/proc/self/fd"
    found = set()
    for name in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, name))
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found
