"""Jobs of the Ray backend's tests, importable in Ray actors (the driver's ``sys.path``
travels with the stage). Only the standard library and Ray: an actor loads this module.

Some jobs *hold*: on their first attempt at one item they tell the test which process
(and node) runs them, through a Unix socket the test listens on, then block until that
process is killed. The test waits on the socket, not on a clock, and then acts: kills the
process, removes the node, presses Ctrl-C. Attempts are counted with files, since the
item runs again in another process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

#: The socket a holding job connects to, in the marks directory.
WHO = "who.sock"


def first_attempt(marks: str, x: Any) -> bool:
    """True the first time any process asks about ``x`` (a file is created atomically)."""
    try:
        os.close(os.open(os.path.join(marks, f"attempt-{x}"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def tell(marks: str, text: str) -> None:
    """Send ``text`` to the test listening on the marks directory's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(os.path.join(marks, WHO))
        sock.sendall(text.encode())


def where() -> str:
    """``"pid node-id"`` of the process running the job."""
    import ray

    return f"{os.getpid()} {ray.get_runtime_context().get_node_id()}"


def hold_forever() -> None:
    threading.Event().wait()


def double_but_hold(item: tuple[str, int, int]) -> int:
    """``(marks, x, k)``: ``2 * x``; the first attempt at ``x == k`` tells where it runs
    and holds until its process dies."""
    marks, x, k = item
    if x == k and first_attempt(marks, x):
        tell(marks, where())
        hold_forever()
    return 2 * x


def hold_line(line: str) -> int:
    """For the command line (marks from ``SPINDLE_TEST_MARKS``): ``2 * int(line)``; the
    first attempt at line 3 tells where it runs and holds."""
    x = int(line)
    marks = os.environ["SPINDLE_TEST_MARKS"]
    if x == 3 and first_attempt(marks, x):
        tell(marks, where())
        hold_forever()
    return 2 * x


def node_of(x: int) -> tuple[int, str]:
    """``(x, node id)``, a few milliseconds of work so that every actor gets some."""
    import ray

    time.sleep(0.005)
    return x, ray.get_runtime_context().get_node_id()


def spin_in_c(x: int) -> int:
    """Item 3 holds the interpreter in one call into C for a long time (a regex that
    backtracks), so that no other thread of its process runs meanwhile."""
    if x == 3:
        import re

        re.match(r"(a+)+$", "a" * 40 + "b")
    return x
