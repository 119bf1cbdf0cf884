"""Fixtures of the fetch tests: servers and Fetchers, closed and leak-checked on teardown."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest_asyncio

from spindle.jobs.fetch import Fetcher, FetchOptions

from ._http import TEST_OPTIONS, Handler, Meter, Server, open_sockets


@pytest_asyncio.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fail a test that leaves a socket open or a task running behind it."""
    check_sockets = sys.platform == "linux"
    before = open_sockets() if check_sockets else set()
    yield
    me = asyncio.current_task()
    # Closed transports release their sockets from callbacks already scheduled:
    # let those run (a bounded number of loop turns, no waiting on the clock).
    for _ in range(20):
        leaked = (open_sockets() - before) if check_sockets else set()
        tasks = {t for t in asyncio.all_tasks() if t is not me and not t.done()}
        if not leaked and not tasks:
            break
        await asyncio.sleep(0)
    assert not tasks, f"tasks left running: {tasks}"
    assert not leaked, f"sockets left open: {sorted(leaked)}"


@pytest_asyncio.fixture
async def serve(no_leaks: None) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    """``await serve({path: handler}, meters=())`` starts a server (a host)."""
    servers: list[Server] = []

    async def start(routes: dict[str, Handler], meters: Sequence[Meter] = ()) -> Server:
        server = Server(routes, meters)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture
async def open_fetcher(no_leaks: None) -> AsyncIterator[Callable[..., Awaitable[Fetcher]]]:
    """``await open_fetcher(**changes)`` opens a Fetcher with TEST_OPTIONS changed."""
    fetchers: list[Fetcher] = []

    async def start(**changes: Any) -> Fetcher:
        options = FetchOptions(**{**_as_dict(TEST_OPTIONS), **changes})
        fetcher = Fetcher(options)
        await fetcher.__aenter__()
        fetchers.append(fetcher)
        return fetcher

    yield start
    for fetcher in fetchers:
        await fetcher.aclose()


def _as_dict(options: FetchOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


class RawServer:
    """A bare TCP server for failures aiohttp's server will not produce on demand."""

    def __init__(
        self, on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.on_connect = on_connect
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.on_connect(reader, writer)
        finally:
            writer.transport.abort()
            self._handlers.discard(task)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@pytest_asyncio.fixture
async def raw_serve(no_leaks: None) -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    """``await raw_serve(on_connect)`` starts a bare TCP server calling ``on_connect``."""
    servers: list[RawServer] = []

    async def start(
        on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> RawServer:
        server = RawServer(on_connect)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.close()
