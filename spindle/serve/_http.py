"""The HTTP API of ``spindle serve``, on aiohttp's server.

::

    POST /run            one JSON item      → 200 {"result"} · 422/500/504 {"error", ...}
    POST /run            NDJSON items       → 200, one NDJSON line per item, in order,
                                              streamed as the results come
    POST /jobs           one item or NDJSON → 202 {"id"} or {"ids"}; durable first with
                                              a journal; Idempotency-Key: the same ids
    GET  /jobs/{id}[?wait=S]                → {"id", "state", "result" | "error", ...}
    GET  /healthz · /stats · /metrics

Refusals are JSON too: 400 (the body is not JSON, naming where), 404, 405, 413 (over
``max_body``), 429 with ``Retry-After`` (``max_queue`` jobs accepted and not finished),
503 while stopping. A failure's traceback is sent only when asked (``?traceback=1``).

Why aiohttp: it is already spindle's HTTP client and the dashboard's server, and one
aiohttp process answered 33,000 requests/s of a no-op handler on this 2-core machine
with wrk on the other core (``docs/architecture.md``, "Serving"), four times what the
served jobs need; the time per request goes to the jobs' round trip, not to parsing HTTP.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .._failure import Failure
from ..observe._server import token_middleware
from ..observe.prometheus import SnapshotCollector
from ._jobs import STOPPED, Job, Waiter, describe, encode_outcome, failure_body
from ._service import Full, Service
from ._store import StoredJob

__all__ = ["make_app"]

_JSON = "application/json"
_NDJSON = "application/x-ndjson"
#: Items of one streaming request submitted and not yet answered, at most.
WINDOW = 1024
#: Longest ``?wait=`` of ``GET /jobs/{id}``, in seconds.
MAX_WAIT = 3600.0


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body, default=str)
    return web.Response(status=status, body=raw, content_type=_JSON, headers=headers)


def _error(status: int, error: str, message: str, **headers: str) -> web.Response:
    return _json(status, {"error": error, "message": message}, headers or None)


def _traceback(request: web.Request) -> bool:
    return request.query.get("traceback", "") in ("1", "true", "yes")


def _parse_lines(body: bytes) -> list[Any]:
    """The items of an NDJSON body: each line's JSON, or for a line that is not JSON
    the 400-style error record it gets instead. Blank lines are skipped."""
    items: list[Any] = []
    loads = orjson.loads
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            items.append(loads(line))
        except orjson.JSONDecodeError as exc:
            items.append(_BadLine(number, str(exc)))
    return items


class _BadLine:
    """An NDJSON line that is not JSON: it fails alone, in its place."""

    __slots__ = ("message", "number")

    def __init__(self, number: int, message: str) -> None:
        self.number = number
        self.message = message

    def line(self) -> bytes:
        return orjson.dumps(
            {"error": "MalformedInput", "message": f"line {self.number}: {self.message}"}
        )


def make_app(
    service: Service,
    snapshot: Callable[[], dict[str, Any]],
    *,
    max_body: int,
    token: str | None = None,
) -> web.Application:
    """The application serving ``service``; ``snapshot`` gives ``/stats`` (the run's
    snapshot with the server's own section)."""

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == _JSON:
                raise
            text = exc.reason
            if exc.status == 413:
                text = f"the body is over --max-body ({max_body:,} bytes)"
            elif exc.status == 405:
                text = f"{request.method} is not allowed on {request.path}"
            elif exc.status == 404:
                text = f"no such path: {request.path}"
            return _json(
                exc.status,
                {"error": exc.reason, "message": text},
                {k: v for k, v in exc.headers.items() if k in ("Allow",)},
            )

    middlewares: list[Middleware] = [json_errors]
    if token is not None:
        middlewares.insert(0, token_middleware(token))
    app = web.Application(client_max_size=max_body, middlewares=middlewares)

    def refused() -> web.Response:
        return _error(
            429,
            "TooManyJobs",
            f"{service.max_queue:,} jobs are accepted and not finished: try again later",
            **{"Retry-After": str(service.retry_after())},
        )

    def stopping() -> web.Response:
        return _error(
            503, STOPPED, "the server is stopping and takes no new jobs", **{"Retry-After": "5"}
        )

    async def body_of(request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=length)
        return await request.read()

    def is_ndjson(request: web.Request) -> bool:
        return request.content_type in (_NDJSON, "application/jsonl", "application/x-jsonlines")

    async def run(request: web.Request) -> web.StreamResponse:
        service.requests += 1
        if service.stopping:
            return stopping()
        if is_ndjson(request):
            return await run_stream(request)
        if service.room() <= 0:
            service.refused += 1
            return refused()
        body = await body_of(request)
        try:
            item = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, "MalformedInput", f"the body is not JSON: {exc}")
        try:
            service.admit(1)
        except Full:
            return refused()
        assert service.loop is not None
        waiter = Waiter(service.loop)
        jobs = service.run([item], waiter)
        job = jobs[0]
        service.waiting[waiter] = jobs
        try:
            while not job.finished:
                await waiter.wait()
        finally:
            del service.waiting[waiter]
        status, raw = encode_outcome(job.value, _traceback(request))
        return web.Response(status=status, body=raw, content_type=_JSON)

    async def run_stream(request: web.Request) -> web.StreamResponse:
        if service.room() <= 0:
            service.refused += 1
            return refused()
        items = _parse_lines(await body_of(request))
        tb = _traceback(request)
        response = web.StreamResponse(headers={"Content-Type": _NDJSON})
        await response.prepare(request)
        assert service.loop is not None
        waiter = Waiter(service.loop)
        order: deque[Job | bytes] = deque()
        mine: list[Job] = []
        service.waiting[waiter] = mine
        dumps = orjson.dumps
        try:
            i = 0
            n = len(items)
            while i < n or order:
                # Submit what the window and the server's room allow.
                if i < n and len(order) < WINDOW:
                    want = 0
                    j = i
                    while j < n and len(order) + want < WINDOW:
                        if type(items[j]) is not _BadLine:
                            want += 1
                        j += 1
                    k = await service.admit_some(want) if want else 0
                    if want and k == 0:  # stopping: the rest are refused
                        stop_line = dumps(failure_body(_stopped_failure(), False))
                        for item in items[i:]:
                            order.append(item.line() if type(item) is _BadLine else stop_line)
                        i = n
                    else:
                        batch: list[Any] = []
                        taken = 0
                        marks: list[int] = []
                        while i < n and (taken < k or type(items[i]) is _BadLine):
                            item = items[i]
                            if type(item) is _BadLine:
                                marks.append(len(order) + len(batch))
                                batch.append(item)
                            else:
                                batch.append(item)
                                taken += 1
                            i += 1
                        good = [x for x in batch if type(x) is not _BadLine]
                        jobs = service.run(good, waiter) if good else []
                        mine.extend(jobs)
                        it = iter(jobs)
                        for x in batch:
                            order.append(x.line() if type(x) is _BadLine else next(it))
                # Write every answer ready at the head, in order.
                out: list[bytes] = []
                while order:
                    head = order[0]
                    if isinstance(head, bytes):
                        out.append(head)
                    elif head.finished:
                        out.append(encode_outcome(head.value, tb)[1])
                    else:
                        break
                    order.popleft()
                if out:
                    out.append(b"")
                    await response.write(b"\n".join(out))
                    mine[:] = [j for j in mine if not j.finished]
                elif order:
                    await waiter.wait()
        finally:
            del service.waiting[waiter]
        await response.write_eof()
        return response

    async def enqueue(request: web.Request) -> web.Response:
        service.requests += 1
        if service.stopping:
            return stopping()
        if service.room() <= 0:
            service.refused += 1
            return refused()
        body = await body_of(request)
        ndjson = is_ndjson(request)
        if ndjson:
            items = _parse_lines(body)
            bad = next((x for x in items if type(x) is _BadLine), None)
            if bad is not None:
                return _error(
                    400, "MalformedInput", f"line {bad.number} is not JSON: {bad.message}"
                )
            if not items:
                return _error(400, "MalformedInput", "the body holds no item")
        else:
            try:
                items = [orjson.loads(body)]
            except orjson.JSONDecodeError as exc:
                return _error(400, "MalformedInput", f"the body is not JSON: {exc}")
        idem = request.headers.get("Idempotency-Key")
        try:
            ids, new = await service.enqueue(items, idem)
        except Full:
            return refused()
        except Exception as exc:  # the journal could not record them: nothing accepted
            return _error(503, "JournalError", f"the job could not be recorded: {exc}")
        body_out: dict[str, Any] = {"ids": ids} if ndjson else {"id": ids[0]}
        headers = {"Location": f"/jobs/{ids[0]}"} if not ndjson else {}
        if not new:
            headers["Idempotent-Replayed"] = "true"
        return _json(202, body_out, headers)

    async def get_job(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        wait = 0.0
        text = request.query.get("wait")
        if text is not None:
            try:
                wait = float(text)
            except ValueError:
                wait = math.nan
            if not (0 <= wait <= MAX_WAIT):
                return _error(
                    400, "BadParameter", f"wait must be seconds between 0 and {MAX_WAIT:g}"
                )
        job = service.job(job_id)
        if job is None:
            return _error(404, "UnknownJob", f"no job {job_id!r} (unknown, or forgotten)")
        if isinstance(job, StoredJob):
            output = dict(job.output or {})
            if not _traceback(request):
                output.pop("traceback", None)
            return _json(200, {"id": job.id, "state": job.state, **output})
        if wait > 0 and not job.finished:
            assert service.loop is not None
            waiter = Waiter(service.loop)
            job.watch(waiter)
            try:
                async with asyncio.timeout(wait):
                    await waiter.wait()
            except TimeoutError:
                pass
            finally:
                job.unwatch(waiter)
        status, raw = describe(job, _traceback(request))
        return web.Response(status=status, body=raw, content_type=_JSON)

    async def healthz(request: web.Request) -> web.Response:
        if service.stopping:
            return _json(503, {"status": "stopping"})
        return _json(200, {"status": "ok", "active": service.active})

    async def stats(request: web.Request) -> web.Response:
        return _json(200, orjson.dumps(snapshot(), default=str, option=orjson.OPT_NON_STR_KEYS))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    registry.register(_ServeCollector(service))

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    app.router.add_post("/run", run)
    app.router.add_post("/jobs", enqueue)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    return app


def _stopped_failure() -> Failure:
    return Failure(None, STOPPED, "the server is stopping and takes no new jobs", "", 0)


class _ServeCollector(Collector):
    """The server's own figures for Prometheus (``spindle_serve_*``)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        s = self.service
        for name, value, text in (
            ("requests", s.requests, "HTTP requests that asked for work."),
            ("accepted", s.accepted, "Jobs accepted."),
            ("refused", s.refused, "Requests refused with 429 (the queue was full)."),
            ("done", s.done, "Jobs finished with a result."),
            ("failed", s.failed, "Jobs finished with a failure."),
        ):
            yield CounterMetricFamily(f"spindle_serve_{name}", text, value=value)
        yield GaugeMetricFamily(
            "spindle_serve_active", "Jobs accepted and not finished.", value=s.active
        )
        yield GaugeMetricFamily(
            "spindle_serve_max_queue", "Most jobs accepted and not finished.", value=s.max_queue
        )
