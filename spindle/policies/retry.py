"""Retries with exponential backoff and full jitter.

Which failures are retried: by default every exception, except those the user marks
permanent (``permanent=``, or raising a subclass of :class:`spindle.Permanent`) and
those that cannot succeed on a second try (an input that cannot be pickled, a
malformed input line). ``retry_on=`` narrows it to some exception types; a worker
crash and a timeout count as :class:`~spindle.WorkerCrashed` and
:class:`~spindle.Timeout`.

The delay before attempt ``n + 1`` is uniform in ``[0, min(cap, base * 2**(n-1))]``
("full jitter"), which spreads retries of many items that failed together instead of
sending them back in a burst. :func:`full_jitter` is that formula, the one place it is
written: a stage's retries use it through :meth:`RetryPolicy.delay`, and the fetch
job's per-request retries call it directly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._errors import ConfigError, Permanent
from .._failure import Failure

#: Failures that the same input would hit again, whatever the number of attempts.
NEVER_RETRIED = frozenset({"Unpicklable", "MalformedInput", "Unserializable"})

#: Doublings of the backoff counted at most: ``2.0 ** 1024`` overflows, and any cap is
#: reached long before.
_MAX_DOUBLINGS = 1023


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after ``attempt`` failed attempts: uniform in
    ``[0, min(cap, base * 2**(attempt-1))]`` (exponential backoff with full jitter).

    Full jitter spreads the retries of many clients hit by the same outage, instead of
    having them all come back at the same instant. An ``attempt`` below 1 counts as 1.
    """
    doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
    return rng.uniform(0.0, min(cap, base * 2.0**doublings))


def _names(types: Sequence[type[BaseException]]) -> frozenset[str]:
    return frozenset(t.__name__ for t in types)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 0
    backoff: tuple[float, float] = (0.1, 30.0)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    permanent: tuple[type[BaseException], ...] = ()
    _rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def make(
        cls,
        retries: int = 0,
        backoff: float | tuple[float, float] = (0.1, 30.0),
        retry_on: Sequence[type[BaseException]] | type[BaseException] | None = None,
        permanent: Sequence[type[BaseException]] | type[BaseException] | None = None,
    ) -> RetryPolicy:
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {retries!r}")
        if isinstance(backoff, (int, float)):
            backoff = (float(backoff), max(30.0, float(backoff)))
        base, cap = backoff
        if base < 0 or cap < base:
            raise ConfigError(f"backoff must be (base, cap) with 0 <= base <= cap, got {backoff!r}")
        return cls(
            retries,
            (float(base), float(cap)),
            _types(retry_on, (Exception,)),
            _types(permanent, ()),
        )

    def should_retry(self, failure: Failure) -> bool:
        """Whether a failed attempt deserves another (attempts left, kind of error)."""
        if failure.attempts > self.retries or failure.error in NEVER_RETRIED:
            return False
        exc = failure.exception
        if exc is not None:
            if isinstance(exc, (Permanent, self.permanent)):
                return False
            return isinstance(exc, self.retry_on)
        # The exception could not be brought back: judge by its type name.
        if failure.error in _names(self.permanent):
            return False
        return Exception in self.retry_on or failure.error in _names(self.retry_on)

    def delay(self, attempts: int) -> float:
        """Seconds to wait before the next attempt, after ``attempts`` failed ones."""
        base, cap = self.backoff
        return full_jitter(attempts, base, cap, self._rng)


def _types(
    value: Sequence[type[BaseException]] | type[BaseException] | None,
    default: tuple[type[BaseException], ...],
) -> tuple[type[BaseException], ...]:
    if value is None:
        return default
    if isinstance(value, type):
        value = (value,)
    out = tuple(value)
    for t in out:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ConfigError(f"expected exception types, got {t!r}")
    return out
