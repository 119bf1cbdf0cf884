"""robots.txt rules of one host, as parsed by protego, with how they were obtained."""

from __future__ import annotations

from dataclasses import dataclass

from protego import Protego

#: Longest robots.txt read; Google reads 500 KiB and ignores the rest, so do we.
ROBOTS_MAX_BYTES = 500 * 1024


@dataclass(frozen=True, slots=True)
class RobotsRules:
    """What robots.txt allows; ``parser is None`` means everything is allowed.

    ``status`` records how the file was obtained ("ok", "none (HTTP 404)",
    "unavailable (HTTP 503)", "unavailable (...error...)") so that a host whose
    robots.txt could not be read is visible in the stats rather than silently
    treated as open.
    """

    parser: Protego | None
    status: str

    @classmethod
    def parse(cls, body: bytes) -> RobotsRules:
        return cls(Protego.parse(body.decode("utf-8", errors="replace")), "ok")

    @classmethod
    def allow_all(cls, status: str) -> RobotsRules:
        return cls(None, status)

    def allows(self, url: str, user_agent: str) -> bool:
        return self.parser is None or self.parser.can_fetch(url, user_agent)

    def interval(self, user_agent: str) -> float:
        """Seconds between request starts asked for by Crawl-delay or Request-rate."""
        if self.parser is None:
            return 0.0
        delay = self.parser.crawl_delay(user_agent) or 0.0
        rate = self.parser.request_rate(user_agent)
        if rate is not None and rate.requests > 0:
            delay = max(delay, rate.seconds / rate.requests)
        return float(delay)
