"""A Fetcher on a scripted transport and a fake clock: its decisions, with no socket
and no real time.

Every instant in these tests is exact: a request starts when the Fetcher's policy says,
on the fake clock, so a test asserts ``[0.0, 2.0, 4.0]`` rather than "at least 2 s
apart, give or take the machine's load"; a thirty-second backoff takes no time at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from spindle.jobs.fetch import Fetcher, FetchOptions
from spindle.jobs.fetch._fake import Request, ScriptedTransport, Step
from spindle.policies.clock import FakeClock

#: No robots.txt unless a test asks for it; every other option as a user gets it.
BASE = FetchOptions(robots=False)


class Scripted:
    """One fake world: a clock, a transport, and the Fetchers opened on them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.transport = ScriptedTransport(self.clock)
        self._fetchers: list[Fetcher] = []

    def script(self, url: str, *steps: Step) -> None:
        self.transport.script(url, *steps)

    async def open(self, seed: int = 0, **changes: Any) -> Fetcher:
        """An open Fetcher with ``BASE`` changed; its jitter drawn from ``Random(seed)``."""
        fields = {name: getattr(BASE, name) for name in BASE.__dataclass_fields__}
        options = FetchOptions(**{**fields, **changes})
        fetcher = Fetcher(
            options, transport=self.transport, clock=self.clock, rng=random.Random(seed)
        )
        await fetcher.__aenter__()
        self._fetchers.append(fetcher)
        return fetcher

    async def close(self) -> None:
        """Close the Fetchers; every response must have been released, and the
        transport closed by its Fetcher."""
        for fetcher in self._fetchers:
            await fetcher.aclose()
        assert self.transport.closed
        assert self.transport.unreleased() == []
        assert self.transport.in_flight == 0


def jitter(seed: int) -> random.Random:
    """A twin of the generator ``Scripted.open(seed)`` gives a Fetcher: the same draws."""
    return random.Random(seed)


def peak(requests: Iterable[Request]) -> int:
    """The most of ``requests`` that were in flight at one instant. A request ending at
    the instant another starts does not overlap it (its slot was handed over)."""
    events: list[tuple[float, int]] = []
    for request in requests:
        assert request.ended is not None, f"{request.url} never ended"
        events += [(request.at, 1), (request.ended, -1)]
    events.sort()  # at equal instants, -1 (an end) sorts before +1 (a start)
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def of(requests: Iterable[Request], prefix: str) -> list[Request]:
    """The requests whose URL starts with ``prefix``."""
    return [r for r in requests if r.url.startswith(prefix)]
