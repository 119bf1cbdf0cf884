"""Running ``spindle map`` as a user does, for the command-line tests of the connectors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def spindle_map(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``spindle map ARGS --workers 2 -q`` in ``cwd``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
