"""What is retried, and what a server's Retry-After asks for.

The backoff itself is :func:`spindle.policies.retry.full_jitter`, the formula a
stage's retries use too; the Fetcher waits the longer of it and the Retry-After.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses worth another attempt: the server is overloaded or hiccupped.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Statuses that mean "slow down": they shrink the host's limit and widen its spacing.
THROTTLE_STATUSES = frozenset({429, 503})

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date).

    An unparsable value is ignored (``None``) rather than failing the fetch: the
    header is advice, and the backoff still applies.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
