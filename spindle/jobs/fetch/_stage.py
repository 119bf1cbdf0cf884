"""The fetch stage: a cpu stage whose worker processes each own one :class:`Fetcher`.

::

    URLs ──▶ parent: route by host:port ──┬──▶ worker 1: event loop + Fetcher ──┐
             (consistent hashing)         └──▶ worker 2: event loop + Fetcher ──┴──▶ records
                                                                                    or Responses

Every URL of one ``host:port`` goes to the same worker process, so that host's
limits, spacing, robots.txt and breaker live in one Fetcher and hold for the whole
run, however many processes fetch. ``concurrency`` is the run's total: each of the
``workers`` processes gets its share, both as its Fetcher's request limit and as
the number of jobs it runs at once. Hosts are spread over the workers by
consistent hashing, so with only a few hosts one worker may hold most of them and
the run fetches below ``concurrency``; with one host, use one worker. When a worker
is replaced, its hosts move to one neighbour on the ring, whose Fetcher starts
their state afresh.

A URL that fails raises :class:`FetchFailed`, which the run records as a
:class:`spindle.Failure` with ``error == "FetchFailed"`` and ``message ==
"URL: reason"`` (the bare reason is ``failure.exception.reason``); any HTTP
answer, a 404 included, is a result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from spindle._core.stage import Stage, cpu_count, make_stage
from spindle._errors import ConfigError
from spindle._worker_state import worker_state

from ._client import Fetcher
from ._options import FetchOptions
from ._response import FetchResult, Response
from ._urls import BadURL, host_key, parse_url

_DEFAULTS = FetchOptions()


def fetch(
    *,
    workers: int | None = None,
    concurrency: int = _DEFAULTS.concurrency,
    per_host: int = _DEFAULTS.per_host,
    rate: float | None = _DEFAULTS.rate,
    robots: bool = _DEFAULTS.robots,
    user_agent: str = _DEFAULTS.user_agent,
    retries: int = _DEFAULTS.retries,
    backoff: tuple[float, float] = _DEFAULTS.backoff,
    breaker: int = _DEFAULTS.breaker,
    connect_timeout: float = _DEFAULTS.connect_timeout,
    read_timeout: float = _DEFAULTS.read_timeout,
    total_timeout: float = _DEFAULTS.total_timeout,
    max_bytes: int = _DEFAULTS.max_bytes,
    max_redirects: int = _DEFAULTS.max_redirects,
    save_dir: str | None = _DEFAULTS.save_dir,
    response: bool = False,
    name: str = "fetch",
) -> Stage:
    """A pipeline stage that fetches each URL it receives, on every core, politely.

    Each item is a URL string. The stage gives a record (``url``, ``final_url``,
    ``status``, ``headers``, ``elapsed``, ``attempts``, and ``text`` or
    ``body_base64``, or with ``save_dir`` the file's ``path``, ``size`` and
    ``sha256``), or with ``response=True`` a :class:`Response` to parse in the next
    stage. A URL that cannot be fetched fails as :class:`FetchFailed`, with the
    reason ("invalid URL: ...", "cannot connect: connection refused (after 4
    attempts)", "disallowed by robots.txt"...).

    Fetch, parse on every core while fetching goes on, store::

        import spindle
        from spindle.jobs.fetch import fetch

        def parse(response):                # runs in worker processes
            return {"url": response.url, "title": find_title(response.text())}

        pipeline = spindle.Pipeline(
            [fetch(per_host=4, response=True), spindle.cpu(parse), spindle.thread(store)],
            ordered=False, on_error="yield",
        )
        for item in pipeline.run(open("urls.txt").read().split()):
            if isinstance(item, spindle.Failure):
                print(item.item, item.message)

    Arguments:
        workers: processes that fetch (default: the cores, at most ``concurrency``).
            All URLs of one ``host:port`` go to the same process.
        concurrency: requests in flight at once for the whole stage, shared evenly
            between the workers.
        response: give :class:`Response` objects (for a parse stage) instead of
            records.
        name: the stage's name in stats and failure records.

    The other arguments are those of :class:`FetchOptions` (``per_host``,
    ``rate``, ``robots``, ``retries``, timeouts, ``max_bytes``, ``save_dir``...),
    with the same defaults. A Response's body crosses to the parse stage's
    processes: with large bodies, give that stage a small ``batch_size`` and
    ``buffer``, or use ``save_dir`` so that only the file's path travels.
    """
    options = FetchOptions(
        concurrency=concurrency,
        per_host=per_host,
        rate=rate,
        robots=robots,
        user_agent=user_agent,
        retries=retries,
        backoff=backoff,
        breaker=breaker,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        total_timeout=total_timeout,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        save_dir=save_dir,
    )
    return fetch_stage(
        options, workers=workers, job=fetch_response if response else fetch_record, name=name
    )


def fetch_stage(
    options: FetchOptions,
    *,
    workers: int | None,
    job: Callable[[str], Awaitable[Any]],
    name: str,
) -> Stage:
    """The cpu stage running ``job`` (an ``async def`` taking a URL) on workers that
    each hold a Fetcher; ``options.concurrency`` is split between the workers."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}")
    count = min(workers or cpu_count(), options.concurrency)
    share = -(-options.concurrency // count)  # ceiling: never below the ask, < count above
    per_worker = dataclasses.replace(options, concurrency=share)
    return make_stage(
        job,
        "cpu",
        workers=count,
        concurrency=share,
        name=name,
        init=functools.partial(open_fetcher, per_worker),
        route=host_of,
    )


async def open_fetcher(options: FetchOptions) -> AsyncIterator[Fetcher]:
    """A worker's Fetcher, open for the worker's life (the stage's ``init``)."""
    async with Fetcher(options) as fetcher:
        yield fetcher


def host_of(url: Any) -> str:
    """The routing key of a URL: its ``host:port``; ``""`` for a URL that will fail
    anyway, so that routing never raises."""
    try:
        return host_key(parse_url(url))
    except BadURL:
        return ""


async def fetch_result(url: str) -> FetchResult:
    """Fetch one URL with this worker's Fetcher."""
    fetcher: Fetcher = worker_state()
    return await fetcher.fetch(url)


async def fetch_record(url: str) -> dict[str, Any]:
    """The job of ``fetch()``: a JSON-ready record of the URL."""
    return (await fetch_result(url)).to_record()


async def fetch_response(url: str) -> Response:
    """The job of ``fetch(response=True)``: a Response for a parse stage."""
    return (await fetch_result(url)).response()


__all__ = ["fetch"]
