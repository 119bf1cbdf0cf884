"""Example jobs for ``spindle map``.

spindle map examples/jobs.py:collatz examples/numbers.txt -o collatz.jsonl
"""

from __future__ import annotations

import asyncio


def collatz(line: str) -> dict[str, int]:
    """Steps of the Collatz sequence from n down to 1, and the highest value reached."""
    n = int(line)
    steps, peak = 0, n
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        peak = max(peak, n)
        steps += 1
    return {"steps": steps, "peak": peak}


async def slow_echo(line: str) -> str:
    """An I/O-like job: waits 10 ms, then returns its input (try --kind io)."""
    await asyncio.sleep(0.01)
    return line
