"""What the journal costs a `spindle map` run, and how long a resume takes.

    python -m bench.journal [--quick] [--repeat N] [--only tiny,async,api,resume]

Each measurement runs in a fresh interpreter (``python -m bench.journal --one ...``) that
does what ``spindle map`` does, through the same functions the command line calls: read
the input file as text lines, run the job, write ``{"input", "result"}`` JSON lines, with
and without ``--journal``. The clock covers the run (pool start-up and shut-down, the
journal's opening and closing), not the imports. Workloads:

* tiny: 1,000,000 items of ``sum(i*i for i in range(50))`` on processes (kind cpu);
* async: 100,000 items of ``await asyncio.sleep(0.005)`` on the event loop, 1,000 at once;
* api: the tiny job as ``python -m bench`` runs it, ``spindle.map(tiny, range(n))``
  from Python with and without ``journal=``, no output file (the journal keeps only
  which items are done; the caller takes the results);
* resume: 1,000,000 items of the tiny job of which 999,000 are done in the journal: the
  time to skip them (read, key, look up) and run the last 1,000.

A markdown table of medians goes to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import compile_spindle

ROOT = Path(__file__).resolve().parent.parent

#: name -> (job in bench.work, kind, full size, quick size)
WORKLOADS: dict[str, tuple[str, str, int, int]] = {
    "tiny": ("tiny", "cpu", 1_000_000, 100_000),
    "async": ("job", "io", 100_000, 10_000),
    "api": ("tiny", "cpu", 1_000_000, 100_000),  # spindle.map(...) from Python, no output
}
#: Items left to run in the resume workload.
RESUME_LEFT = 1_000
CONCURRENCY = 1_000


def write_lines(path: Path, start: int, stop: int, mode: str = "w") -> None:
    with open(path, mode) as f:
        f.write("".join(f"{i}\n" for i in range(start, stop)))


def run_map(
    job: str, kind: str, input_path: Path, output: Path, journal: Path | None
) -> dict[str, Any]:
    """One `spindle map` run in this process, as the command line does it; its figures."""
    from spindle import Pipeline
    from spindle._core.stage import make_stage
    from spindle.cli._driver import PlainTarget, Target, drive
    from spindle.cli._observers import Observers
    from spindle.cli._options import RunOptions
    from spindle.cli.map import open_map_journal
    from spindle.connectors import RecordWriter, read_items

    from . import work

    fn = getattr(work, job)
    concurrency = CONCURRENCY if kind == "io" else None
    view = Observers(quiet=True)
    stderr = io.StringIO()
    started = time.perf_counter()
    stage = make_stage(fn, kind, concurrency=concurrency)
    source = read_items(str(input_path), "text")
    pipeline = Pipeline([stage], on_error="yield")
    with contextlib.redirect_stderr(stderr):
        target: Target
        if journal is None:
            target = PlainTarget(RecordWriter(str(output)))
        else:
            run = RunOptions(
                output=str(output),
                grace=5.0,
                quiet=True,
                stats_json=None,
                metrics_port=None,
                dashboard_port=None,
                dashboard_host="127.0.0.1",
                dashboard_token=None,
                journal=str(journal),
                retry_failed=False,
                force=False,
                output_format=None,
            )
            target = open_map_journal(
                run,
                fn=fn,
                spec=f"bench.work:{job}",
                input_path=str(input_path),
                fmt="text",
                key=None,
            )
        code = drive(pipeline, source, target, view=view, grace=5.0)
    seconds = time.perf_counter() - started
    source.close()
    return {"seconds": seconds, "code": code, "summary": stderr.getvalue().strip()}


def run_api(job: str, kind: str, n: int, journal: Path | None) -> dict[str, Any]:
    """``spindle.map(fn, range(n), journal=...)`` from Python, results taken and
    dropped: the tiny benchmark of ``python -m bench``, with and without a journal."""
    import spindle
    import spindle.journal._resumable  # what journal= imports: imports are not timed

    from . import work

    fn = getattr(work, job)
    started = time.perf_counter()
    results = spindle.map(fn, range(n), kind=kind, journal=journal)
    taken = sum(map(len, results.chunks()))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "code": 0 if taken == n else 1, "summary": f"{taken} results"}


def one(args: argparse.Namespace) -> None:
    """``--one``: a single measurement, printed as one JSON line."""
    job, kind, _, _ = WORKLOADS.get(args.workload, WORKLOADS["tiny"])
    directory = Path(args.dir)
    journal = directory / "j.db" if args.journal else None
    if args.workload == "api":
        with open(directory / "in.txt", "rb") as f:
            n = sum(1 for _ in f)  # the size the harness chose
        print(json.dumps(run_api(job, kind, n, journal)), flush=True)
        return
    result = run_map(job, kind, directory / "in.txt", directory / "out.jsonl", journal)
    print(json.dumps(result), flush=True)


def measure(workload: str, directory: Path, journal: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.journal", "--one", workload, "--dir", str(directory)]
    if journal:
        cmd.append("--journal")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise RuntimeError(f"{workload} exited with {result['code']}: {result['summary']}")
    return result


def fresh(directory: Path) -> None:
    for name in ("out.jsonl", "out.jsonl.failures.jsonl", "j.db", "j.db-wal", "j.db-shm"):
        (directory / name).unlink(missing_ok=True)


def bench_overhead(name: str, n: int, repeat: int, base: Path) -> dict[str, Any]:
    directory = base / name
    directory.mkdir()
    write_lines(directory / "in.txt", 0, n)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeat):
        for journal in (False, True):
            fresh(directory)
            seconds = measure(name, directory, journal)["seconds"]
            times[journal].append(seconds)
            label = "with" if journal else "without"
            print(f"{name} {label} journal, run {r + 1}: {seconds:.2f} s", file=sys.stderr)
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    return {"name": name, "n": n, "without": without, "with": with_}


def bench_resume(n: int, repeat: int, base: Path) -> dict[str, Any]:
    directory = base / "resume"
    directory.mkdir()
    done = n - RESUME_LEFT
    # The first run sees the first `done` lines; the last lines are added afterwards (the
    # journal knows its input by path, so this is the same command), then each repeat
    # resumes from a copy of the journal and output as the first run left them.
    write_lines(directory / "in.txt", 0, done)
    started = time.perf_counter()
    measure("resume", directory, journal=True)
    print(
        f"resume: {done:,} items recorded in {time.perf_counter() - started:.1f} s", file=sys.stderr
    )
    write_lines(directory / "in.txt", done, n, mode="a")
    saved = base / "resume-saved"
    saved.mkdir()
    for name in ("j.db", "out.jsonl"):
        shutil.copy2(directory / name, saved / name)
    times = []
    for r in range(repeat):
        for name in ("j.db", "out.jsonl"):
            shutil.copy2(saved / name, directory / name)
        for name in ("j.db-wal", "j.db-shm", "out.jsonl.failures.jsonl"):
            (directory / name).unlink(missing_ok=True)
        result = measure("resume", directory, journal=True)
        times.append(result["seconds"])
        print(f"resume run {r + 1}: {result['seconds']:.2f} s", file=sys.stderr)
        with open(directory / "out.jsonl", "rb") as f:
            lines = sum(1 for _ in f)
        if lines != n:
            raise RuntimeError(f"the resumed output holds {lines} records, not {n}")
    return {"n": n, "done": done, "seconds": statistics.median(times)}


def render(
    rows: list[dict[str, Any]],
    resume: dict[str, Any] | None,
    repeat: int,
    load: tuple[float, float],
) -> str:
    lines = [
        f"Medians of {repeat} runs; each run in a fresh interpreter, imports excluded. "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}; load average {load[0]:.2f} before, {load[1]:.2f} after.",
        "",
        "| workload | items | without journal | with journal | journal cost per item | overhead |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "tiny": "tiny CPU job (kind cpu)",
        "async": f"`asyncio.sleep(0.005)` (kind io, concurrency {CONCURRENCY:,})",
        "api": "tiny CPU job, `spindle.map(..., journal=)` from Python, no output file",
    }
    for row in rows:
        cost = (row["with"] - row["without"]) / row["n"] * 1e6
        lines.append(
            f"| {labels[row['name']]} | {row['n']:,} | {row['without']:.2f} s "
            f"({row['n'] / row['without']:,.0f}/s) | {row['with']:.2f} s "
            f"({row['n'] / row['with']:,.0f}/s) | {cost:.1f} µs | "
            f"{row['with'] / row['without']:.2f}x |"
        )
    if resume is None:
        return "\n".join(lines)
    lines += [
        "",
        "| resume | items | already done | seconds | items skipped per second |",
        "|---|---:|---:|---:|---:|",
        f"| tiny CPU job, `--journal` | {resume['n']:,} | {resume['done']:,} | "
        f"{resume['seconds']:.2f} s | {resume['done'] / resume['seconds']:,.0f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.journal", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes, one run each")
    parser.add_argument(
        "--repeat", type=int, help="runs per measurement (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--only",
        help="comma-separated workloads to run (tiny, async, api, resume; default all)",
    )
    parser.add_argument("--one", dest="workload", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--journal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workload:
        one(args)
        return
    names = [*WORKLOADS, "resume"]
    only = names if args.only is None else [w.strip() for w in args.only.split(",")]
    unknown = sorted(set(only) - set(names))
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(names)}")
    compile_spindle()
    repeat = args.repeat or (1 if args.quick else 3)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="spindle-bench-journal-") as tmp:
        base = Path(tmp)
        rows = [
            bench_overhead(name, quick if args.quick else full, repeat, base)
            for name, (_, _, full, quick) in WORKLOADS.items()
            if name in only
        ]
        _, _, full, quick = WORKLOADS["tiny"]
        resume_n = quick if args.quick else full
        resume = bench_resume(resume_n, repeat, base) if "resume" in only else None
    print(render(rows, resume, repeat, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
