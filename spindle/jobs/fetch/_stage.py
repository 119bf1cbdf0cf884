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
consistent hashing. When a worker is replaced, its hosts move to one neighbour on
the ring, whose Fetcher starts their state afresh.

One exception keeps a few busy hosts from leaving cores idle: when nothing asks for
time between a host's requests (no ``rate``, robots.txt ignored), each host is
shared by all the workers, its URLs spread by a hash of the URL, and each worker
holds an equal share of its ``per_host`` (see :func:`host_shards`). The host
sees the same ``per_host`` in all; a breaker or a 429 slowdown then acts in each
worker on its share.

Per-host figures reach the run's snapshot (its ``hosts`` rows: the dashboard's
hosts table, the final report's hosts section) through the stage's reporter: each
worker reports its Fetcher's hosts about once a second and once more when it stops,
and the parent adds the rows of one host up across workers (after a replacement a
host has been fetched by two)::

    worker: report_hosts(fetcher) ─ REPORT frame ─▶ parent: merge_hosts([...]) ─▶ "hosts"

A report holds the ``MAX_HOST_ROWS`` busiest hosts; the others add up into one
``(other hosts)`` row, so totals stay exact and a crawl of many hosts sends little.

A URL that fails raises :class:`FetchFailed`, which the run records as a
:class:`spindle.Failure` with ``error == "FetchFailed"`` and ``message ==
"URL: reason"`` (the bare reason is ``failure.exception.reason``); any HTTP
answer, a 404 included, is a result.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from spindle._core.stage import Stage, cpu_count, make_stage
from spindle._errors import ConfigError
from spindle._worker_state import worker_state

from ._client import Fetcher
from ._hosts import Host
from ._options import FetchOptions
from ._response import FetchResult, Response
from ._urls import BadURL, host_key, parse_url

_DEFAULTS = FetchOptions()

#: Host rows in a report, at most: the busiest hosts, then one row for the others.
MAX_HOST_ROWS = 100
#: The name of the row that adds up the hosts beyond ``MAX_HOST_ROWS``.
OTHER_HOSTS = "(other hosts)"
#: Figures of a host row that add up across workers.
_SUMMED = ("requests", "errors", "responses", "latency_sum")


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

    A run's snapshot (``pipeline.snapshot()``) gets ``hosts``: per ``host:port``
    the requests, errors, mean latency and current concurrency limit, added up over
    the workers, complete once the run has ended.

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
    shards = host_shards(options, count)
    per_worker = dataclasses.replace(options, concurrency=share, host_shards=shards)
    return make_stage(
        job,
        "cpu",
        workers=count,
        concurrency=share,
        name=name,
        init=functools.partial(open_fetcher, per_worker),
        route=host_of if shards == 1 else functools.partial(host_share_of, shards),
        reporter=report_hosts,
        merge_reports=merge_hosts,
        sections=("hosts",),  # each host's row also goes into the run's "hosts"
    )


def report_hosts(fetcher: Fetcher) -> dict[str, Any]:
    """The stage's reporter, in a worker: ``{"hosts": rows}`` of its Fetcher.

    A row: ``host`` (``host:port``), ``requests`` (started, robots.txt included),
    ``errors`` (failed attempts), ``responses``, ``latency_sum`` (seconds, over the
    responses) and ``limit`` (the host's concurrency limit now).
    """
    hosts = fetcher.hosts()
    if len(hosts) > MAX_HOST_ROWS:
        top = heapq.nlargest(MAX_HOST_ROWS - 1, hosts, key=_requests)
        kept = {id(h) for h in top}
        rows = [_row(h) for h in top]
        rows.append(_other([_row(h) for h in hosts if id(h) not in kept]))
        return {"hosts": rows}
    return {"hosts": [_row(h) for h in hosts]}


def merge_hosts(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's merge, in the parent: one row per host, figures added up across
    workers, ``limit`` from the last report holding the host (a live worker's, since
    ended workers' reports come first), ``latency_mean`` over all responses."""
    by_host: dict[str, dict[str, Any]] = {}
    for report in reports:
        for row in report.get("hosts", ()):
            have = by_host.get(row["host"])
            if have is None:
                by_host[row["host"]] = dict(row)
                continue
            for key in _SUMMED:
                have[key] += row[key]
            have["limit"] = row["limit"]
    rows = list(by_host.values())
    if len(rows) > MAX_HOST_ROWS:
        named = [r for r in rows if r["host"] != OTHER_HOSTS]
        top = heapq.nlargest(MAX_HOST_ROWS - 1, named, key=_requests)
        kept = {id(r) for r in top}
        rows = [*top, _other([r for r in rows if id(r) not in kept])]
    for row in rows:
        responses = row["responses"]
        row["latency_mean"] = row["latency_sum"] / responses if responses else 0.0
    return {"hosts": rows}


def _requests(host: Host | dict[str, Any]) -> int:
    return host.requests if isinstance(host, Host) else int(host["requests"])


def _row(host: Host) -> dict[str, Any]:
    return {
        "host": host.key,
        "requests": host.requests,
        "errors": host.errors,
        "responses": host.responses,
        "latency_sum": host.latency_sum,
        "limit": host.limiter.limit * host.shards,  # the host's, over the workers sharing it
    }


def _other(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One row adding up ``rows`` (hosts beyond the busiest, and earlier such rows)."""
    other: dict[str, Any] = {"host": OTHER_HOSTS, "limit": 0}
    other.update(dict.fromkeys(_SUMMED, 0))
    for row in rows:
        for key in _SUMMED:
            other[key] += row[key]
    return other


async def open_fetcher(options: FetchOptions) -> AsyncIterator[Fetcher]:
    """A worker's Fetcher, open for the worker's life (the stage's ``init``)."""
    async with Fetcher(options) as fetcher:
        yield fetcher


def host_shards(options: FetchOptions, workers: int) -> int:
    """Worker processes that share each host: when nothing asks for time between a
    host's requests (no ``rate``, robots.txt and its Crawl-delay ignored), the most
    workers that split ``per_host`` into equal whole shares; otherwise one.

    Spaced requests need one clock per host, so such hosts stay in one process; a
    host limited by concurrency alone is split, each process holding an equal share
    of ``per_host`` (so the host sees exactly ``per_host`` in all), and one busy host
    can use every core.
    """
    if options.rate is not None or options.robots:
        return 1
    for shards in range(min(workers, options.per_host), 1, -1):
        if options.per_host % shards == 0:
            return shards
    return 1


def host_share_of(shards: int, url: Any) -> Any:
    """The routing key of a URL when its host is shared: ``(host:port, i)``, the
    URL's share ``i`` picked by a stable hash of the URL."""
    key = host_of(url)
    if not key:
        return key
    return (key, zlib.crc32(url.encode("utf-8", "surrogatepass")) % shards)


def host_of(url: Any) -> str:
    """The routing key of a URL: its ``host:port``; ``""`` for a URL that will fail
    anyway, so that routing never raises.

    The parent computes it for every URL, so the usual URL (``http(s)://name[:port]``
    then a path) is read by one regular expression, any other ASCII URL by the
    standard library's split, both several times cheaper than a full parse and giving
    the same key (a lowercased host, the scheme's port when none is written).
    Anything else, or anything odd, goes through :func:`parse_url`.
    """
    if type(url) is str:
        simple = _SIMPLE_URL.match(url)
        if simple is not None:  # most URLs: no split at all
            scheme, host, port = simple.groups()
            if port is None:
                return f"{host.lower()}:{_DEFAULT_PORTS[scheme]}"
            if int(port) <= 65535:
                return f"{host.lower()}:{int(port)}"
    if type(url) is str and url.isascii():
        try:
            parts = urlsplit(url)
            host, port, scheme = parts.hostname, parts.port, parts.scheme
        except ValueError:
            host = None
        if host and scheme in _DEFAULT_PORTS and "%" not in host:
            if ":" in host:
                host = f"[{host}]"
            return f"{host}:{_DEFAULT_PORTS[scheme] if port is None else port}"
    try:
        return host_key(parse_url(url))
    except BadURL:
        return ""


_DEFAULT_PORTS = {"http": 80, "https": 443}
#: ``http(s)://host[:port]`` then a path, query, fragment or the end: a name of
#: letters, digits, dots and hyphens, no user info, no IPv6, no percent sign.
_SIMPLE_URL = re.compile(r"(https?)://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?(?=[/?#]|\Z)")


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
