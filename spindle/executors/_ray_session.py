"""This process's connection to Ray: who made it, how many runs use it, when it ends.

The first run that needs Ray connects to ``ray_address``, or starts a local Ray when
there is none; a Ray that spindle started is shut down when the last run using it
ends, one it joined (or that the program started) is left running. Ray has one
connection per process, so :data:`SESSION` is one per process too.

Nothing here imports Ray until a run needs it: :func:`ray_installed` and
:func:`estimated_workers` answer without it, so a pipeline that only names
``backend="ray"`` can be built, sized and checked where Ray is not loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from importlib.util import find_spec
from types import ModuleType

from .._errors import ConfigError, SpindleError

#: What to install when Ray is missing.
INSTALL_HINT = "pip install 'spindle[ray]'"


def ray_installed() -> bool:
    """Whether Ray can be imported (without importing it)."""
    return find_spec("ray") is not None


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`~spindle.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"backend='ray' runs stages on a Ray cluster, but Ray is not installed: {INSTALL_HINT}"
        ) from exc
    return ray


class Session:
    """Who connected this process to Ray, and how many runs use it now.

    Ray has one connection per process, so this is per process too: the first run that
    needs Ray connects (``ray.init``) and the last one to end disconnects, if spindle
    was the one that connected. A Ray the program connected itself is left alone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._ours = False

    def acquire(self, address: str | None) -> None:
        """Connect unless connected; count one more run using Ray."""
        ray = import_ray()
        with self._lock:
            if not ray.is_initialized():
                _init(ray, address)
                self._ours = True
            self._users += 1

    def release(self) -> None:
        """One run less; the last one shuts down a Ray that spindle connected."""
        ray = import_ray()
        with self._lock:
            self._users -= 1
            if self._users > 0 or not self._ours:
                return
            self._ours = False
        ray.shutdown()

    async def release_in_thread(self) -> None:
        """:meth:`release` from the event loop: ``ray.shutdown`` blocks, so it runs on a
        thread of its own, joined."""
        await _in_thread(self.release)


#: The one session of this process.
SESSION = Session()


def estimated_workers() -> int:
    """How many actors a stage of ``workers`` 0 will have, without connecting: the
    CPUs of the cluster this process is connected to, else of this machine (those of
    the local Ray a run would start). A stage's bound is sized with it."""
    if "ray" in sys.modules and ray_installed():
        ray = import_ray()
        if ray.is_initialized():
            return cluster_cpus(ray)
    return local_cpus()


def local_cpus() -> int:
    """The CPUs this process may run on: those of the local Ray spindle starts."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cluster_cpus(ray: ModuleType) -> int:
    """The CPUs of the Ray cluster this process is connected to (at least one)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _init(ray: ModuleType, address: str | None) -> None:
    """``ray.init``, keeping this process's SIGINT and SIGTERM handlers (Ray installs
    its own for SIGTERM; spindle's command line stops runs on both)."""
    import logging

    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        if address is None:
            ray.init(num_cpus=local_cpus(), logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise SpindleError(
            f"could not start or reach {where}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


async def _in_thread(fn: Callable[[], None]) -> None:
    """Run a blocking call (``ray.shutdown``) on a thread of its own, joined."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def work() -> None:
        try:
            fn()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done)

    thread = threading.Thread(target=work, name="spindle-ray-release")
    thread.start()
    try:
        await asyncio.shield(done)
    finally:
        thread.join()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
