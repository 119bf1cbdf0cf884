"""The knobs of a :class:`~spindle.jobs.fetch.Fetcher`, checked once when built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spindle._errors import ConfigError

DEFAULT_USER_AGENT = "spindle/0.1 (+https://pypi.org/project/spindle)"


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How politely and how hard one :class:`Fetcher` fetches.

    Frozen so that one set of options can be shared by every worker process and
    hashed or compared without surprises.

    Attributes:
        concurrency: requests in flight at once for the whole Fetcher.
        per_host: requests in flight at once to one host (``host:port``). This is
            a ceiling: after a 429 or 503 the host's limit halves and grows back
            by one every ``limit`` successful responses.
        rate: requests per second to one host, as fixed spacing between request
            starts; ``None`` for no spacing beyond robots.txt's Crawl-delay.
        robots: obey robots.txt (Disallow, Crawl-delay and Request-rate).
        user_agent: sent with every request and matched against robots.txt.
        retries: extra attempts after the first for a retryable failure
            (connection error, timeout, 429, 500, 502, 503, 504).
        backoff: ``(base, cap)`` in seconds of the exponential backoff with full
            jitter. A ``Retry-After`` longer than ``cap`` is not waited for: the
            URL fails and the reason says so.
        breaker: consecutive connection errors (refused, reset, dropped
            mid-response, connect timeout) after which a host is given up for
            the life of the Fetcher. Read timeouts do not count: a slow host is
            not a dead one. Any HTTP answer resets the count.
        connect_timeout: seconds to resolve, connect and finish the TLS handshake.
        read_timeout: seconds of silence allowed while reading a response.
        total_timeout: seconds for one attempt from connect to the last byte.
        max_bytes: largest body accepted (after decompression).
        max_redirects: redirects followed before giving up.
        save_dir: when set, bodies are streamed to files in this directory
            instead of being kept in memory.
        host_shards: Fetchers (worker processes) that share each host. Each takes
            its share of ``per_host`` (``per_host // host_shards``, at least 1) and
            spaces its request starts ``host_shards`` times further apart, so the
            host sees the same totals. Set by the fetch stage; 1 in a lone Fetcher.
    """

    concurrency: int = 100
    per_host: int = 8
    rate: float | None = None
    robots: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    retries: int = 3
    backoff: tuple[float, float] = (0.5, 30.0)
    breaker: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    max_bytes: int = 10 * 2**20
    max_redirects: int = 10
    save_dir: str | None = None
    host_shards: int = 1

    def __post_init__(self) -> None:
        _at_least("concurrency", self.concurrency, 1)
        _at_least("per_host", self.per_host, 1)
        _at_least("host_shards", self.host_shards, 1)
        _at_least("retries", self.retries, 0)
        _at_least("breaker", self.breaker, 1)
        _at_least("max_bytes", self.max_bytes, 0)
        _at_least("max_redirects", self.max_redirects, 0)
        if self.rate is not None:
            _positive("rate", self.rate, "requests per second")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            _positive(name, getattr(self, name), "seconds")
        if len(self.backoff) != 2:
            raise ConfigError(f"backoff must be (base, cap) in seconds, got {self.backoff!r}")
        base, cap = self.backoff
        if not (math.isfinite(base) and math.isfinite(cap) and 0 <= base <= cap):
            raise ConfigError(
                f"backoff must be (base, cap) with 0 <= base <= cap, got {self.backoff!r}"
            )
        if not self.user_agent or "\n" in self.user_agent or "\r" in self.user_agent:
            raise ConfigError("user_agent must be a non-empty single line")

    @property
    def per_host_share(self) -> int:
        """Requests in flight to one host from this Fetcher (see ``host_shards``)."""
        return max(1, self.per_host // self.host_shards)

    @property
    def min_interval(self) -> float:
        """Seconds between two request starts to one host required by ``rate``."""
        return 0.0 if self.rate is None else 1.0 / self.rate


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _positive(name: str, value: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ConfigError(f"{name} must be a positive number of {unit}, got {value!r}")
