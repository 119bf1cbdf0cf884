"""The fetch stage in a pipeline: worker processes, each with a Fetcher, routed by host.

The servers run on the test's event loop and the pipeline runs there too
(``Pipeline.arun``), while the fetching happens in two worker processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import spindle
from spindle._core.stage import cpu_count
from spindle.jobs.fetch import FetchOptions, Response, fetch
from spindle.jobs.fetch._stage import host_of, host_shards

from ._http import Server, status
from ._leftovers import no_stray_threads_or_children  # noqa: F401 - a fixture

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_stray_threads_or_children")]

#: Fast failure paths for the stage (the Fetcher's own tests use the same values).
META = {"url", "final_url", "status", "headers", "elapsed", "attempts"}
QUICK = {"robots": False, "backoff": (0.01, 0.05), "connect_timeout": 2.0, "read_timeout": 2.0}


def refused_url() -> str:
    """A URL on a port nothing listens on (bound, then closed, so it was free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


async def collect(stages: list[spindle.Stage], urls: list[str]) -> list[tuple[Any, Any]]:
    pipeline = spindle.Pipeline(stages, ordered=False, on_error="yield")
    return [pair async for pair in pipeline.arun(urls, with_inputs=True)]


def page(request: web.Request) -> Any:
    return web.Response(text=f"page {request.match_info['n']} of {request.host}")


async def page_handler(request: web.Request) -> web.StreamResponse:
    return page(request)


# -- the stage, end to end ------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_url_ends_as_one_record_or_one_failure(serve) -> None:
    servers: list[Server] = [
        await serve({"/page/{n}": page_handler, "/gone": status(404)}) for _ in range(3)
    ]
    good = [s.url(f"/page/{n}") for n in range(20) for s in servers]
    gone = servers[0].url("/gone")
    refused = refused_url()
    bad = ["not a url", "ftp://127.0.0.1/file", "http:///no-host"]
    urls = [*good, gone, refused, *bad]

    stage = fetch(workers=2, concurrency=20, per_host=4, retries=1, **QUICK)
    pairs = await collect([stage], urls)

    assert sorted(url for url, _ in pairs) == sorted(urls)  # each URL exactly once
    by_url = dict(pairs)
    for url in good:
        record = by_url[url]
        assert record["status"] == 200
        assert record["url"] == record["final_url"] == url
        n = url.rsplit("/", 1)[1]
        assert record["text"] == f"page {n} of {url.split('/')[2]}"
        assert record["attempts"] == 1
        assert set(record) == {
            "url",
            "final_url",
            "status",
            "headers",
            "elapsed",
            "attempts",
            "text",
        }
    assert by_url[gone]["status"] == 404  # an answer, not a failure
    failures = {url: value for url, value in pairs if isinstance(value, spindle.Failure)}
    assert set(failures) == {refused, *bad}
    for failure in failures.values():
        assert failure.error == "FetchFailed"
        assert failure.stage == "fetch"
        assert failure.item in failure.message
    assert "cannot connect: connection refused (after 2 attempts)" in failures[refused].message
    assert "invalid URL: 'not a url' (no scheme" in failures["not a url"].message
    assert "only http and https" in failures["ftp://127.0.0.1/file"].message
    assert "invalid URL" in failures["http:///no-host"].message
    assert sum(s.count() for s in servers) == len(good) + 1


class Groups:
    """A handler that holds requests in groups of ``size``: the group's last arrival
    releases it. A host whose requests are capped at ``size`` in flight fills its
    groups exactly; a second client of the same host would push more requests in
    while a group is held, which the server's meter records."""

    def __init__(self, size: int, wait: float = 10.0) -> None:
        self.size = size
        self.wait = wait
        self.arrived = 0
        self.groups: dict[int, asyncio.Event] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        group = self.arrived // self.size
        self.arrived += 1
        done = self.groups.setdefault(group, asyncio.Event())
        if self.arrived % self.size == 0:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), self.wait)
        except TimeoutError:
            pass  # the test's assertions report a group that never filled
        return page(request)


@pytest.mark.asyncio
async def test_per_host_limit_holds_at_the_server_with_two_workers(serve) -> None:
    per_host, per_server = 3, 12
    servers = [await serve({"/page/{n}": Groups(per_host).handle}) for _ in range(3)]
    urls = [s.url(f"/page/{n}") for n in range(per_server) for s in servers]

    # Without routing, each of the two workers would send a host up to 3 requests.
    stage = fetch(workers=2, concurrency=30, per_host=per_host, **QUICK)
    pairs = await collect([stage], urls)

    assert all(isinstance(value, dict) and value["status"] == 200 for _, value in pairs)
    assert len(pairs) == len(urls)
    for server in servers:
        assert server.count() == per_server
        assert server.meter.max_in_flight == per_host


def parse_page(response: Response) -> dict[str, Any]:
    """Runs in a parse worker process."""
    return {"url": response.url, "words": response.text().split(), "pid": os.getpid()}


@pytest.mark.asyncio
async def test_fetch_then_parse_in_worker_processes(serve) -> None:
    servers = [await serve({"/page/{n}": page_handler}) for _ in range(2)]
    urls = [s.url(f"/page/{n}") for n in range(10) for s in servers]
    stages = [
        fetch(workers=2, concurrency=10, response=True, **QUICK),
        spindle.cpu(parse_page, workers=2),
    ]
    pairs = await collect(stages, [*urls, "not a url"])

    by_url = dict(pairs)
    assert set(by_url) == {*urls, "not a url"}
    for url in urls:
        parsed = by_url[url]
        assert parsed["url"] == url
        assert parsed["words"][:2] == ["page", url.rsplit("/", 1)[1]]
        assert parsed["pid"] != os.getpid()
    failure = by_url["not a url"]
    assert isinstance(failure, spindle.Failure)
    assert (failure.error, failure.stage) == ("FetchFailed", "fetch")  # passed through parse


@pytest.mark.asyncio
async def test_saved_bodies_travel_as_paths(serve, tmp_path) -> None:
    body = bytes(range(256)) * 64

    async def binary(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/octet-stream")

    server = await serve({"/blob/{n}": binary})
    urls = [server.url(f"/blob/{n}") for n in range(4)]
    stage = fetch(workers=2, concurrency=4, save_dir=str(tmp_path), **QUICK)
    pairs = await collect([stage], urls)

    digest = hashlib.sha256(body).hexdigest()
    for _, record in pairs:
        assert (record["size"], record["sha256"]) == (len(body), digest)
        assert await asyncio.to_thread(Path(record["path"]).read_bytes) == body
        assert "text" not in record and "body_base64" not in record


# -- building the stage ------------------------------------------------------------------


def test_concurrency_is_the_total_shared_by_the_workers() -> None:
    stage = fetch(workers=3, concurrency=10)
    assert (stage.kind, stage.workers, stage.concurrency) == ("cpu", 3, 4)
    assert stage.is_async and stage.route is host_of and stage.name == "fetch"
    assert stage.init is not None and inspect.isasyncgenfunction(stage.init)
    small = fetch(workers=4, concurrency=2)
    assert (small.workers, small.concurrency) == (2, 1)  # never more than asked for
    assert fetch(concurrency=1000).workers == cpu_count()


def test_options_are_those_of_fetch_options_with_the_same_defaults() -> None:
    parameters = inspect.signature(fetch).parameters
    defaults = FetchOptions()
    chosen = set(FetchOptions.__dataclass_fields__) - {"host_shards"}  # the stage sets it
    for name in chosen:
        assert parameters[name].default == getattr(defaults, name), name
    assert set(parameters) - chosen == {
        "workers",
        "response",
        "name",
    }


@pytest.mark.asyncio
async def test_a_host_without_spacing_is_shared_by_the_workers_within_per_host(serve) -> None:
    per_host = 4
    # Groups that do not fill (the two shares of the URLs differ) go after 0.2 s.
    server = await serve({"/page/{n}": Groups(per_host, wait=0.2).handle})
    urls = [server.url(f"/page/{n}") for n in range(40)]
    stage = fetch(workers=2, concurrency=20, per_host=per_host, **QUICK)
    pipeline = spindle.Pipeline([stage], ordered=False, on_error="yield")
    values = [value async for value in pipeline.arun(urls)]

    assert all(isinstance(value, dict) and value["status"] == 200 for value in values)
    assert server.count() == len(urls)
    assert server.meter.max_in_flight == per_host  # reached, never passed
    workers = pipeline.snapshot()["workers"]
    assert len(workers) == 2 and all(w["jobs"] > 0 for w in workers)  # both fetched it
    assert host_shards(FetchOptions(robots=False, per_host=per_host), 2) == 2
    assert host_shards(FetchOptions(robots=True, per_host=per_host), 2) == 1
    assert host_shards(FetchOptions(robots=False, rate=5.0, per_host=per_host), 2) == 1
    assert host_shards(FetchOptions(robots=False, per_host=3), 2) == 1  # no equal shares


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a",
        "HTTPS://Example.COM:8443/x?y=1",
        "https://example.com",
        "http://127.0.0.1:8080/",
        "http://[::1]:9000/p",
        "http://user:pw@host.example/",
        "http://bücher.example/",
        "http://example.com:0/",
    ],
)
def test_the_quick_routing_key_is_the_full_parse_key(url: str) -> None:
    from spindle.jobs.fetch._urls import host_key, parse_url

    assert host_of(url) == host_key(parse_url(url))


@pytest.mark.parametrize("url", ["ftp://example.com/", "not a url", "http:///nohost", "", 5])
def test_a_url_that_will_fail_routes_to_the_empty_key(url: Any) -> None:
    assert host_of(url) == ""


@pytest.mark.parametrize(
    "changes",
    [{"per_host": 0}, {"concurrency": 0}, {"workers": 0}, {"rate": -1.0}, {"user_agent": ""}],
)
def test_bad_options_fail_when_the_stage_is_made(changes: dict[str, Any]) -> None:
    with pytest.raises(spindle.ConfigError):
        fetch(**changes)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://Example.com/a", "example.com:80"),
        ("https://example.com/b?q=1", "example.com:443"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("not a url", ""),
        ("ftp://example.com/", ""),
        (42, ""),
    ],
)
def test_routing_key_is_host_and_port_and_never_raises(url: Any, key: str) -> None:
    assert host_of(url) == key
