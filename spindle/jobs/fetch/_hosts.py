"""Everything spindle knows about one host: its limit, spacing, robots.txt and breaker.

All of it is plain synchronous state, changed only by the client between awaits:
decisions are made here, the waiting and the I/O happen in ``_client``. Nothing
here reads the time: every instant is passed in, read from the Fetcher's clock, so
the same code runs on the event loop's clock and on a test's fake one.

Spacing: each request start books the host's next free start time
(``next_at = start + interval``). The interval is the largest of the user's
``rate``, robots.txt's Crawl-delay or Request-rate, and a throttle penalty. The
penalty doubles on every 429 or 503 and shrinks by a tenth on every other
response, so the host is approached again gently (AIMD, with the concurrency
limit of :class:`~spindle.policies.limits.AdaptiveLimit`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from spindle.policies.limits import AdaptiveLimit

from ._options import FetchOptions
from ._robots import RobotsRules

#: Below this the throttle penalty is dropped: the host is considered recovered.
_PENALTY_FLOOR = 1e-3
_PENALTY_DECAY = 0.9


class Host:
    """State of one ``host:port`` for the life of a Fetcher.

    Once ``breaker`` connection errors in a row have opened the circuit, the host
    stays dead: no new request is sent to it, so only an answer to a request that
    was already in flight can close the circuit again."""

    def __init__(self, key: str, options: FetchOptions) -> None:
        self.key = key
        self.limiter = AdaptiveLimit(options.per_host_share)
        self.shards = options.host_shards
        #: Held while a request waits for its start time, so starts stay in order.
        self.gate = asyncio.Lock()
        #: Held while robots.txt is fetched, so it is fetched once.
        self.robots_lock = asyncio.Lock()
        self.robots: RobotsRules | None = None
        self._user_agent = options.user_agent
        self._rate_interval = options.min_interval
        self._robots_interval = 0.0
        self._penalty = 0.0
        self._penalty_base, self._penalty_cap = options.backoff
        self._next_at = 0.0
        self._breaker = options.breaker
        self._connection_errors = 0
        self.dead = False
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self.throttled = 0
        #: Seconds of every answered request, added up (the mean's numerator).
        self.latency_sum = 0.0

    @property
    def interval(self) -> float:
        """Seconds between two request starts to this host now (from this Fetcher:
        when several share the host, each spaces its starts that many times more)."""
        return max(self._rate_interval, self._robots_interval, self._penalty) * self.shards

    @property
    def dead_reason(self) -> str:
        return (
            f"host unreachable (circuit open after {self._breaker} consecutive connection errors)"
        )

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may start."""
        return max(0.0, self._next_at - now)

    def start(self, now: float) -> None:
        """Book this instant as a request start and the next one an interval later."""
        self.requests += 1
        self._next_at = max(self._next_at, now + self.interval)

    def hold_off(self, until: float) -> None:
        """No request starts before ``until`` (a Retry-After applies to the host)."""
        self._next_at = max(self._next_at, until)

    def set_robots(self, rules: RobotsRules, now: float) -> None:
        self.robots = rules
        self._robots_interval = rules.interval(self._user_agent)
        # The robots.txt request itself counts as the host's last start.
        self._next_at = max(self._next_at, now + self.interval)

    def on_response(self, status: int, latency: float, *, throttle: bool) -> None:
        """The host answered: reset the breaker and adjust limit and spacing."""
        self._connection_errors = 0
        self.dead = False
        self.responses += 1
        self.latency_sum += latency
        if throttle:
            self.throttled += 1
            self.limiter.decrease()
            spacing = max(self._rate_interval, self._robots_interval, self._penalty)
            self._penalty = min(self._penalty_cap, max(2.0 * spacing, self._penalty_base))
        else:
            self.limiter.increase()
            self._penalty *= _PENALTY_DECAY
            if self._penalty < _PENALTY_FLOOR:
                self._penalty = 0.0

    def on_error(self, *, connection: bool) -> bool:
        """Count a failed attempt; return True when it opened the breaker."""
        self.errors += 1
        if not connection:
            return False
        self._connection_errors += 1
        if not self.dead and self._connection_errors >= self._breaker:
            self.dead = True
            return True
        return False

    def snapshot(self) -> dict[str, Any]:
        """Figures for a dashboard; plain values only, safe to serialise."""
        return {
            "requests": self.requests,
            "responses": self.responses,
            "errors": self.errors,
            "throttled": self.throttled,
            "in_flight": self.limiter.in_flight,
            "waiting": self.limiter.waiting,
            "limit": self.limiter.limit,
            "interval": self.interval,
            "mean_latency": self.latency_sum / self.responses if self.responses else None,
            "dead": self.dead,
            "robots": None if self.robots is None else self.robots.status,
        }

    def __repr__(self) -> str:
        state = "dead" if self.dead else f"limit {self.limiter.limit}"
        return (
            f"<Host {self.key}: {state}, {self.limiter.in_flight} in flight, "
            f"{self.requests} requests, {self.errors} errors>"
        )
