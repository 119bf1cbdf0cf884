"""How numbers read in the display, the report and the log lines."""

from __future__ import annotations

import math

__all__ = ["count", "duration", "latency", "rate"]


def count(n: float) -> str:
    """``1,234,567``."""
    return f"{n:,.0f}"


def rate(per_second: float) -> str:
    """Items a second, three significant digits: ``12.3``, ``4,560``, ``1.23M``."""
    if not math.isfinite(per_second) or per_second <= 0:
        return "0"
    if per_second >= 1e6:
        return f"{per_second / 1e6:.3g}M"
    if per_second >= 100:
        return f"{per_second:,.0f}"
    return f"{per_second:.3g}"


def latency(seconds: float) -> str:
    """A latency in the unit that reads best: ``850 µs``, ``12.3 ms``, ``1.20 s``."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60.0:
        return f"{seconds:.3g} s"
    return duration(seconds)


def duration(seconds: float) -> str:
    """An elapsed time: ``12.3 s``, ``4:05``, ``1:02:03``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
