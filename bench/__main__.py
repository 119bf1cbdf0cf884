"""Benchmark spindle against the usual ways of doing the same work.

    python -m bench [--quick] [--only NAME[,NAME]] [--repeat N]

Each (workload, runner) pair runs in a fresh process group (``python -m
bench._run_one``), is timed, checked against the serial answer and killed with its
whole process tree afterwards. The medians go to stdout as markdown, and to
``bench/results/latest.md`` and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from . import compile_spindle, work
from .report import render, summarize
from .runners import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: Time a run gets past its own limit to report before it is killed from outside.
GRACE = 15.0
SAMPLE_EVERY = 0.05


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(WORKLOADS),
        metavar="NAME[,NAME]",
        help=f"workloads to run, from: {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per pair (default 3; 1 with --quick)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def calibrate() -> int:
    """Iterations of :func:`work.spin` per millisecond on this machine (best of 7)."""
    loops = 500_000
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        work.spin(0, loops)
        best = min(best, time.perf_counter() - start)
    return max(1, round(loops / (best * 1000)))


@cache
def reference(workload: str, n: int) -> tuple[int, int]:
    """The serial answer: count and checksum of ``answer(x)`` over the input."""
    return work.checksum(map(WORKLOADS[workload].answer, range(n)))


def tree_rss(pid: int) -> int:
    """Bytes resident in process ``pid`` and all its descendants (0 without psutil)."""
    try:
        import psutil
    except ImportError:
        return 0
    total = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_once(
    workload: str, runner: str, n: int, limit: float, env: dict[str, str]
) -> dict[str, Any]:
    """One run in a new session; its whole process group is killed afterwards."""
    command = [sys.executable, "-m", "bench._run_one", workload, runner, str(n), str(limit)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
        started = time.monotonic()
        deadline = started + limit + GRACE
        peak = 0
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(SAMPLE_EVERY)
        finally:
            timed_out = proc.poll() is None
            kill_group(proc.pid)  # the runner's workers, stuck or orphaned, go with it
            proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().decode().splitlines() if line.startswith("{")]
        stderr = err.read().decode(errors="replace").strip().splitlines()
    if lines:
        record: dict[str, Any] = json.loads(lines[-1])
    else:
        record = {"workload": workload, "runner": runner, "n": n}
        record["seconds"] = time.monotonic() - started
        record["status"] = "hung" if timed_out else f"crashed (exit {proc.returncode})"
        record["message"] = stderr[-1] if stderr else ""
    if record["status"] != "ok" and stderr:
        record["stderr"] = stderr[-60:]  # kept in latest.json: the traceback, or the stacks
    record["tree_mb"] = peak / 2**20 or None
    return record


def check(record: dict[str, Any]) -> None:
    """Mark a run whose results differ from the serial answer as WRONG."""
    workload = WORKLOADS[record["workload"]]
    if workload.mode == "faults":
        wrong = record.get("wrong", 0) > 0
    else:
        got = (record.get("count"), record.get("checksum"))
        wrong = record["status"] == "ok" and got != reference(workload.name, record["n"])
    if wrong:
        record["status"] = "WRONG"


def versions() -> dict[str, str]:
    found = {}
    for name in ["spindle", "mpire", "joblib", "pebble", "uvloop", "psutil"]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def stop(signum: int, _frame: object) -> None:
    """Leave through the ``finally`` of :func:`run_once`, which kills the running group."""
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    compile_spindle()
    for signum in (signal.SIGINT, signal.SIGTERM):  # even when started in the background
        signal.signal(signum, stop)
    loops = int(os.environ.get(work.LOOPS_ENV) or calibrate())
    work.LOOPS_PER_MS = loops  # the references computed here do the same work
    env = {**os.environ, work.LOOPS_ENV: str(loops)}
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "loops_per_ms": loops,
        "load_before": os.getloadavg()[0],
        "repeat": args.repeat,
        "quick": args.quick,
        "versions": versions(),
    }
    plan = [(WORKLOADS[name], runner) for name in args.only for runner in WORKLOADS[name].runners]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    done = 0
    for _ in range(args.repeat):  # round-robin, so drift hits every runner alike
        for workload, runner in plan:
            n = workload.size_of(runner, args.quick)
            limit = workload.limit[1 if args.quick else 0]
            record = run_once(workload.name, runner, n, limit, env)
            check(record)
            runs[workload.name, runner].append(record)
            done += 1
            seconds = record.get("seconds") or 0.0
            print(
                f"[{done}/{len(plan) * args.repeat}] {workload.name} {runner} n={n:,}: "
                f"{record['status']} {seconds:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    meta["load_after"] = os.getloadavg()[0]
    summary = [summarize(WORKLOADS[w], r, recs) for (w, r), recs in runs.items()]
    text = render(meta, summary)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text + "\n")
    blob = {"meta": meta, "summary": summary, "runs": [r for recs in runs.values() for r in recs]}
    (RESULTS / "latest.json").write_text(json.dumps(blob, indent=1) + "\n")
    print(f"\nwritten to {RESULTS / 'latest.md'} and latest.json", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
