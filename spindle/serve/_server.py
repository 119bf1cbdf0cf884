"""A served pipeline: its run, its HTTP server, and how both start and stop.

::

    Server.start() / serve_forever()
      1. the run starts, workers forked      (no other thread yet: JobRunner.start)
      2. the journal's writer thread starts  (with --journal)
      3. the HTTP loop starts, listens; the jobs a crashed server accepted run again
      ... requests ...
      SIGTERM / Ctrl-C / stop():
      4. new work is refused (503); jobs in flight get ``grace`` seconds
      5. the run ends; jobs left unanswered get 503 (with a journal they stay accepted)
      6. the HTTP server closes its connections; the journal commits and closes

A second Ctrl-C cuts the grace short. ``serve_forever`` runs the loop in the calling
(main) thread and handles the signals; :meth:`Server.start` runs it in a thread of its
own and returns once the server listens (for programs and tests), :meth:`Server.stop`
stops it the same way and joins that thread.

One process answers HTTP for every worker (a front process): measured on this 2-core
machine, aiohttp alone answered 33,000 no-op requests/s, far above what a request's
round trip to the workers allows, and one front keeps the job table, the idempotency
keys, the bound and the journal in one place, with no hand-off between processes
(``docs/architecture.md``, "Serving").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .._core.pipeline import Pipeline
from .._core.stage import Stage, make_stage
from .._errors import ConfigError
from ..executors._eventloop import new_event_loop
from ..observe._errors import BindError
from ..observe._server import _url_host, require_token
from ._http import make_app
from ._service import KEEP, Service

__all__ = ["Server", "serve"]

#: Most jobs accepted and not finished, by default.
MAX_QUEUE = 10_000
#: Largest request body, by default (bytes).
MAX_BODY = 16 * 1024 * 1024


def as_pipeline(target: Pipeline | Stage | Callable[..., Any]) -> Pipeline:
    """What a server runs: a pipeline as it is, a stage alone, or a function on a cpu
    stage (an ``async def`` runs on each worker's event loop)."""
    if isinstance(target, Pipeline):
        return target
    if isinstance(target, Stage):
        return Pipeline([target])
    if callable(target):
        return Pipeline([make_stage(target, "cpu")])
    raise ConfigError(
        f"spindle serves a function, a stage or a Pipeline, not {type(target).__name__}"
    )


class Server:
    """Serve ``target`` (a function, a stage or a :class:`spindle.Pipeline`) over HTTP.

    >>> server = Server(spindle.cpu(score), port=0).start()   # doctest: +SKIP
    >>> requests.post(server.url + "/run", json={"x": 1}).json()   # doctest: +SKIP
    >>> server.stop()   # doctest: +SKIP

    ``host``: binding beyond loopback requires ``token``, which every request must then
    carry (``Authorization: Bearer ...``). ``max_queue``: jobs accepted and not finished,
    at most (then 429). ``max_body``: largest request body in bytes (then 413).
    ``grace``: seconds jobs in flight get when stopping. ``journal``: a file that makes
    accepted ``/jobs`` durable before their 202 and answers them across restarts.
    ``dashboard_port``, ``metrics_port``: the live dashboard and a Prometheus endpoint
    on ports of their own (``/metrics`` is on the main port as well).
    """

    def __init__(
        self,
        target: Pipeline | Stage | Callable[..., Any],
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        max_queue: int = MAX_QUEUE,
        max_body: int = MAX_BODY,
        grace: float = 5.0,
        journal: str | os.PathLike[str] | None = None,
        dashboard_port: int | None = None,
        metrics_port: int | None = None,
        keep: int = KEEP,
    ) -> None:
        require_token(host, token, "server")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be at least 1, not {max_queue}")
        if max_body < 1:
            raise ConfigError(f"max_body must be at least 1 byte, not {max_body}")
        if grace < 0:
            raise ConfigError(f"grace must not be negative, not {grace}")
        self.host = host
        self.port = port
        self.token = token
        self.max_body = max_body
        self.grace = grace
        self.dashboard_port = dashboard_port
        self.metrics_port = metrics_port
        self.service = Service(
            as_pipeline(target),
            max_queue=max_queue,
            journal=os.fspath(journal) if journal is not None else None,
            keep=keep,
        )
        #: The server's base URL once it listens; the dashboard's, if any.
        self.url = ""
        self.dashboard_url: str | None = None
        self.metrics_url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._started = False
        self._stopped = False

    def __repr__(self) -> str:
        s = self.service
        return f"<spindle.Server {self.url or 'not started'}: {s.active} active, {s.done} done>"

    # -- what a run shows -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The run's snapshot with the server's own figures as its ``serve`` section."""
        snap: dict[str, Any] = dict(self.service.runner.snapshot())
        snap["serve"] = self.service.stats()
        return snap

    # -- running --------------------------------------------------------------------

    def start(self) -> Server:
        """Start serving in a thread of this server's own; return once it listens.

        Raises what kept it from listening (:class:`~spindle.observe.BindError`...)."""
        self._begin()
        self._thread = threading.Thread(target=self._thread_main, name="spindle-serve")
        self._thread.start()
        self._listening.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _thread_main(self) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as exc:
            self._error = exc
        finally:
            self._listening.set()
            _close_loop(loop)

    def stop(self) -> None:
        """Stop as a SIGTERM would (new work refused, jobs in flight given the grace)
        and wait until everything is closed. Idempotent."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self, ready: Callable[[Server], None] | None = None) -> int:
        """Serve in this (the main) thread until SIGTERM or Ctrl-C; a second signal
        cuts the grace short. Returns the exit status: 0 after a clean stop, 1 when
        the run failed. ``ready`` is called once the server listens."""
        self._begin()
        loop = new_event_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if self._stop is not None:
                self._stop.set()
            if signals > 1:
                self.service.runner.hurry()

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
            loop.run_until_complete(self._main(loop, ready))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            _close_loop(loop)
        return 1 if self.service.runner.error is not None else 0

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("a Server is started once")
        self._started = True
        self.service.start()  # forks the workers before any thread of ours starts

    async def _main(
        self, loop: asyncio.AbstractEventLoop, ready: Callable[[Server], None] | None = None
    ) -> None:
        service = self.service
        self._loop = loop
        self._stop = stop = asyncio.Event()
        runner: web.AppRunner | None = None
        try:
            service.attach(loop)

            def ended() -> None:
                loop.call_soon_threadsafe(stop.set)

            service.runner.on_end = ended
            app = make_app(service, self.snapshot, max_body=self.max_body, token=self.token)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port, backlog=4096)
            try:
                await site.start()
            except OSError as exc:
                raise BindError(
                    f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                    "choose another port (0 picks a free one) or another address"
                ) from exc
            port = runner.addresses[0][1] if runner.addresses else self.port
            self.url = f"http://{_url_host(self.host)}:{port}"
            async with contextlib.AsyncExitStack() as extras:
                await self._observers(extras)
                self._listening.set()
                if ready is not None:
                    ready(self)
                await stop.wait()
                # Stop: refuse new work, give jobs in flight their grace, end the run.
                service.begin_stop()
                left = await asyncio.to_thread(service.runner.stop, self.grace)
                service.finish_stop(left)
                await asyncio.sleep(0)  # let the woken requests write their answers
        finally:
            if runner is not None:
                await runner.cleanup()
            if not service.runner.ended:
                await asyncio.to_thread(service.runner.stop, 0)
            service.close()
            self._stopped = True

    async def _observers(self, stack: contextlib.AsyncExitStack) -> None:
        if self.dashboard_port is not None:
            from ..observe.dashboard import serve_dashboard

            self.dashboard_url = await stack.enter_async_context(
                serve_dashboard(self.snapshot, self.host, self.dashboard_port, self.token)
            )
        if self.metrics_port is not None:
            from ..observe.prometheus import serve_metrics

            self.metrics_url = await stack.enter_async_context(
                serve_metrics(self.snapshot, self.host, self.metrics_port, token=self.token)
            )


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def serve(
    target: Pipeline | Stage | Callable[..., Any], **options: Any
) -> int:  # pragma: no cover - a thin wrapper, exercised through the command line
    """Serve ``target`` until SIGTERM or Ctrl-C (see :class:`Server` for the options);
    returns the exit status."""
    return Server(target, **options).serve_forever()
