"""The peers of ``spindle fetch --parse`` in the fetch-and-parse benchmark.

    python -m bench.fetch_parse_peers NAME URLS OUTPUT CONCURRENCY

fetches every URL of the file URLS (one per line) with at most CONCURRENCY
requests in flight, parses each page inline with :func:`bench.parse_work.extract`
(lxml), and writes one JSON line per page to OUTPUT: ``url``, ``status``,
``title`` and ``links`` (the number of links). The harness times the whole
command, interpreter start-up included, and checks OUTPUT.

Each peer is written the way its documentation suggests, in a few lines; none is
tuned beyond giving it CONCURRENCY requests in flight (and, for Scrapy, turning off
what would slow it down on purpose: robots.txt, throttling, per-domain limits).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from bench.parse_work import extract


def record(url: str, status: int, body: bytes) -> dict[str, Any]:
    title, links = extract(body)
    return {"url": url, "status": status, "title": title, "links": len(links)}


def aiohttp_inline(urls: list[str], output: str, concurrency: int) -> None:
    """aiohttp on uvloop: ``concurrency`` worker coroutines that fetch, parse and write."""
    import aiohttp
    import uvloop

    async def main(out: TextIO) -> None:
        todo = iter(urls)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for url in todo:
                    async with session.get(url) as response:
                        body = await response.read()
                    out.write(json.dumps(record(url, response.status, body)) + "\n")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    with open(output, "w") as out:
        uvloop.run(main(out))


_session: Any = None


async def _amp_fetch_parse(url: str) -> dict[str, Any]:
    """One page in an aiomultiprocess child: one session per child, made on first use."""
    global _session
    import aiohttp

    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with _session.get(url) as response:
        body = await response.read()
    return record(url, response.status, body)


def aiomultiprocess_inline(urls: list[str], output: str, concurrency: int) -> None:
    """aiomultiprocess.Pool, 2 processes on uvloop, each fetching and parsing; the
    parent writes the records once all are in."""
    import aiomultiprocess  # type: ignore[import-untyped]
    import uvloop

    async def main(out: TextIO) -> None:
        processes = 2
        async with aiomultiprocess.Pool(
            processes=processes,
            childconcurrency=concurrency // processes,
            loop_initializer=uvloop.new_event_loop,
        ) as pool:
            # ``await``, not ``async for``: the latter polls every 5 ms for each result.
            for result in await pool.map(_amp_fetch_parse, urls):
                out.write(json.dumps(result) + "\n")

    with open(output, "w") as out:
        asyncio.run(main(out))


def scrapy_spider(urls: list[str], output: str, concurrency: int) -> None:
    """A minimal Scrapy spider parsing inline, its items written by a JSON lines feed."""
    import scrapy
    from scrapy.crawler import CrawlerProcess

    class Pages(scrapy.Spider):
        name = "pages"
        start_urls = urls

        def parse(self, response: Any) -> Any:
            yield record(response.url, response.status, response.body)

    process = CrawlerProcess(
        settings={
            "CONCURRENT_REQUESTS": concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
            "DOWNLOAD_DELAY": 0,
            "AUTOTHROTTLE_ENABLED": False,
            "ROBOTSTXT_OBEY": False,
            "LOG_LEVEL": "WARNING",
            "ASYNCIO_EVENT_LOOP": "uvloop.Loop",
            "CONCURRENT_ITEMS": 1,
            "FEEDS": {output: {"format": "jsonlines", "overwrite": True}},
        }
    )
    process.crawl(Pages)
    process.start()


PEERS: dict[str, tuple[str, Callable[[list[str], str, int], None]]] = {
    "scrapy": ("Scrapy spider, lxml inline", scrapy_spider),
    "aiohttp-uvloop": ("aiohttp + uvloop, worker coroutines, lxml inline", aiohttp_inline),
    "aiomultiprocess": (
        "aiomultiprocess + aiohttp, 2 processes, lxml inline",
        aiomultiprocess_inline,
    ),
}


def main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[0] not in PEERS:
        sys.exit(
            f"usage: python -m bench.fetch_parse_peers {{{','.join(PEERS)}}} "
            "URLS OUTPUT CONCURRENCY"
        )
    name, path, output, concurrency = argv[0], argv[1], argv[2], int(argv[3])
    with open(path) as f:
        urls = [line.strip() for line in f if line.strip()]
    PEERS[name][1](urls, output, concurrency)


if __name__ == "__main__":
    # Through the package, so that aiomultiprocess's children find the job by its name.
    from bench.fetch_parse_peers import main as package_main

    package_main(sys.argv[1:])
