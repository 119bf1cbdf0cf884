"""Jobs of the ``spindle map`` commands that the fault tests run as subprocesses
(importable as ``tests.connectors.chaos_jobs`` with the repository's root as the working
directory)."""

from __future__ import annotations

import time
from typing import Any

#: Seconds each job computes: enough for a run of 20,000 messages on two workers to last
#: a few seconds, so that processes can be killed in the middle of it.
WORK = 0.0002


def slow_double(x: dict[str, Any]) -> int:
    """``x["n"] * 2``, after computing for :data:`WORK` seconds."""
    end = time.perf_counter() + WORK
    while time.perf_counter() < end:
        pass
    return int(x["n"]) * 2
