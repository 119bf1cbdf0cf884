"""Event loops: uvloop when it is installed, asyncio's own otherwise.

Both the pipeline (its loop thread, ``arun`` excepted) and an async worker process
make their loops here, so that the two always run on the same kind of loop.
"""

from __future__ import annotations

import asyncio
from types import ModuleType

_uvloop: ModuleType | None
try:  # uvloop is a default dependency on Linux and macOS, absent on Windows
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - depends on the platform
    _uvloop = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop of the fastest kind available."""
    if _uvloop is not None:
        loop: asyncio.AbstractEventLoop = _uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def loop_kind() -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop :func:`new_event_loop` makes."""
    return "uvloop" if _uvloop is not None else "asyncio"
