"""A memoized map: the run's shared cache against a cache per worker process.

    python -m bench.memoize [--quick] [--repeat N]

``spindle.map`` over N items (100,000; 10,000 with ``--quick``) whose function takes
1 ms of CPU and is called with one of N/10 distinct arguments (90% of the calls
repeat an earlier one, drawn at random with a fixed seed):

* ``spindle cache``: the function memoized with ``@spindle.memoize`` through the run's
  cache (``cache="64MB"``): a key computed by any worker process is there for all;
* ``lru_cache per process``: the same function under ``functools.lru_cache`` in each
  worker process (what a program does without a shared cache): each process pays its
  own misses;
* ``no cache``: every call computed (the floor both must beat).

Each measurement runs in a fresh interpreter, the runners take turns round after round,
and the table gives the median with the spread of the rounds. Target: the shared cache
at least 1.5x faster than ``lru_cache`` per process.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import spindle

from . import compile_spindle

RUNNERS = {
    "shared": "spindle cache (`@spindle.memoize`, `cache=\"64MB\"`)",
    "lru": "`functools.lru_cache` per worker process",
    "none": "no cache",
}


def work(key: int) -> int:
    """1 ms of CPU (measured by the thread's CPU clock, so the same on any machine),
    then a result that depends on ``key`` only."""
    end = time.thread_time() + 0.001
    acc = key
    while time.thread_time() < end:
        acc = (acc * 31 + 7) % 1_000_003
    return key * 2 + 1


@functools.cache
def work_lru(key: int) -> int:
    return work(key)


@spindle.memoize
def work_memoized(key: int) -> int:
    return work(key)


def work_shared(key: int) -> int:
    return int(work_memoized(key))


def keys(n: int) -> list[int]:
    rng = random.Random(1234)
    distinct = n // 10
    return [rng.randrange(distinct) for _ in range(n)]


def run_one(runner: str, n: int) -> dict[str, Any]:
    items = keys(n)
    fn = {"shared": work_shared, "lru": work_lru, "none": work}[runner]
    options: dict[str, Any] = {"cache": "64MB"} if runner == "shared" else {}
    started = time.perf_counter()
    total = sum(spindle.map(fn, items, kind="cpu", **options))
    seconds = time.perf_counter() - started
    if total != sum(work_lru(k) for k in items):  # checked after the clock
        raise RuntimeError(f"{runner}: wrong results")
    return {"seconds": seconds}


def measure(runner: str, n: int) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.memoize", "--one", runner, str(n)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        print(f"  {runner}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memoize", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 items, one round")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        runner, n = args.one
        print(json.dumps(run_one(runner, int(n))), flush=True)
        return
    compile_spindle()
    n = 10_000 if args.quick else 100_000
    repeat = args.repeat or (1 if args.quick else 3)
    load = os.getloadavg()[0]
    runs: dict[str, list[float]] = {}
    for round_ in range(repeat):
        for runner in RUNNERS:
            result = measure(runner, n)
            print(f"round {round_ + 1}: {runner}: {result}", file=sys.stderr)
            if result is not None:
                runs.setdefault(runner, []).append(result["seconds"])
    print(
        f"{repeat} rounds, medians; {n:,} items, {n // 10:,} distinct, 1 ms of CPU each; "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    lru = statistics.median(runs["lru"]) if runs.get("lru") else None
    print("| runner | seconds | items/s | vs lru_cache per process | spread |")
    print("|:--|--:|--:|--:|--:|")
    for runner, label in RUNNERS.items():
        ts = runs.get(runner)
        if not ts:
            continue
        median = statistics.median(ts)
        spread = (max(ts) - min(ts)) / median if len(ts) > 1 else 0.0
        vs = f"{lru / median:.2f}x" if lru else "—"
        print(f"| {label} | {median:.2f} | {n / median:,.0f} | {vs} | {spread:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
