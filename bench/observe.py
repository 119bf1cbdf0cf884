"""What spindle's metrics cost the tiny-job workload, measured two ways.

    python -m bench.observe [--quick] [--repeat N] [--items N]

The workload is the ``tiny`` one of ``python -m bench``: 1,000,000 items of
``sum(i*i for i in range(50))`` through ``spindle.map(tiny, range(N), kind="cpu")``,
results collected in a list. The metrics are what a stage runner does per batch to
observe a run: the latency histogram (``StageRunner._time``) and the done/failed
counters (``StageRunner._count``).

1. **A/B runs.** Each run is a fresh interpreter (``python -m bench.observe --one
   MODE N``). Mode ``on`` is spindle as shipped; mode ``off`` first replaces those
   two methods with no-ops, so the run has no histogram and no counters (the
   in-flight gauge, two integer additions per batch, stays). Runs alternate, the
   order flipping every round, and the table shows medians. The clock covers the
   run, pool start-up and shut-down included, not the imports (the engine is
   imported before the clock in both modes). Besides the wall
   time, each run reports the CPU time of the parent process (user + system), where
   the metrics run: on a machine shared with other work it moves much less than
   the wall time.
2. **Attribution.** On a 2-core machine shared with other work, run-to-run noise
   is larger than the effect, so each ``on`` run also reports how many batches the
   parent handled; the same process then times the two methods themselves on a
   runner of that run (a batch of the run's mean size, a million calls). Batches
   times the cost per batch, over the run's seconds, is the share of the run spent
   in the metrics: an upper bound of their cost in throughput, as if every
   microsecond of the parent's were a microsecond of the run.

A markdown table goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FULL, QUICK = 1_000_000, 100_000
#: Calls of the metrics methods when timing them alone.
CALLS = 1_000_000


def switch_metrics_off() -> None:
    """Replace the runner's per-batch metrics with no-ops (in this process only)."""
    from spindle._core.runner import StageRunner

    def nothing(self: StageRunner, n: int, outcome: Any) -> None:
        return None

    StageRunner._time = nothing  # type: ignore[method-assign]
    StageRunner._count = nothing  # type: ignore[method-assign]


def time_metrics(runner: Any, batch: int, seconds: float) -> float:
    """Seconds one batch's metrics take: ``_time`` and ``_count`` on a batch of
    ``batch`` items that took ``seconds`` in all."""
    from spindle.executors.base import Outcome

    outcome = Outcome([None] * batch, 0, seconds)
    record, count = runner._time, runner._count
    started = time.perf_counter()
    for _ in range(CALLS):
        record(batch, outcome)
        count(batch, outcome)
    return (time.perf_counter() - started) / CALLS


def one(mode: str, n: int) -> dict[str, Any]:
    """``--one``: a single run in this process; its figures."""
    import spindle

    from .work import checksum, tiny

    # Import the engine before the clock in both modes (spindle loads it on first
    # use), so that neither run pays for imports the other made beforehand.
    importlib.import_module("spindle._api")
    importlib.import_module("spindle.executors.processes")
    if mode == "off":
        switch_metrics_off()
    cpu_before = _cpu()
    started = time.perf_counter()
    results = spindle.map(tiny, range(n), kind="cpu")
    values = list(results)
    seconds = time.perf_counter() - started
    parent_cpu = _cpu() - cpu_before
    count, _ = checksum(values)
    if count != n or any(v != values[0] for v in values):
        raise RuntimeError(f"wrong results: {count} of {n}")
    [runner] = results._ex.runners
    executor: Any = runner.executor
    batches = sum(w.jobs for w in executor._workers)
    out: dict[str, Any] = {
        "mode": mode,
        "n": n,
        "seconds": seconds,
        "parent_cpu": parent_cpu,
        "batches": batches,
        "counted": runner.done,
        "timed": runner.latency.count,
    }
    if mode == "on":
        batch = round(n / batches)
        per_item = runner.latency.snapshot()["mean"]
        out["metrics_per_batch"] = time_metrics(runner, batch, per_item * batch)
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mode: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.observe", "--one", mode, "--items", str(n)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def render(runs: dict[str, list[dict[str, Any]]], n: int) -> str:
    seconds = {mode: [r["seconds"] for r in rs] for mode, rs in runs.items()}
    on, off = statistics.median(seconds["on"]), statistics.median(seconds["off"])
    cpu = {mode: [r["parent_cpu"] for r in rs] for mode, rs in runs.items()}
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    batches = statistics.median(r["batches"] for r in runs["on"])
    per_batch = statistics.median(r["metrics_per_batch"] for r in runs["on"])
    shares = [r["batches"] * r["metrics_per_batch"] / r["seconds"] for r in runs["on"]]
    load = os.getloadavg()
    lines = [
        f'{n:,} tiny items, `spindle.map(kind="cpu")`, {len(seconds["on"])} runs per mode; '
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} at the end",
        "",
        "| metrics | wall s | items/s | spread | parent CPU s | spread | batches | per batch |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
        f"| on (as shipped) | {on:.2f} | {n / on:,.0f} | {spread(seconds['on']):.0%} | "
        f"{cpu_on:.2f} | {spread(cpu['on']):.0%} | {batches:,.0f} | {per_batch * 1e6:.2f} µs |",
        f"| off (no-ops) | {off:.2f} | {n / off:,.0f} | {spread(seconds['off']):.0%} | "
        f"{cpu_off:.2f} | {spread(cpu['off']):.0%} | | |",
        "",
        f"A/B (medians; compare with the spreads): on takes {on / off - 1:+.1%} the wall "
        f"time of off, and {cpu_on / cpu_off - 1:+.1%} its parent CPU time.",
        f"Attribution: {statistics.median(shares):.3%} of the run is spent in the metrics "
        f"(runs: {', '.join(f'{s:.3%}' for s in shares)}).",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observe", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK:,} items, 3 runs")
    parser.add_argument("--repeat", type=int, default=None, help="runs per mode (default 7)")
    parser.add_argument("--items", type=int, default=None, help=f"items (default {FULL:,})")
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.items or (QUICK if args.quick else FULL)
    if args.one:
        print(json.dumps(one(args.one, n)), flush=True)
        return
    repeat = args.repeat or (3 if args.quick else 7)
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for r in range(repeat):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for mode in order:
            result = measure(mode, n)
            if mode == "off" and (result["counted"], result["timed"]) != (0, 0):
                raise RuntimeError("the metrics were not switched off")
            runs[mode].append(result)
            print(f"run {r + 1} {mode}: {result['seconds']:.2f} s", file=sys.stderr)
    print(render(runs, n))


if __name__ == "__main__":
    main(sys.argv[1:])
