"""A transport that answers from a script: the Fetcher's decisions, tested without a network.

Retries, backoff, Retry-After, the AIMD limits, spacing, robots.txt, redirects, the
breaker and the body cap depend only on which answers come back and when. So a
:class:`ScriptedTransport` gives each URL a list of steps, answers on a clock (a
:class:`~spindle.policies.clock.FakeClock` in tests), and records what it was asked::

    clock = FakeClock()
    transport = ScriptedTransport(clock)
    transport.script("http://a.test/", Reply(503, headers={"Retry-After": "2"}), Reply(200, b"ok"))
    transport.script("http://b.test/", ConnectFailed("cannot connect: connection refused"))
    async with Fetcher(options, transport=transport, clock=clock) as fetcher:
        await fetcher.fetch("http://a.test/")
    transport.times("http://a.test/")       # [0.0, 2.0]: the instants the requests started

The n-th request of a URL gets its n-th step, and the last step answers every request
after that. A step is a :class:`Reply`, a status code (a :class:`Reply` with no body),
an :class:`~._transport.HttpError` to raise, or a :class:`Fail` (one raised after a
delay). A URL that has no script answers 404, as a server without that route would, so
robots.txt is absent unless scripted.

Time: a step's ``delay`` passes on the clock before it answers; a request whose
``deadline`` comes first fails with :class:`~._transport.TotalTimeout` at the deadline,
as the real client's would. In-flight requests are counted from ``get`` until the
response is released (or the request fails), overall and per ``host:port``, so the
limits are checked where a server would see them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from yarl import URL

from spindle.policies.clock import Clock

from ._transport import HttpError, TotalTimeout, read_chunks
from ._urls import host_key

#: Size of the pieces a scripted body is handed over in.
CHUNK = 16 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: ``status``, ``body``, ``headers``, after ``delay`` seconds.

    ``Content-Length`` is added unless ``declare_length`` is false (a body that only
    shows its size as it is read) or the headers already have one.
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    declare_length: bool = True
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """A request that fails with ``error`` after ``delay`` seconds."""

    error: HttpError
    delay: float = 0.0


Step = Reply | Fail | HttpError | int


@dataclass(slots=True)
class Request:
    """One request the transport got: when it started and how it ended."""

    url: str
    host: str
    at: float
    deadline: float | None
    #: When it ended: the response released, or the error raised.
    ended: float | None = None
    #: ``"HTTP 200"``, or the name of the error raised.
    outcome: str = ""


class ScriptedTransport:
    """A :class:`~._transport.Transport` answering each URL from its script, on ``clock``."""

    def __init__(
        self,
        clock: Clock,
        scripts: Mapping[str, Step | list[Step]] | None = None,
        *,
        default: Step = 404,
    ) -> None:
        self.clock = clock
        self.default = default
        self._scripts: dict[str, list[Step]] = {}
        self._served: dict[str, int] = {}
        for url, steps in (scripts or {}).items():
            self.script(url, *(steps if isinstance(steps, list) else [steps]))
        #: Every request, in the order they were made.
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._host_in_flight: dict[str, int] = {}
        self._host_max: dict[str, int] = {}
        self._open: list[FakeResponse] = []
        self.closed = False

    def script(self, url: str, *steps: Step) -> None:
        """Answer the requests of ``url`` with ``steps``, in turn (the last repeats)."""
        if not steps:
            raise ValueError("a script needs at least one step")
        key = str(URL(url))
        self._scripts[key] = list(steps)
        self._served[key] = 0

    # -- what was asked ----------------------------------------------------------------

    def times(self, url: str | None = None) -> list[float]:
        """The instants the requests (of ``url``, or all) started."""
        key = None if url is None else str(URL(url))
        return [r.at for r in self.requests if key is None or r.url == key]

    def count(self, url: str | None = None) -> int:
        return len(self.times(url))

    def urls(self) -> list[str]:
        """The URLs requested, in order."""
        return [r.url for r in self.requests]

    def max_in_flight_to(self, host: str) -> int:
        """The most requests that were in flight together to ``host`` (``host:port``)."""
        return self._host_max.get(host, 0)

    def unreleased(self) -> list[str]:
        """URLs whose response was never released (the Fetcher releases every one)."""
        return [str(response.url) for response in self._open]

    # -- Transport -----------------------------------------------------------------------

    async def get(self, url: URL, deadline: float | None = None) -> FakeResponse:
        if self.closed:
            raise RuntimeError("the transport is closed")
        key = str(url)
        step = self._next_step(key)
        if isinstance(step, int):
            step = Reply(step)
        elif isinstance(step, HttpError):
            step = Fail(step)
        request = Request(key, host_key(url), self.clock.now(), deadline)
        self.requests.append(request)
        self._enter(request)
        try:
            if deadline is not None and request.at + step.delay > deadline:
                await self.clock.sleep(deadline - request.at)
                raise TotalTimeout(f"timed out (total_timeout {deadline - request.at:g} s)")
            if math.isinf(step.delay):
                raise RuntimeError(f"{key}: a step that never answers needs a deadline")
            if step.delay > 0:
                await self.clock.sleep(step.delay)
            if isinstance(step, Fail):
                raise step.error.with_traceback(None)
        except BaseException as exc:
            request.outcome = type(exc).__name__
            self._leave(request)
            raise
        request.outcome = f"HTTP {step.status}"
        response = FakeResponse(self, request, url, step)
        self._open.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True

    # -- bookkeeping ----------------------------------------------------------------------

    def _next_step(self, key: str) -> Step:
        steps = self._scripts.get(key)
        if steps is None:
            return self.default
        served = self._served[key]
        self._served[key] = served + 1
        return steps[min(served, len(steps) - 1)]

    def _enter(self, request: Request) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        host = request.host
        now = self._host_in_flight[host] = self._host_in_flight.get(host, 0) + 1
        self._host_max[host] = max(self._host_max.get(host, 0), now)

    def _leave(self, request: Request) -> None:
        request.ended = self.clock.now()
        self.in_flight -= 1
        self._host_in_flight[request.host] -= 1

    def _released(self, response: FakeResponse) -> None:
        self._open.remove(response)
        self._leave(response.request)

    def __repr__(self) -> str:
        return (
            f"<ScriptedTransport: {len(self.requests)} requests, {self.in_flight} in flight, "
            f"{len(self._scripts)} URLs scripted>"
        )


class FakeResponse:
    """A scripted answer, read like the real client's (:class:`~._transport.TransportResponse`)."""

    __slots__ = ("_body", "_transport", "headers", "reason", "released", "request", "status", "url")

    def __init__(
        self, transport: ScriptedTransport, request: Request, url: URL, reply: Reply
    ) -> None:
        self._transport = transport
        self.request = request
        self.url = url
        self.status = reply.status
        self.reason = reply.reason if reply.reason is not None else _phrase(reply.status)
        self.headers = {name.lower(): value for name, value in reply.headers.items()}
        if reply.declare_length:
            self.headers.setdefault("content-length", str(len(reply.body)))
        self._body = reply.body
        self.released = False

    async def read(self, max_bytes: int, *, truncate: bool = False) -> bytes | None:
        return await read_chunks(self.chunks(), max_bytes, truncate)

    async def chunks(self) -> AsyncIterator[bytes]:
        body = self._body
        for start in range(0, len(body), CHUNK):
            yield body[start : start + CHUNK]

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._transport._released(self)

    def __repr__(self) -> str:
        return f"<FakeResponse {self.status} {self.url}>"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
