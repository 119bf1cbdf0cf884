"""Jobs of the observe tests that use the run's cache (module level, so that worker
processes import them)."""

from __future__ import annotations

#: Distinct keys the jobs look up: item ``x`` looks up key ``x % KEYS``.
KEYS = 10


def cached_square(x: int) -> int:
    """``(x % KEYS) ** 2``, from the run's cache: one ``get_or_set`` a call."""
    import spindle

    key = x % KEYS
    return int(spindle.cache().get_or_set(f"square:{key}", lambda: key * key))
