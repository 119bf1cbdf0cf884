"""Jobs for the journaled command-line tests, and the driver of the I/O crash test.

The functions are module level so that worker processes import them. ``counted`` appends
each input to the file named by ``SPINDLE_TEST_CALLS``: the tests count the calls there,
across runs and processes (``O_APPEND`` writes of one short line do not interleave).

    python journal_jobs.py INPUT OUTPUT JOURNAL

runs ``Pipeline([spindle.io(parse), spindle.cpu(square)]).run(lines, journal=JOURNAL,
output=OUTPUT)`` over the lines of INPUT, taking every result as a caller of the Python
API would; the crash test kills it and runs it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: Inputs whose job fails, in the crash tests.
FAIL_EVERY = 997


def _note_call(line: str) -> None:
    path = os.environ.get("SPINDLE_TEST_CALLS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


def counted(line: str) -> int:
    """Twice the number; fails on multiples of 7 unless the file ``SPINDLE_TEST_FIXED`` exists."""
    _note_call(line)
    n = int(line)
    fixed = os.environ.get("SPINDLE_TEST_FIXED")
    if n % 7 == 0 and not (fixed and os.path.exists(fixed)):
        raise ValueError(f"{n} is a multiple of 7")
    return 2 * n


def counted_record(record: dict[str, Any]) -> dict[str, Any]:
    """For JSON input: the record's value doubled."""
    _note_call(str(record.get("id")))
    return {"id": record["id"], "double": 2 * record["v"]}


def stop_parent_at_500(line: str) -> str:
    """At item 500, once (the file ``SPINDLE_TEST_STOPPED`` marks it), sends the signal
    named by ``SPINDLE_TEST_SIGNAL`` (default SIGTERM) to the spindle process and waits
    for the signal that stops this worker: the run stops with item 500 in flight."""
    _note_call(line)
    marker = os.environ["SPINDLE_TEST_STOPPED"]
    if line == "500" and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getppid(), signal.Signals[os.environ.get("SPINDLE_TEST_SIGNAL", "SIGTERM")])
        signal.pause()
    return line


def triple(line: str) -> int:
    return 3 * int(line)


def several(line: str) -> Iterator[str]:
    yield line
    yield line


def square(n: int) -> int:
    """The crash tests' job: n squared, failing on multiples of FAIL_EVERY."""
    if n % FAIL_EVERY == 0:
        raise ValueError(f"{n} is a multiple of {FAIL_EVERY}")
    return n * n


def square_line(line: str) -> int:
    return square(int(line))


def square_or_hold(line: str) -> int:
    """``square_line``, except that the input named by ``SPINDLE_TEST_HOLD`` never
    returns: the run cannot end by itself, and the test kills it."""
    if line == os.environ.get("SPINDLE_TEST_HOLD"):
        threading.Event().wait()
    return square_line(line)


async def parse(line: str) -> int:
    await asyncio.sleep(0)
    return int(line)


def main(argv: list[str]) -> None:
    import spindle
    from spindle.connectors import read_items

    input_path, output, journal = argv
    pipeline = spindle.Pipeline(
        [spindle.io(parse, concurrency=200), spindle.cpu(square, workers=2)],
        ordered=False,
        on_error="yield",
    )
    items = read_items(input_path, "text")
    try:  # the Python API's resumable run: the caller takes the results as well
        results = pipeline.run(items, journal=journal, output=output)
        taken = sum(1 for _ in results)
    finally:
        items.close()
    outcome = results.outcome
    assert outcome is not None
    print(f"took {taken}, done {outcome.done} failed {outcome.failed}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
