"""How numbers read in the display, the report and the log lines, and how a report's
tables line up."""

from __future__ import annotations

import math

__all__ = ["count", "duration", "latency", "percent", "rate", "size", "table"]


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


def size(n: float) -> str:
    """Bytes in SI units, three significant digits, as a cache's size is written:
    ``950 B``, ``1.58 KB``, ``16 MB``."""
    if not math.isfinite(n) or n <= 0:
        return "0 B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 999.5:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.3g} TB" if n < 999.5 else f"{n:,.0f} TB"


def percent(fraction: float) -> str:
    """A fraction of 1 as a percentage: ``49.8%``."""
    if not math.isfinite(fraction):
        return "-"
    return f"{100.0 * fraction:.1f}%"


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


def table(rows: list[list[str]], right: set[int]) -> list[str]:
    """``rows`` (the first one a header) as lines of aligned columns, indented by two
    spaces; the columns numbered in ``right`` are aligned right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines
