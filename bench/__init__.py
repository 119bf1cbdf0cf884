"""spindle's benchmark suite; run it with ``python -m bench`` (see bench/README.md)."""

from __future__ import annotations

import compileall
from pathlib import Path

import spindle


def compile_spindle() -> None:
    """Write spindle's bytecode before anything is timed.

    An installed package has its ``.pyc`` files from the install, while a source
    checkout installed with ``pip install -e`` has none until Python writes them, and
    with ``PYTHONDONTWRITEBYTECODE`` set it never does: every command and every worker
    would compile spindle's modules again at start, a cost the peers, installed from
    wheels, never pay.
    """
    compileall.compile_dir(Path(spindle.__file__).parent, quiet=1)
