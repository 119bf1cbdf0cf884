"""Run one (workload, runner) pair in this process and print one JSON line about it.

    python -m bench._run_one WORKLOAD RUNNER SIZE [LIMIT]

The line holds the wall-clock seconds (pool start-up and shut-down included),
items/s, the count and checksum of the results, and the peak RSS of this process and
of its largest finished child (``getrusage``). Past LIMIT seconds (default: the
workload's full-size limit) the run reports ``"hung"`` with what it had, writes the
stack of every thread to stderr and exits at once, leaving its workers for the caller
to kill.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from typing import Any, NoReturn

from .runners import WORKLOADS, Unavailable, Workload
from .work import checksum


def tally(workload: Workload, n: int, seen: list[Any]) -> dict[str, Any]:
    """Fault runs: correct results kept, results lost, failures reported by kind."""
    kept = wrong = 0
    failures: Counter[str] = Counter()
    for x, value in enumerate(seen):
        if not isinstance(value, int):  # spindle.Failure, or a peer's error caught per item
            failures[getattr(value, "error", type(value).__name__)] += 1
        elif value == workload.answer(x):
            kept += 1
        else:
            wrong += 1
    possible = n - 2  # two items are made to fail
    return {
        "count": len(seen),
        "kept": kept,
        "lost": possible - kept,
        "wrong": wrong,
        "failures": dict(failures),
    }


def peak_rss_mb() -> dict[str, float]:
    def mb(who: int) -> float:
        return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux

    return {
        "rss_self_mb": mb(resource.RUSAGE_SELF),
        "rss_children_mb": mb(resource.RUSAGE_CHILDREN),
    }


def main(argv: list[str]) -> NoReturn:
    if len(argv) not in (3, 4) or argv[0] not in WORKLOADS:
        sys.exit(f"usage: python -m bench._run_one WORKLOAD RUNNER SIZE [LIMIT]\n{__doc__}")
    workload = WORKLOADS[argv[0]]
    entry = workload.runners[argv[1]]
    n = int(argv[2])
    limit = float(argv[3]) if len(argv) == 4 else workload.limit[0]
    record: dict[str, Any] = {"workload": workload.name, "runner": argv[1], "n": n}
    seen: list[Any] = []
    start = 0.0

    def report(status: str) -> NoReturn:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if status == "hung":  # where it was stuck, for whoever reads stderr
            faulthandler.dump_traceback(all_threads=True)
        record.setdefault("seconds", time.perf_counter() - start if start else 0.0)
        record["status"] = status
        if status == "ok" and record["seconds"] > 0:
            record["items_per_s"] = n / record["seconds"]
        if workload.mode == "faults":
            record.update(tally(workload, n, seen))
        record.update(peak_rss_mb())
        print(json.dumps(record), flush=True)
        os._exit(0)  # skip interpreter shutdown: it can block on a stuck worker

    signal.signal(signal.SIGALRM, lambda *_: report("hung"))
    try:
        entry.prepare()  # imports happen before the clock starts
        signal.setitimer(signal.ITIMER_REAL, limit)
        start = time.perf_counter()
        results = entry.run(workload.fn, workload.source(n))
        if workload.mode == "collect":
            values = list(results)
            record["seconds"] = time.perf_counter() - start
            record["count"], record["checksum"] = checksum(values)
        elif workload.mode == "stream":
            record["count"], record["checksum"] = checksum(results)
        else:
            for value in results:
                seen.append(value)
        status = "ok"
    except Unavailable as exc:
        status = str(exc)
    except Exception as exc:
        status = f"raised {type(exc).__name__}"
        record["message"] = str(exc)[:500]
    report(status)


if __name__ == "__main__":
    main(sys.argv[1:])
