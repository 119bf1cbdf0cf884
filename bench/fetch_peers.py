"""The peers of ``spindle fetch`` in the fetch benchmark, each as a user would write it.

    python -m bench.fetch_peers NAME URLS CONCURRENCY OUTPUT

fetches every URL of the file URLS (one per line) with at most CONCURRENCY requests
in flight, reads each body whole, writes one JSON line per response to OUTPUT
(``url``, ``status``, ``headers``, ``text``: what ``spindle fetch`` writes, with the
fastest serializer there is, orjson), and prints one JSON line: ``ok`` (200 answers),
``bytes`` (body bytes read), ``errors``, ``seconds`` (from before the client or pool
is made until it is closed, imports excluded) and ``p50``/``p99`` (seconds per
request, timed around the request alone).

Each peer is kept to the few lines its documentation suggests; none is tuned
beyond giving it enough connections for CONCURRENCY.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: (status, body bytes, seconds) of one request.
Outcome = tuple[int, int, float]


class Sink:
    """The output file: one JSON line per response, written as it comes."""

    def __init__(self, path: str) -> None:
        import orjson

        self._dumps = orjson.dumps
        self._option = orjson.OPT_APPEND_NEWLINE
        self._file = open(path, "wb")  # noqa: SIM115 - closed by main

    def write(self, url: str, status: int, headers: Any, body: bytes) -> None:
        record = {
            "url": url,
            "status": status,
            "headers": {str(name): value for name, value in headers.items()},
            "text": body.decode("utf-8", "replace"),
        }
        self._file.write(self._dumps(record, option=self._option))

    def close(self) -> None:
        self._file.close()


#: Where the peer running in this process writes (set by main).
SINK: Sink | None = None


def sink() -> Sink:
    assert SINK is not None
    return SINK


async def aiohttp_workers(urls: list[str], concurrency: int) -> list[Outcome]:
    """aiohttp, ``concurrency`` worker coroutines taking URLs from one iterator."""
    import aiohttp

    outcomes: list[Outcome] = []
    out = sink()
    todo = iter(urls)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for url in todo:
                t0 = time.perf_counter()
                async with session.get(url) as response:
                    body = await response.read()
                outcomes.append((response.status, len(body), time.perf_counter() - t0))
                out.write(url, response.status, response.headers, body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def aiohttp_semaphore(urls: list[str], concurrency: int) -> list[Outcome]:
    """aiohttp, one task per URL, a semaphore admitting ``concurrency`` at once."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    out = sink()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(url: str) -> Outcome:
            async with limit:
                t0 = time.perf_counter()
                async with session.get(url) as response:
                    body = await response.read()
                out.write(url, response.status, response.headers, body)
                return response.status, len(body), time.perf_counter() - t0

        return await asyncio.gather(*(get(url) for url in urls))


async def httpx_workers(urls: list[str], concurrency: int) -> list[Outcome]:
    """httpx.AsyncClient, ``concurrency`` worker coroutines."""
    import httpx

    outcomes: list[Outcome] = []
    out = sink()
    todo = iter(urls)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def worker() -> None:
            for url in todo:
                t0 = time.perf_counter()
                response = await client.get(url)
                outcomes.append(
                    (response.status_code, len(response.content), time.perf_counter() - t0)
                )
                out.write(url, response.status_code, response.headers, response.content)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


_session: Any = None


async def _amp_get(url: str) -> tuple[str, int, dict[str, str], bytes, float]:
    """One request in an aiomultiprocess child: one session per child, made on first use."""
    global _session
    import aiohttp

    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    t0 = time.perf_counter()
    async with _session.get(url) as response:
        body = await response.read()
    headers = {str(name): value for name, value in response.headers.items()}
    return url, response.status, headers, body, time.perf_counter() - t0


async def aiomultiprocess_pool(urls: list[str], concurrency: int) -> list[Outcome]:
    """aiomultiprocess.Pool with 2 processes (uvloop in each), aiohttp in each."""
    import aiomultiprocess  # type: ignore[import-untyped]
    import uvloop

    processes = 2
    async with aiomultiprocess.Pool(
        processes=processes,
        childconcurrency=concurrency // processes,
        loop_initializer=uvloop.new_event_loop,
    ) as pool:
        # As its documentation shows: await the whole map, then use the results
        # (iterating it with ``async for`` instead is many times slower).
        results = await pool.map(_amp_get, urls)
    out = sink()
    outcomes: list[Outcome] = []
    for url, status, headers, body, seconds in results:
        out.write(url, status, headers, body)
        outcomes.append((status, len(body), seconds))
    return outcomes


def requests_threads(urls: list[str], concurrency: int) -> list[Outcome]:
    """requests, ``concurrency`` threads, one Session per thread."""
    import requests

    local = threading.local()
    out = sink()  # a whole line per write, under the file's own lock

    def get(url: str) -> Outcome:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        t0 = time.perf_counter()
        response = session.get(url)
        outcome = response.status_code, len(response.content), time.perf_counter() - t0
        out.write(url, response.status_code, response.headers, response.content)
        return outcome

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(get, urls))


def _uvloop(main: Callable[[list[str], int], Any]) -> Callable[[list[str], int], list[Outcome]]:
    def run(urls: list[str], concurrency: int) -> list[Outcome]:
        import uvloop

        return uvloop.run(main(urls, concurrency))

    return run


def _asyncio(main: Callable[[list[str], int], Any]) -> Callable[[list[str], int], list[Outcome]]:
    def run(urls: list[str], concurrency: int) -> list[Outcome]:
        return asyncio.run(main(urls, concurrency))

    return run


PEERS: dict[str, tuple[str, Callable[[list[str], int], list[Outcome]]]] = {
    "aiohttp-uvloop": ("aiohttp + uvloop, worker coroutines", _uvloop(aiohttp_workers)),
    "aiohttp-semaphore": ("aiohttp + semaphore, default loop", _asyncio(aiohttp_semaphore)),
    "aiomultiprocess": ("aiomultiprocess + aiohttp, 2 processes", _asyncio(aiomultiprocess_pool)),
    "httpx": ("httpx.AsyncClient + uvloop, worker coroutines", _uvloop(httpx_workers)),
    "requests": ("requests, thread pool", requests_threads),
}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summarize(outcomes: Iterable[Outcome], seconds: float) -> dict[str, Any]:
    done = list(outcomes)
    times = [t for _, _, t in done]
    return {
        "ok": sum(1 for status, _, _ in done if status == 200),
        "bytes": sum(size for status, size, _ in done if status == 200),
        "errors": sum(1 for status, _, _ in done if status != 200),
        "seconds": seconds,
        "p50": percentile(times, 0.50) if len(times) > 1 else None,
        "p99": percentile(times, 0.99) if len(times) > 1 else None,
    }


def _lines(path: str) -> Iterator[str]:
    with open(path) as f:
        for line in f:
            if line.strip():
                yield line.strip()


def main(argv: list[str]) -> None:
    global SINK
    if len(argv) != 4 or argv[0] not in PEERS:
        sys.exit(
            f"usage: python -m bench.fetch_peers {{{','.join(PEERS)}}} URLS CONCURRENCY OUTPUT"
        )
    name, path, concurrency, output = argv[0], argv[1], int(argv[2]), argv[3]
    urls = list(_lines(path))
    run = PEERS[name][1]
    t0 = time.perf_counter()
    SINK = Sink(output)
    try:
        outcomes = run(urls, concurrency)
    finally:
        SINK.close()
    seconds = time.perf_counter() - t0
    print(json.dumps(summarize(outcomes, seconds)))


if __name__ == "__main__":
    # Through the package, so that aiomultiprocess's children find the job by its name.
    from bench.fetch_peers import main as package_main

    package_main(sys.argv[1:])
