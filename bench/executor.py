"""spindle.Executor and spindle.Pool against the executors they replace.

    python -m bench.executor [--quick] [--repeat N] [--only submit,map,memory]

Each measurement runs in a fresh interpreter (``python -m bench.executor --one ...``),
its imports before the clock; the runners take turns, round after round, and the table
gives each row's median with the spread of its runs. Workloads:

* submit: N ``submit``s of a no-op, then every result collected (``f.result()``), as a
  program that fans out many small calls does;
* map: ``map(tiny, range(N))`` in order, the tiny job of ``python -m bench``;
* memory: ``Executor.map(noop, <generator of N items>, buffersize=1000)``, results
  discarded: the parent's peak resident memory, which must stay flat.

Peers: ``concurrent.futures.ProcessPoolExecutor``, loky's reusable executor and pebble's
``ProcessPool`` (when installed: ``pip install -e '.[bench]'``), and
``multiprocessing.Pool.map`` for the map workload. A peer too slow for the full size
runs a tenth of it, said in its row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import compile_spindle
from .work import tiny
from .work import tiny_cheap as noop

#: workload -> (full size, quick size)
SIZES = {
    "submit": (1_000_000, 100_000),
    "map": (1_000_000, 100_000),
    "memory": (10_000_000, 1_000_000),
}
#: Runners too slow for the full size of a workload run a tenth of it.
SMALLER = {("submit", "ppe"), ("submit", "pebble"), ("submit", "loky")}
WORKERS = os.cpu_count() or 1
BUFFER = 1000
#: ``chunksize`` of the chunked ``Executor.map`` rows.
CHUNK = 2000


def _submit_all(submit: Callable[..., Any], n: int) -> int:
    futures = [submit(noop, i) for i in range(n)]
    return sum(1 for f in futures if f.result() is not None or True)


def run_one(workload: str, runner: str, n: int) -> dict[str, Any]:
    """One measurement in this process: seconds and the parent's peak memory."""
    started: float
    if workload == "submit":
        if runner == "spindle":
            import spindle

            with spindle.Executor(WORKERS) as ex:
                ex.submit(noop, 0).result()  # the workers are up before the clock
                started = time.perf_counter()
                done = _submit_all(ex.submit, n)
        elif runner == "ppe":
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(WORKERS) as ex:
                ex.submit(noop, 0).result()
                started = time.perf_counter()
                done = _submit_all(ex.submit, n)
        elif runner == "loky":
            from loky import get_reusable_executor

            ex = get_reusable_executor(WORKERS)
            ex.submit(noop, 0).result()
            started = time.perf_counter()
            done = _submit_all(ex.submit, n)
            ex.shutdown(wait=True)
        elif runner == "pebble":
            from pebble import ProcessPool

            with ProcessPool(WORKERS) as pool:
                pool.schedule(noop, (0,)).result()
                started = time.perf_counter()
                done = _submit_all(lambda fn, x: pool.schedule(fn, (x,)), n)
        else:
            raise ValueError(runner)
    elif workload == "map":
        if runner == "spindle":
            import spindle

            with spindle.Executor(WORKERS) as ex:
                ex.submit(noop, 0).result()
                started = time.perf_counter()
                done = sum(1 for _ in ex.map(tiny, range(n)))
        elif runner == "spindle-chunked":
            import spindle

            with spindle.Executor(WORKERS) as ex:
                ex.submit(noop, 0).result()
                started = time.perf_counter()
                done = sum(1 for _ in ex.map(tiny, range(n), chunksize=CHUNK))
        elif runner == "spindle-pool":
            import spindle

            with spindle.Pool(WORKERS) as pool:
                pool.apply(noop, (0,))
                started = time.perf_counter()
                done = len(pool.map(tiny, range(n)))
        elif runner == "pool":
            import multiprocessing

            with multiprocessing.Pool(WORKERS) as pool:
                pool.apply(noop, (0,))
                started = time.perf_counter()
                done = len(pool.map(tiny, range(n)))
        elif runner == "ppe":
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(WORKERS) as ex:
                ex.submit(noop, 0).result()
                started = time.perf_counter()
                done = sum(1 for _ in ex.map(tiny, range(n), chunksize=CHUNK))
        else:
            raise ValueError(runner)
    elif workload == "memory" and runner == "spindle":
        import spindle

        with spindle.Executor(WORKERS) as ex:
            ex.submit(noop, 0).result()
            started = time.perf_counter()
            done = sum(1 for _ in ex.map(noop, (i for i in range(n)), buffersize=BUFFER))
    else:
        raise ValueError(f"{workload} {runner}")
    seconds = time.perf_counter() - started
    if done != n:
        raise RuntimeError(f"{runner} gave {done} results of {n}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak}


RUNNERS: dict[str, list[tuple[str, str]]] = {
    "submit": [
        ("spindle", "`spindle.Executor().submit`"),
        ("ppe", "`ProcessPoolExecutor().submit`"),
        ("loky", "loky `get_reusable_executor().submit`"),
        ("pebble", "pebble `ProcessPool().schedule`"),
    ],
    "map": [
        ("spindle", "`spindle.Executor().map`"),
        ("spindle-chunked", f"`spindle.Executor().map` chunksize={CHUNK}"),
        ("spindle-pool", "`spindle.Pool().map`"),
        ("pool", "`multiprocessing.Pool().map`"),
        ("ppe", f"`ProcessPoolExecutor().map` chunksize={CHUNK}"),
    ],
    "memory": [("spindle", f"`spindle.Executor().map` buffersize={BUFFER}")],
}


def available(runner: str) -> bool:
    module = {"loky": "loky", "pebble": "pebble"}.get(runner)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def measure(workload: str, runner: str, n: int) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.executor", "--one", workload, runner, str(n)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        print(f"  {workload} {runner}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.executor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, one run each")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated workloads (submit, map, memory)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        workload, runner, n = args.one
        print(json.dumps(run_one(workload, runner, int(n))), flush=True)
        return
    only = list(RUNNERS) if args.only is None else [w.strip() for w in args.only.split(",")]
    compile_spindle()
    repeat = args.repeat or (1 if args.quick else 3)
    load = os.getloadavg()[0]
    plan = [
        (workload, runner, label)
        for workload in only
        for runner, label in RUNNERS[workload]
        if available(runner)
    ]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for round_ in range(repeat):
        for workload, runner, _ in plan:
            full, quick = SIZES[workload]
            n = quick if args.quick else full
            if (workload, runner) in SMALLER:
                n //= 10
            sizes[workload, runner] = n
            result = measure(workload, runner, n)
            print(f"round {round_ + 1}: {workload} {runner} n={n:,}: {result}", file=sys.stderr)
            if result is not None:
                runs.setdefault((workload, runner), []).append(result)
    print(
        f"{repeat} rounds, medians; {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    for workload in only:
        rows = [(r, label) for w, r, label in plan if w == workload and (w, r) in runs]
        if not rows:
            continue
        rate = {
            r: statistics.median(sizes[workload, r] / x["seconds"] for x in runs[workload, r])
            for r, _ in rows
        }
        best_peer = max((v for r, v in rate.items() if not r.startswith("spindle")), default=None)
        print(f"#### {workload}\n")
        print("| runner | N | items/s | vs best peer | seconds | parent peak MB | spread | note |")
        print("|:--|--:|--:|--:|--:|--:|--:|:--|")
        for r, label in rows:
            ts = [x["seconds"] for x in runs[workload, r]]
            n = sizes[workload, r]
            spread = (max(ts) - min(ts)) / statistics.median(ts) if len(ts) > 1 else 0.0
            vs = f"{rate[r] / best_peer:.2f}x" if best_peer else "—"
            note = "a tenth of N: too slow for all of it" if (workload, r) in SMALLER else ""
            peak = statistics.median(x["peak_mb"] for x in runs[workload, r])
            print(
                f"| {label} | {n:,} | {rate[r]:,.0f} | {vs} | {statistics.median(ts):.2f} | "
                f"{peak:.0f} | {spread:.0%} | {note} |"
            )
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
