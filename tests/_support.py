"""Helpers shared by the test packages: a counted lazy input, open descriptors and a
headless browser."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator


def open_fds() -> dict[str, str]:
    """This process's open descriptors and what they point at (fd -> /proc target)."""
    found: dict[str, str] = {}
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):  # pragma: no cover - not Linux
        return found
    for fd in os.listdir(fd_dir):
        try:
            found[fd] = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
    return found


def chromium() -> str | None:
    """Debian's Chromium (or SPINDLE_CHROMIUM), if installed."""
    return os.environ.get("SPINDLE_CHROMIUM") or shutil.which("chromium")


#: Flags for headless Chromium on a machine without a screen, a sandbox or internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


class Counted:
    """A lazy input (a generator, not a collection) of ``n`` items, or endless with
    ``None``, that counts the items drawn from it: how far a run read ahead of its
    results."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.drawn = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n) if self.n is not None else itertools.count():
            self.drawn += 1
            yield i
