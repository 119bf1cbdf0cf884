"""spindle on Ray against Ray's own ways of mapping a function, and against spindle local.

    python -m bench.ray [--quick] [--repeat N] [--only tiny,medium,memory,scaling,ctrl-c]

Each measurement runs in a fresh interpreter (``python -m bench.ray --one ...``), started
in a session of its own and killed whole when it ends; runners take turns, round after
round, and each row gives the median of its rounds with their spread. Runs that use Ray
start it (``ray.init(num_cpus=<cores>)``) before the clock: starting Ray takes seconds
and every Ray runner would pay it alike. The clock then covers what a program pays per
map: making actors or workers, the work, and shutting them down.

* tiny: ``tiny`` of ``bench/work.py`` (a few µs) over 1,000,000 items, in order: the cost
  of moving items. Runners: spindle on Ray (``backend="ray"``), spindle local
  (``kind="cpu"``), Ray Data ``range(N).map_batches``, ``ray.util.multiprocessing.Pool
  .map`` and one ``ray.remote`` task per item (fewer items for the slow ones, said in
  their row).
* medium: 200 items of about 20 ms of pure-Python work: the speed-up over a serial loop
  (at most the cores), same runners.
* memory: 10,000,000 items of ``x + 1`` from a lazy generator through spindle on Ray, the
  results summed: the driver's peak resident memory (``ru_maxrss``; Ray's own daemons
  and actors are other processes), and what it held before the stream. Ray's serializer
  imports pyarrow, pydantic and starlette on a driver's first object when they are
  installed (about 50 MB); to measure a plain ``spindle[ray]`` install, run this
  workload from a virtual environment that has only that:
  ``python -m venv /tmp/v && /tmp/v/bin/pip install '.[ray]' && /tmp/v/bin/python -m
  bench.ray --only memory``.
* scaling: a simulated cluster (``ray.cluster_utils.Cluster``, a head without CPUs and
  1, 2 or 4 worker nodes of 4 CPUs each, all on this machine), one actor per CPU, jobs
  that sleep 10 ms: items per second from the first result to the last (the cluster's
  and the actors' start left out), so what grows is what the nodes add; and the
  driver's ceiling, items per second of the driver process's CPU (Ray's threads in it
  included): the rate at which one driver core would be the limit.
* ctrl-c: ``spindle map --backend ray`` over jobs of 10 ms, SIGINT to its process group
  once results are coming: seconds until it has exited, and whether any spindle actor
  (any Ray process, for the Ray it started itself) is left; once with the Ray the command
  starts, once joining a running one (``--ray-address``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import compile_spindle
from .work import LOOPS_ENV, checksum, medium, tiny, tiny_cheap

CORES = os.cpu_count() or 1
#: workload -> (full size, quick size)
SIZES = {"tiny": (1_000_000, 100_000), "medium": (200, 40), "memory": (10_000_000, 1_000_000)}
#: Runners too slow for the full size of a workload: the divisor of their N.
SMALLER = {("tiny", "ray-tasks"): 100}
NODES = (1, 2, 4)
ACTORS_PER_NODE = 4
SLEEP = 0.01
SCALING_ITEMS = {1: 2_000, 2: 4_000, 4: 8_000}
#: Where the ctrl-c workload's jobs say they have started.
MARK_ENV = "SPINDLE_BENCH_RAY_MARK"


def _ray_up(**more: Any) -> None:
    import logging

    import ray

    ray.init(num_cpus=CORES, include_dashboard=False, logging_level=logging.WARNING, **more)


def _sleepy(x: int) -> int:
    time.sleep(SLEEP)
    return x


def _tiny_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {"r": [tiny(int(x)) for x in batch["id"]]}


def _medium_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {"r": [medium(int(x)) for x in batch["id"]]}


def run_one(workload: str, runner: str, n: int) -> dict[str, Any]:
    """One measurement in this process."""
    fn = {"tiny": tiny, "medium": medium, "memory": tiny_cheap}[workload]
    if runner not in ("spindle-local", "serial"):
        _ray_up()
    import spindle

    base: float | None = None
    if workload == "memory" and runner == "spindle-ray":
        # A first short run loads what any Ray driver loads on its first object: Ray's
        # serializer imports pyarrow, pydantic and starlette when they are installed
        # (about 50 MB here). The stream's own cost is the peak above that.
        checksum(spindle.map(fn, range(1000), backend="ray"))
        base = _current_mb()

    started = time.perf_counter()
    if runner == "serial":
        count, total = checksum(map(fn, range(n)))
    elif runner == "spindle-local":
        count, total = checksum(spindle.map(fn, range(n), kind="cpu"))
    elif runner == "spindle-ray":
        items: Any = range(n) if workload != "memory" else (i for i in range(n))
        count, total = checksum(spindle.map(fn, items, backend="ray"))
    elif runner == "ray-data":
        import ray

        # In input order, as every other runner gives its results.
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        batch = _tiny_batch if workload == "tiny" else _medium_batch
        ds = ray.data.range(n).map_batches(batch, batch_format="numpy")
        batches = ds.iter_batches(batch_format="numpy")
        count, total = checksum(int(r) for b in batches for r in b["r"])
    elif runner == "ray-pool":
        from ray.util.multiprocessing import Pool

        with Pool(CORES) as pool:
            count, total = checksum(pool.map(fn, range(n)))
    elif runner == "ray-tasks":
        import ray

        remote = ray.remote(fn)
        count, total = checksum(ray.get([remote.remote(x) for x in range(n)]))
    else:
        raise ValueError(runner)
    seconds = time.perf_counter() - started
    expected = checksum(map(fn, range(n))) if workload != "memory" else None
    if expected is not None and (count, total) != expected:
        raise RuntimeError(f"{runner}: wrong results")
    if count != n:
        raise RuntimeError(f"{runner}: {count} results of {n}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result: dict[str, Any] = {"seconds": seconds, "peak_mb": peak}
    if base is not None:
        result["base_mb"] = base
    return result


def _current_mb() -> float:
    """This process's resident memory now (MB), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_scaling(nodes: int) -> dict[str, Any]:
    import logging

    import ray
    from ray.cluster_utils import Cluster

    import spindle

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=ACTORS_PER_NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        n = SCALING_ITEMS[nodes]
        results = spindle.map(_sleepy, range(n), backend="ray", ordered=False)
        first = cpu = None
        count = 0
        for _ in results:
            if first is None:
                first, cpu = time.perf_counter(), time.process_time()
            count += 1
        assert first is not None and cpu is not None and count == n
        seconds = time.perf_counter() - first
        # The driver's CPU (Ray's threads in it included) per item: how many items a
        # second one driver CPU could dispatch, whatever the cluster's size.
        per_cpu = (n - 1) / max(time.process_time() - cpu, 1e-9)
        return {"seconds": seconds, "rate": (n - 1) / seconds, "n": n, "per_cpu": per_cpu}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _spindle_actors() -> list[str]:
    import ray

    found = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in found if str(a["name"]).startswith("spindle-")]


def run_ctrl_c(mode: str) -> dict[str, Any]:
    """``spindle map --backend ray`` stopped with SIGINT once results are coming."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.txt", Path(tmp) / "out.jsonl"
        started = Path(tmp) / "started"
        os.environ[MARK_ENV] = str(started)  # for the actors, through Ray's environment
        inp.write_text("".join(f"{i}\n" for i in range(100_000)))
        args = [sys.executable, "-m", "spindle", "map", "bench.ray:sleepy_line", str(inp),
                "-o", str(out), "--backend", "ray", "-q"]  # fmt: skip
        if mode == "joined":
            import ray

            _ray_up()
            args += ["--ray-address", ray.get_runtime_context().gcs_address]
        proc = subprocess.Popen(
            args, start_new_session=True, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        while not started.exists():  # a job has run: the harness polls, gently
            if proc.poll() is not None:
                raise RuntimeError(f"the command ended early: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
        pressed = time.perf_counter()
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
        seconds = time.perf_counter() - pressed
        if mode == "joined":
            left = len(_spindle_actors())
        else:  # the Ray it started must be gone, all of it
            left = sum(
                1
                for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] in ("raylet", "gcs_server")
                or any(tmp in part for part in (p.info["cmdline"] or []))
            )
        return {"seconds": seconds, "left": left, "code": proc.returncode}


def sleepy_line(line: str) -> int:
    """The ctrl-c workload's job: 10 ms, then the number; the first job of a process
    leaves the file that tells the harness that jobs are running."""
    global _MARKED
    if not _MARKED:
        _MARKED = True
        Path(os.environ[MARK_ENV]).touch()
    time.sleep(SLEEP)
    return int(line)


_MARKED = False


RUNNERS: dict[str, list[tuple[str, str]]] = {
    "tiny": [
        ("serial", "a serial loop (x cores: the machine's ceiling)"),
        ("spindle-ray", '`spindle.map(tiny, range(N), backend="ray")`'),
        ("spindle-local", '`spindle.map(tiny, range(N), kind="cpu")`'),
        ("ray-data", "Ray Data `range(N).map_batches(...)`"),
        ("ray-pool", "`ray.util.multiprocessing.Pool().map`"),
        ("ray-tasks", "a `ray.remote` task per item"),
    ],
    "medium": [
        ("serial", "a serial loop"),
        ("spindle-ray", '`spindle.map(medium, range(N), backend="ray")`'),
        ("spindle-local", '`spindle.map(medium, range(N), kind="cpu")`'),
        ("ray-data", "Ray Data `range(N).map_batches(...)`"),
        ("ray-pool", "`ray.util.multiprocessing.Pool().map`"),
        ("ray-tasks", "a `ray.remote` task per item"),
    ],
    "memory": [("spindle-ray", '`spindle.map(x + 1, <generator of N>, backend="ray")`')],
    "scaling": [(f"{n}", f"{n} node{'s' if n > 1 else ''}") for n in NODES],
    "ctrl-c": [
        ("own", "`spindle map --backend ray` (its own Ray)"),
        ("joined", "`spindle map --backend ray --ray-address ...`"),
    ],
}


def available(runner: str) -> bool:
    if runner == "ray-data":
        try:
            import pandas  # noqa: F401  (Ray Data needs it: pip install 'ray[data]')
        except ImportError:
            return False
    return True


def measure(workload: str, runner: str, n: int, env: dict[str, str]) -> dict[str, Any] | None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ray", "--one", workload, runner, str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left (Ray's daemons)
        except ProcessLookupError:
            pass
        proc.wait()
    if proc.returncode != 0:
        print(f"  {workload} {runner}: failed\n{err[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return "—"
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def _rounds(repeat: int) -> Iterator[int]:
    yield from range(repeat)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one run each")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated workloads")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        workload, runner, n = args.one
        if workload == "scaling":
            result = run_scaling(int(runner))
        elif workload == "ctrl-c":
            result = run_ctrl_c(runner)
        else:
            result = run_one(workload, runner, int(n))
        print(json.dumps(result), flush=True)
        return
    only = list(RUNNERS) if args.only is None else [w.strip() for w in args.only.split(",")]
    compile_spindle()
    from .__main__ import calibrate

    env = {**os.environ, LOOPS_ENV: os.environ.get(LOOPS_ENV) or str(calibrate())}
    repeat = args.repeat or (1 if args.quick else 3)
    load = os.getloadavg()[0]
    plan = [(w, r, label) for w in only for r, label in RUNNERS[w] if available(r)]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for round_ in _rounds(repeat):
        for workload, runner, _ in plan:
            full, quick = SIZES.get(workload, (0, 0))
            n = (quick if args.quick else full) // SMALLER.get((workload, runner), 1)
            sizes[workload, runner] = n
            result = measure(workload, runner, n, env)
            print(f"round {round_ + 1}: {workload} {runner} n={n:,}: {result}", file=sys.stderr)
            if result is not None:
                runs.setdefault((workload, runner), []).append(result)
    print(
        f"{repeat} rounds, medians; {CORES} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    for workload in only:
        rows = [(r, label) for w, r, label in plan if w == workload and (w, r) in runs]
        if rows:
            print(f"#### {workload}\n")
            _table(workload, rows, runs, sizes)
            print()


def _table(
    workload: str,
    rows: list[tuple[str, str]],
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    sizes: dict[tuple[str, str], int],
) -> None:
    def med(r: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[workload, r])

    def spread(r: str, key: str = "seconds") -> str:
        return _spread([x[key] for x in runs[workload, r]])

    if workload == "scaling":
        base = med(rows[0][0], "rate")
        print("| nodes | actors | N | items/s | vs 1 node | driver's ceiling, items/s per CPU "
              "| spread |")  # fmt: skip
        print("|:--|--:|--:|--:|--:|--:|--:|")
        for r, label in rows:
            n = int(r)
            rate = med(r, "rate")
            print(
                f"| {label} | {n * ACTORS_PER_NODE} | {SCALING_ITEMS[n]:,} | {rate:,.0f} | "
                f"{rate / base:.2f}x | {med(r, 'per_cpu'):,.0f} | {spread(r, 'rate')} |"
            )
        return
    if workload == "ctrl-c":
        print("| runner | seconds to exit | exit status | left alive | spread |")
        print("|:--|--:|--:|--:|--:|")
        for r, label in rows:
            left = max(x["left"] for x in runs[workload, r])
            codes = sorted({x["code"] for x in runs[workload, r]})
            print(f"| {label} | {med(r, 'seconds'):.2f} | {codes} | {left} | {spread(r)} |")
        return
    rate = {r: statistics.median(sizes[workload, r] / x["seconds"] for x in runs[workload, r])
            for r, _ in rows}  # fmt: skip
    serial = rate.get("serial")
    local = rate.get("spindle-local")
    print("| runner | N | items/s | vs spindle local | speed-up | seconds | driver peak MB "
          "| spread | note |")  # fmt: skip
    print("|:--|--:|--:|--:|--:|--:|--:|--:|:--|")
    for r, label in rows:
        n = sizes[workload, r]
        vs = f"{rate[r] / local:.2f}x" if local else "—"
        up = f"{rate[r] / serial:.2f}x" if serial else "—"
        div = SMALLER.get((workload, r))
        note = f"1/{div} of N: too slow for all of it" if div else ""
        if "base_mb" in runs[workload, r][0]:
            base = med(r, "base_mb")
            note = (
                f"{base:.0f} MB before the stream (the Ray driver after its first object); "
                f"the stream added {med(r, 'peak_mb') - base:.0f} MB"
            )
        print(
            f"| {label} | {n:,} | {rate[r]:,.0f} | {vs} | {up} | {med(r, 'seconds'):.2f} | "
            f"{med(r, 'peak_mb'):.0f} | {spread(r)} | {note} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
