"""The Fetcher: one HTTP client, many hosts, every URL ending as a result or a failure.

One ``fetch(url)``::

    url ─ parse (bad URL: fail, no I/O)
     │
     ▼  for each hop of the redirect chain
    robots.txt of the hop's host (fetched once, under the host's robots lock)
     │
     ▼  for each attempt
    breaker open? ─ yes ─▶ fail fast
     │
    per-host slot (AIMD limit) ─▶ gate: wait for the host's next start time
     ─▶ global slot ─▶ GET (no automatic redirects) ─▶ read or save the body
     │
     ├─ 2xx/4xx/...   ─▶ FetchResult
     ├─ 3xx+Location  ─▶ next hop (loop and limit checked)
     ├─ retryable     ─▶ release every slot, back off (≥ Retry-After), next attempt
     └─ permanent     ─▶ FetchFailed

Redirects are followed here so that every hop goes through its own host's
robots.txt, limits, spacing and breaker. Each attempt decides what happened in plain
code (``_Outcome``); waiting for a retry happens outside every slot, so a backing-off
request never holds capacity another host could use.

Two seams keep these decisions testable without a network or real time. The HTTP
exchange goes through a :class:`~._transport.Transport`: by default :mod:`._http`'s
client (why not aiohttp's: see there), in tests a scripted one (:mod:`._fake`). Every
instant is read from, and every wait made on, a :class:`~spindle.policies.clock.Clock`:
by default the event loop's, in tests a :class:`~spindle.policies.clock.FakeClock`. The
Fetcher keeps the clock's ``now`` and ``sleep`` as attributes, so the default costs what
``loop.time()`` and ``asyncio.sleep`` cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

from yarl import URL

from spindle.policies.clock import Clock, SystemClock
from spindle.policies.limits import AdaptiveLimit
from spindle.policies.retry import full_jitter

from ._body import Saved, TooLarge, read_body, save_body
from ._errors import FetchFailed
from ._hosts import Host
from ._http import HttpClient
from ._options import FetchOptions
from ._response import FetchResult
from ._retry import REDIRECT_STATUSES, RETRY_STATUSES, THROTTLE_STATUSES, parse_retry_after
from ._robots import ROBOTS_MAX_BYTES, RobotsRules
from ._transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    HttpError,
    ReadTimeout,
    TotalTimeout,
    Transport,
    TransportResponse,
)
from ._urls import BadURL, host_key, parse_url

#: Seconds a resolved address is reused: one lookup per host per five minutes.
_DNS_TTL = 300


@dataclass(frozen=True, slots=True)
class _Done:
    final_url: str
    status: int
    headers: dict[str, str]
    body: bytes | None
    saved: Saved | None


@dataclass(frozen=True, slots=True)
class _Redirect:
    location: str


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    retry_after: float | None = None
    cause: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Fail:
    reason: str
    cause: BaseException | None = None
    sent: bool = True


_Outcome = _Done | _Redirect | _Retry | _Fail


class Fetcher:
    """Fetches many URLs from one event loop, politely per host.

    Use it as an async context manager: entering opens the connection pool,
    leaving closes every connection. All per-host state (limits, spacing,
    robots.txt, breaker) lives here, so URLs of one host should go to one Fetcher.

    Arguments:
        options: how politely and how hard to fetch.
        transport: what sends the requests (a :class:`~._transport.Transport`);
            by default spindle's HTTP/1.1 client, made from ``options`` when the
            Fetcher opens. The Fetcher closes the transport when it closes.
        clock: what every instant is read from and every wait (backoff, spacing,
            Retry-After, Crawl-delay) made on; by default the event loop's clock.
        rng: the random generator of the backoff's jitter (seed one to make the
            delays repeatable).
    """

    def __init__(
        self,
        options: FetchOptions | None = None,
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or FetchOptions()
        self._transport = transport
        self._clock = clock
        self._client: Transport | None = None
        self._slots = AdaptiveLimit(self.options.concurrency)  # never adapted: a fair FIFO
        #: The clock's, looked up once when the Fetcher opens: every request reads them.
        self._now: Callable[[], float]
        self._sleep: Callable[[float], Awaitable[None]]
        self._hosts: dict[str, Host] = {}
        self._rng = rng if rng is not None else random.Random()
        self._in_flight = 0
        self._done = 0
        self._failed = 0

    async def __aenter__(self) -> Self:
        if self._client is not None:
            raise RuntimeError("this Fetcher is already open")
        clock = self._clock if self._clock is not None else SystemClock(asyncio.get_running_loop())
        self._now = clock.now
        self._sleep = clock.sleep
        options = self.options
        if options.save_dir is not None:
            await asyncio.to_thread(os.makedirs, options.save_dir, exist_ok=True)
        if self._transport is not None:
            self._client = self._transport
            return self
        # No cookies are kept: a crawl's would grow without bound and leak between hosts.
        self._client = HttpClient(
            user_agent=options.user_agent,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_idle=options.concurrency,
            dns_ttl=_DNS_TTL,
            total_message=f"timed out (total_timeout {options.total_timeout:g} s)",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; waits until the sockets are closed."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- public ---------------------------------------------------------------

    async def fetch(self, url: str) -> FetchResult:
        """Fetch one URL, following redirects; raise :class:`FetchFailed` if it fails.

        Any HTTP answer that is not retried is a result, whatever its status
        (a 404 is a fact about the URL, not a failure of the fetch).
        """
        client = self._client
        if client is None:
            raise RuntimeError("the Fetcher is not open: use `async with Fetcher(...) as f:`")
        began = self._now()
        self._in_flight += 1
        try:
            result = await self._fetch(client, url, began)
        except FetchFailed:
            self._failed += 1
            raise
        finally:
            self._in_flight -= 1
        self._done += 1
        return result

    def host_stats(self) -> dict[str, dict[str, Any]]:
        """Per-host figures (requests, errors, limit, mean latency...) by ``host:port``."""
        return {key: host.snapshot() for key, host in self._hosts.items()}

    def hosts(self) -> list[Host]:
        """Every host this Fetcher has contacted (its live state: read, do not change)."""
        return list(self._hosts.values())

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": self._in_flight,
            "done": self._done,
            "failed": self._failed,
            "hosts": len(self._hosts),
            "dead_hosts": sum(1 for host in self._hosts.values() if host.dead),
        }

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return (
            f"<Fetcher {state}: {_n(self._in_flight)} in flight, {_n(len(self._hosts))} hosts, "
            f"{_n(self._done)} done, {_n(self._failed)} failed>"
        )

    # -- one URL --------------------------------------------------------------

    async def _fetch(self, client: Transport, url: str, began: float) -> FetchResult:
        try:
            target = parse_url(url)
        except BadURL as exc:
            raise FetchFailed(f"invalid URL: {exc}", url) from None
        chain = [str(target)]
        while True:
            host = self._host(target)
            if self.options.robots and not host.dead:
                rules = await self._robots(client, host, target)
                if not rules.allows(str(target), self.options.user_agent):
                    raise FetchFailed("disallowed by robots.txt", url)
            outcome, attempts = await self._attempts(client, host, target, url)
            if isinstance(outcome, _Done):
                saved = outcome.saved
                return FetchResult(
                    url=url,
                    final_url=outcome.final_url,
                    status=outcome.status,
                    headers=outcome.headers,
                    elapsed=self._now() - began,
                    attempts=attempts,
                    body=outcome.body,
                    path=saved.path if saved else None,
                    size=saved.size if saved else None,
                    sha256=saved.sha256 if saved else None,
                )
            location = outcome.location
            if location in chain:
                hops = " -> ".join([*chain, location])
                raise FetchFailed(f"redirect loop: {hops}", url, attempts)
            if len(chain) > self.options.max_redirects:
                raise FetchFailed(
                    f"too many redirects (more than max_redirects {self.options.max_redirects})",
                    url,
                    attempts,
                )
            try:
                target = parse_url(location)
            except BadURL as exc:
                raise FetchFailed(f"invalid redirect target: {exc}", url, attempts) from None
            chain.append(location)

    async def _attempts(
        self, client: Transport, host: Host, target: URL, url: str
    ) -> tuple[_Done | _Redirect, int]:
        """Try one hop until it answers, fails for good, or runs out of retries."""
        base, cap = self.options.backoff
        attempt = 0
        while True:
            if host.dead:
                raise FetchFailed(host.dead_reason, url, attempt)
            attempt += 1
            outcome = await self._attempt(client, host, target, url)
            if isinstance(outcome, _Done | _Redirect):
                return outcome, attempt
            if isinstance(outcome, _Fail):
                made = attempt if outcome.sent else attempt - 1
                raise FetchFailed(outcome.reason, url, made) from outcome.cause
            if host.dead:
                raise FetchFailed(host.dead_reason, url, attempt) from outcome.cause
            if attempt > self.options.retries:
                raise FetchFailed(
                    f"{outcome.reason} (after {attempt} attempts)", url, attempt
                ) from outcome.cause
            wait = full_jitter(attempt, base, cap, self._rng)
            if outcome.retry_after is not None:
                if outcome.retry_after > cap:
                    raise FetchFailed(
                        f"{outcome.reason}: Retry-After {outcome.retry_after:g} s exceeds "
                        f"the backoff cap of {cap:g} s (raise FetchOptions.backoff to wait)",
                        url,
                        attempt,
                    )
                wait = max(wait, outcome.retry_after)
                # The server asked the whole host to wait, not just this request.
                host.hold_off(self._now() + outcome.retry_after)
            await self._sleep(wait)

    async def _attempt(self, client: Transport, host: Host, target: URL, url: str) -> _Outcome:
        """One request: classify whatever happens into an outcome; never raises
        for a network or HTTP problem."""
        await self._enter_turn(host)
        try:
            if host.dead:  # the breaker opened while this request waited its turn
                return _Fail(host.dead_reason, sent=False)
            started = self._now()
            total = self.options.total_timeout
            try:
                response = await client.get(target, None if total is None else started + total)
                try:
                    return await self._answer(response, host, url, started)
                finally:
                    response.release()
            except HttpError as exc:
                return self._client_error(host, exc)
        finally:
            self._leave_turn(host)

    async def _answer(
        self, response: TransportResponse, host: Host, url: str, started: float
    ) -> _Outcome:
        """What an answer means: a retry, a redirect, or a result with its body."""
        now = self._now
        options = self.options
        status = response.status
        headers = response.headers
        if status in RETRY_STATUSES:
            host.on_response(status, now() - started, throttle=status in THROTTLE_STATUSES)
            return _Retry(
                f"HTTP {status} {response.reason or ''}".rstrip(),
                parse_retry_after(headers.get("retry-after")),
            )
        location = headers.get("location")
        if status in REDIRECT_STATUSES and location:
            host.on_response(status, now() - started, throttle=False)
            try:
                return _Redirect(str(response.url.join(URL(location))))
            except ValueError as exc:
                return _Fail(f"invalid redirect target: {location!r} ({exc})", exc)
        body: bytes | None = None
        saved: Saved | None = None
        try:
            if options.save_dir is None:
                body = await read_body(response, options.max_bytes)
            else:
                saved = await save_body(
                    response, options.max_bytes, options.save_dir, _file_stem(url)
                )
        except TooLarge as exc:
            # release() drops the connection rather than drain the rest of the body.
            host.on_response(status, now() - started, throttle=False)
            return _Fail(str(exc))
        except HttpError:
            raise
        except OSError as exc:
            return _Fail(f"cannot save to {options.save_dir}: {exc}", exc)
        host.on_response(status, now() - started, throttle=False)
        return _Done(str(response.url), status, headers, body, saved)

    def _client_error(self, host: Host, exc: HttpError) -> _Outcome:
        """No usable answer. A host that could not be reached (which counts toward its
        breaker) or that timed out is tried again; any other failure (a TLS error, a
        malformed answer) would fail the same way again, so it fails at once."""
        connection = isinstance(exc, ConnectTimeout | ConnectFailed | ConnectionLost)
        host.on_error(connection=connection)
        if connection or isinstance(exc, ReadTimeout | TotalTimeout):
            return _Retry(str(exc), None, exc)
        return _Fail(str(exc), exc)

    async def _enter_turn(self, host: Host) -> None:
        """Take a per-host slot and a global slot, starting no earlier than the host's
        spacing allows; :meth:`_leave_turn` gives them back.

        The usual case (slots free, nobody waiting for the host's next start, no spacing
        due) takes both without a single await: this runs for every request.
        """
        limiter = host.limiter
        if not limiter.try_acquire():
            await limiter.acquire()
        try:
            now = self._now()
            if not host.gate.locked() and host.delay(now) <= 0 and self._slots.try_acquire():
                host.start(now)
                return
            await self._wait_turn(host)
        except BaseException:
            limiter.release()
            raise

    async def _wait_turn(self, host: Host) -> None:
        now = self._now
        async with host.gate:
            # The start time can move while we sleep (a Retry-After), so look again.
            while (delay := host.delay(now())) > 0:
                await self._sleep(delay)
            await self._slots.acquire()
            host.start(now())

    def _leave_turn(self, host: Host) -> None:
        self._slots.release()
        host.limiter.release()

    # -- hosts and robots.txt ---------------------------------------------------

    def _host(self, target: URL) -> Host:
        key = host_key(target)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = Host(key, self.options)
        return host

    async def _robots(self, client: Transport, host: Host, target: URL) -> RobotsRules:
        if host.robots is None:
            async with host.robots_lock:
                if host.robots is None:
                    rules = await self._load_robots(client, host, target)
                    host.set_robots(rules, self._now())
        assert host.robots is not None
        return host.robots

    async def _load_robots(self, client: Transport, host: Host, target: URL) -> RobotsRules:
        """robots.txt of the host: 4xx means no rules; 5xx or no answer also
        means no rules, but the status says the file could not be read."""
        await self._enter_turn(host)
        try:
            started = self._now()
            total = self.options.total_timeout
            try:
                response = await client.get(
                    target.join(URL("/robots.txt")), None if total is None else started + total
                )
                try:
                    status = response.status
                    if 200 <= status < 300:
                        body = await read_body(response, ROBOTS_MAX_BYTES, truncate=True)
                        rules = RobotsRules.parse(body)
                    elif 400 <= status < 500:
                        rules = RobotsRules.allow_all(f"none (HTTP {status})")
                    else:
                        rules = RobotsRules.allow_all(f"unavailable (HTTP {status})")
                finally:
                    response.release()
            except HttpError as exc:
                host.on_error(connection=False)
                return RobotsRules.allow_all(f"unavailable ({type(exc).__name__}: {exc})")
            host.on_response(status, self._now() - started, throttle=False)
            return rules
        finally:
            self._leave_turn(host)


def _n(count: int) -> str:
    """``1 024``: thousands set apart by a space, as in every spindle figure."""
    return f"{count:,}"


def _file_stem(url: str) -> str:
    """Saved files are named after the URL as given, so a rerun finds the same file."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
