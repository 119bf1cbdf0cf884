"""HTTP fetching for spindle: many URLs from one event loop, fast and polite per host.

A :class:`Fetcher` owns one HTTP client (its keep-alive connections) and all
per-host state, so the engine runs one Fetcher per worker process and routes each
host to one worker::

    async with Fetcher(FetchOptions(per_host=4, rate=2.0)) as fetcher:
        result = await fetcher.fetch("https://example.com/")
        record = result.to_record()

What counts as a failure. Every URL ends either as a :class:`FetchResult` or as a
:class:`FetchFailed` with a short ``reason``:

- Any HTTP answer that is not retried is a *result*, whatever its status: a 404
  or a 410 says something true about the URL, and the record keeps the status
  so the user decides: check ``result.status`` before trusting the body.
- 429, 500, 502, 503 and 504, connection errors and timeouts are retried
  (``retries`` times, exponential backoff with full jitter, at least
  ``Retry-After``); when the retries run out the URL *fails*.
- Bad URLs ("invalid URL: ..."), bodies over ``max_bytes`` ("too large: ..."),
  redirect loops ("redirect loop: ..."), URLs disallowed by robots.txt
  ("disallowed by robots.txt") and hosts whose circuit breaker is open
  ("host unreachable (...)") fail at once, without retries.

Politeness is per ``host:port``: a concurrency limit that halves on 429/503 and
grows back slowly (AIMD), spacing between request starts (``rate``, robots.txt
Crawl-delay, and a penalty after 429/503), robots.txt fetched once per host, and
a breaker that gives up on a host after consecutive connection errors.

In a pipeline, :func:`fetch` is the stage that does all this on every core: each
worker process owns one Fetcher and every URL of a host goes to the same worker::

    pipeline = spindle.Pipeline([fetch(per_host=4, response=True), spindle.cpu(parse)])
"""

from ._client import Fetcher
from ._errors import FetchFailed
from ._limits import raise_nofile_limit
from ._options import DEFAULT_USER_AGENT, FetchOptions
from ._response import FetchResult, Response
from ._stage import fetch

__all__ = [
    "DEFAULT_USER_AGENT",
    "FetchFailed",
    "FetchOptions",
    "FetchResult",
    "Fetcher",
    "Response",
    "fetch",
    "raise_nofile_limit",
]
