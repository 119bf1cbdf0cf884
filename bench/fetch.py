"""HTTP fetching benchmark: ``spindle fetch`` against wrk and the usual Python clients.

    python -m bench.fetch [--requests N] [--concurrency C] [--repeat R] [--only NAME,...]

Starts its own nginx on 127.0.0.1 (a generated config, a temporary root serving a
1 KiB and a 64 KiB file), then for each file makes N requests (default 20,000; each
URL distinct by its query string) with at most C in flight (default 100) with every
runner, and stops nginx. Runs nothing, with a message, if nginx is not installed.

::

    harness ──▶ nginx (127.0.0.1, its own config and root)
       │
       ├──▶ wrk ─────────────────────────────┐
       ├──▶ python -m spindle fetch ...      ├──▶ requests to nginx
       └──▶ python -m bench.fetch_peers NAME ┘
            (one fresh process group per run; its RSS sampled, then the group killed)

Every Python runner writes its output, one JSON line per response (``url``,
``status``, ``headers`` and the body's ``text``), and is timed as a whole command:
*requests/s* is N over the command's wall time, interpreter start-up and imports
included; *in-run requests/s* uses the runner's own clock instead (spindle's summary
line; the peers' timer around their client). wrk's figure is its steady rate.

Each run is checked: N answers of status 200 carrying N times the file's size in
bytes, and a record written for each, or the row says what went wrong. The table
shows medians of the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from . import compile_spindle
from .fetch_peers import PEERS

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024}
SAMPLE_EVERY = 0.05
#: Seconds a run may take before it is stopped and marked as such.
LIMIT = 300.0
#: The rows the ratios are taken against: single-process aiohttp scripts.
REFERENCES = ("aiohttp-uvloop", "aiohttp-semaphore")
#: Runners too slow for the full count make a fraction of the requests (the row says so):
#: httpx's connection pool scans every connection for every request.
FRACTION = {"httpx": 10}

NGINX_CONF = """\
worker_processes auto;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    types {{ text/plain txt; text/html html; }}
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""

#: wrk has no request count, only a duration: its figure is a steady rate over this.
WRK_SECONDS = 5
WRK_THREADS = 2


@dataclass
class Row:
    runner: str
    label: str
    requests: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None


# -- nginx ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx(binary: str, workdir: Path) -> Iterator[str]:
    """Run nginx on 127.0.0.1 with a generated config; yield its origin."""
    port = free_port()
    workdir.chmod(0o755)  # nginx's workers run as another user when it is started as root
    (workdir / "www").mkdir()
    (workdir / "tmp").mkdir()
    for size in SIZES.values():
        body = (b"spindle " * (size // 8 + 1))[:size]
        (workdir / "www" / f"{size}.txt").write_bytes(body)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=workdir, port=port))
    proc = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish and exit
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()


def wait_listening(port: int, proc: subprocess.Popen[bytes], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            sys.exit(f"nginx exited at start (status {proc.returncode}): {err.strip()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)  # nginx says nothing when it is ready: look again shortly
    sys.exit(f"nginx did not listen on port {port} within {within:g} s")


# -- running one command ------------------------------------------------------------------


def rss_by_process(pid: int) -> dict[int, int]:
    """Bytes resident in ``pid`` and in each of its descendants, by process id
    (shared pages counted in each)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    found = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            found[p.pid] = p.memory_info().rss
    return found


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def measure(command: list[str], limit: float = LIMIT) -> dict[str, Any]:
    """Run ``command`` in a new session: its output, wall time and peak tree RSS.

    ``samples`` holds every sample taken: (seconds since the start, RSS of the
    command's own process, RSS of the whole tree)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        peak = 0
        samples: list[tuple[float, int, int]] = []
        try:
            while proc.poll() is None and time.perf_counter() - started < limit:
                rss = rss_by_process(proc.pid)
                total = sum(rss.values())
                samples.append((time.perf_counter() - started, rss.get(proc.pid, 0), total))
                peak = max(peak, total)
                time.sleep(SAMPLE_EVERY)
        finally:
            stopped = proc.poll() is None
            kill_group(proc.pid)
            proc.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return {
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
            "status": proc.returncode,
            "stopped": stopped,
            "wall": wall,
            "peak_mb": peak / 2**20,
            "samples": samples,
        }


def fail(done: dict[str, Any], what: str) -> dict[str, Any]:
    tail = (done["stderr"].strip().splitlines() or [""])[-1]
    reason = "stopped after the time limit" if done["stopped"] else f"exit {done['status']}"
    return {"error": f"{what}: {reason} {tail}".strip()}


# -- the runners ------------------------------------------------------------------------


def run_wrk(url: str, concurrency: int) -> dict[str, Any]:
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{concurrency}", f"-d{WRK_SECONDS}s", "--latency"]
    done = measure([*command, url])
    text = done["stdout"]
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done["status"] != 0 or not total or not rate:
        return fail(done, "wrk")
    requests = int(total.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        return {"error": f"wrk: {errors.group(1)} of {requests} answers were not 2xx"}
    return {
        "ok": requests,
        "bytes": None,  # wrk counts headers too
        "any_count": True,  # a duration, not a number of requests
        "rate": float(rate.group(1)),
        "p50": wrk_latency(text, "50%"),
        "p99": wrk_latency(text, "99%"),
        "wall": done["wall"],
        "peak_mb": done["peak_mb"],
    }


def wrk_latency(text: str, label: str) -> float | None:
    found = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not found:
        return None
    return float(found.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[found.group(2)]


def run_spindle(
    urls: Path, concurrency: int, workdir: Path, limit: float = LIMIT, workers: int | None = 1
) -> dict[str, Any]:
    """``spindle fetch`` of every URL in ``urls``; ``workers=None`` leaves the number
    of worker processes to spindle (one per core)."""
    output = workdir / "spindle.jsonl"
    command = [
        sys.executable, "-m", "spindle", "fetch", str(urls), "-o", str(output),
        "--robots", "ignore", "--concurrency", str(concurrency),
        "--per-host", str(concurrency), "--quiet",
    ]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    done = measure(command, limit)
    summary = re.search(r"spindle: ([\d,]+) items, ([\d,]+) failed, ([\d.]+) s", done["stderr"])
    if done["status"] not in (0, 1) or not summary:
        return fail(done, "spindle fetch")
    ok = size_ok = 0
    elapsed: list[float] = []
    with open(output, "rb") as f:
        for line in f:
            record = orjson.loads(line)
            if record["status"] == 200:
                ok += 1
                size_ok += len(record.get("text", ""))
            elapsed.append(record["elapsed"])
    output_bytes = output.stat().st_size
    output.unlink()
    seconds = float(summary.group(3))
    return {
        "ok": ok,
        "bytes": size_ok,
        "rate": ok / done["wall"],  # the whole command, start-up included
        "run_rate": ok / seconds,
        "seconds": seconds,
        "p50": percentile(elapsed, 0.50),
        "p99": percentile(elapsed, 0.99),
        "wall": done["wall"],
        "peak_mb": done["peak_mb"],
        "samples": done["samples"],
        "output_bytes": output_bytes,
    }


def run_peer(name: str, urls: Path, concurrency: int, workdir: Path) -> dict[str, Any]:
    output = workdir / f"{name}.jsonl"
    command = [sys.executable, "-m", "bench.fetch_peers", name, str(urls), str(concurrency)]
    done = measure([*command, str(output)])
    lines = [line for line in done["stdout"].splitlines() if line.startswith("{")]
    if done["status"] != 0 or not lines:
        return fail(done, name)
    result: dict[str, Any] = json.loads(lines[-1])
    with open(output, "rb") as f:
        written = sum(1 for _ in f)
    result["output_bytes"] = output.stat().st_size
    output.unlink()
    if written != result["ok"] + result["errors"]:
        return {"error": f"WRONG: {written} records written for {result['ok']} answers"}
    result["run_rate"] = result["ok"] / result["seconds"]
    result["rate"] = result["ok"] / done["wall"]  # the whole command, start-up included
    result["wall"] = done["wall"]
    result["peak_mb"] = done["peak_mb"]
    return result


def percentile(values: list[float], q: float) -> float | None:
    if len(values) < 2:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# -- the table ----------------------------------------------------------------------------


def check(result: dict[str, Any], n: int, size: int) -> str | None:
    """Why a run's figures cannot be trusted, or None."""
    if "error" in result:
        return str(result["error"])
    if result.get("any_count"):
        return None if result["ok"] > 0 else "WRONG: no answer was 200"
    if result["ok"] != n:
        return f"WRONG: {result['ok']} of {n} answers were 200"
    if result.get("bytes") is not None and result["bytes"] != n * size:
        return f"WRONG: {result['bytes']} body bytes, expected {n * size}"
    return None


def render(rows: list[Row], n: int, concurrency: int, size_label: str) -> str:
    """A markdown table: medians of each row, its rate over the best aiohttp script's
    and over aiomultiprocess's."""
    best = max((row.median("rate") or 0.0 for row in rows if row.runner in REFERENCES), default=0)
    amp = next((row.median("rate") or 0.0 for row in rows if row.runner == "aiomultiprocess"), 0)
    head = (
        f"### {n:,} requests of {size_label}, {concurrency} in flight\n\n"
        "| runner | requests/s | vs best aiohttp script | vs aiomultiprocess "
        "| in-run requests/s | p50 ms | p99 ms | peak MB | wall s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        label = row.label if row.requests == n else f"{row.label} ({row.requests:,} requests)"
        if row.problem is not None:
            lines.append(f"| {label} | {row.problem} | | | | | | | |")
            continue
        rate = row.median("rate") or 0.0
        ratio = f"{rate / best:.2f}x" if best else "-"
        vs_amp = f"{rate / amp:.2f}x" if amp else "-"
        run_rate = row.median("run_rate")
        in_run = "-" if run_rate is None else f"{run_rate:,.0f}"
        lines.append(
            f"| {label} | {rate:,.0f} | {ratio} | {vs_amp} | {in_run} | "
            f"{ms(row.median('p50'))} | {ms(row.median('p99'))} | "
            f"{row.median('peak_mb') or 0:.0f} | {row.median('wall') or 0:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def versions() -> str:
    found = []
    for name in ("aiohttp", "uvloop", "httpx", "requests", "aiomultiprocess"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return (
        f"spindle {spindle_revision()}; {platform.machine()}, {len(os.sched_getaffinity(0))} "
        f"cores, Python {platform.python_version()}, {nginx_v.removeprefix('nginx version: ')}, "
        + ", ".join(found)
    )


def spindle_revision() -> str:
    """The commit of the spindle being measured, and whether its files differ from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "spindle"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"{head} with uncommitted changes" if changed else head


# -- one big run -------------------------------------------------------------------------

#: URLs of a ``--big`` run, its time limit, and the memory it should stay under.
BIG_REQUESTS = 1_000_000
BIG_LIMIT = 3600.0
BIG_TARGET_MB = 300
BIG_SIZE = 1024


def run_big(origin: str, workdir: Path, n: int, concurrency: int, repeat: int) -> str:
    """``spindle fetch`` of N distinct URLs of the 1 KiB file with a worker process
    per core, output written: the peak resident memory of its process tree and its
    rate, one row per run."""
    urls = workdir / "urls-big.txt"
    with open(urls, "w") as f:
        for i in range(n):
            f.write(f"{origin}/{BIG_SIZE}.txt?n={i}\n")
    head = (
        f"### spindle fetch of {n:,} URLs of {BIG_SIZE} bytes, {concurrency} in flight, "
        "a worker per core, output written\n\n"
        "| run | requests/s | spindle s | wall s | p50 ms | p99 ms | peak tree MB | "
        "peak parent MB | peak workers MB | tree MB at 10 / 50 / 90 % of the run | output MB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    peaks = []
    for attempt in range(repeat):
        print(f"big run {attempt + 1}: {n:,} URLs", file=sys.stderr)
        result = run_spindle(urls, concurrency, workdir, limit=BIG_LIMIT, workers=None)
        problem = check(result, n, BIG_SIZE)
        if problem is not None:
            lines.append(f"| {attempt + 1} | **{problem}** | | | | | | | | | |")
            continue
        samples = result["samples"]
        wall = result["wall"]
        peaks.append(result["peak_mb"])
        parent = max(root for _, root, _ in samples)
        workers = max(total - root for _, root, total in samples)
        at = " / ".join(
            f"{tree_at(samples, share * wall) / 2**20:.0f}" for share in (0.1, 0.5, 0.9)
        )
        lines.append(
            f"| {attempt + 1} | {result['rate']:,.0f} | {result['seconds']:.1f} | {wall:.1f} | "
            f"{ms(result['p50'])} | {ms(result['p99'])} | {result['peak_mb']:.0f} | "
            f"{parent / 2**20:.0f} | {workers / 2**20:.0f} | {at} | "
            f"{result['output_bytes'] / 2**20:,.0f} |"
        )
    if peaks:
        highest = max(peaks)
        verdict = "under" if highest < BIG_TARGET_MB else "NOT under"
        lines.append(
            f"\nHighest peak tree: {highest:.0f} MB, {verdict} the {BIG_TARGET_MB} MB target."
        )
    return head + "\n".join(lines) + "\n"


def tree_at(samples: list[tuple[float, int, int]], when: float) -> int:
    """The tree's RSS in the sample taken nearest to ``when`` seconds."""
    return min(samples, key=lambda sample: abs(sample[0] - when))[2]


# -- main ---------------------------------------------------------------------------------

RUNNERS = ["wrk", "spindle", *PEERS]
LABELS = {
    "wrk": "wrk (the ceiling)",
    "spindle": "spindle fetch (whole command, output written)",
    **{name: label for name, (label, _) in PEERS.items()},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fetch", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests",
        type=int,
        help=f"requests per run [20,000; with --big {BIG_REQUESTS:,}]",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight")
    parser.add_argument(
        "--repeat", type=int, help="runs per runner (median shown) [3; with --big 1]"
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="instead: the memory of one spindle fetch of many URLs, run by run",
    )
    parser.add_argument(
        "--only",
        type=lambda text: [x.strip() for x in text.split(",") if x.strip()],
        default=RUNNERS,
        metavar="NAME[,NAME]",
        help=f"runners, from: {', '.join(RUNNERS)}",
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = BIG_REQUESTS if args.big else 20_000
    if args.repeat is None:
        args.repeat = 1 if args.big else 3
    unknown = set(args.only) - set(RUNNERS)
    if unknown:
        parser.error(
            f"unknown runner {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}"
        )
    if args.requests < WRK_THREADS or args.concurrency < 2 or args.repeat < 1:
        parser.error("--requests and --concurrency must be at least 2, --repeat at least 1")
    return args


def find_nginx() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    compile_spindle()
    binary = find_nginx()
    if binary is None:
        print(
            "bench.fetch: nginx is not installed, nothing to measure "
            "(apt-get update && apt-get install -y nginx wrk)"
        )
        return
    n, concurrency = args.requests, args.concurrency
    print(f"# spindle fetch benchmark\n\n{versions()}; load before {os.getloadavg()[0]:.2f}\n")
    with tempfile.TemporaryDirectory(prefix="spindle-fetch-bench-") as tmp:
        workdir = Path(tmp)
        with nginx(binary, workdir) as origin:
            if args.big:
                print(run_big(origin, workdir, n, concurrency, args.repeat))
            for size_label, size in () if args.big else SIZES.items():
                rows = [
                    Row(name, LABELS[name], max(1, n // FRACTION.get(name, 1)))
                    for name in RUNNERS
                    if name in args.only
                ]
                urls: dict[int, Path] = {}
                for count in {row.requests for row in rows}:
                    urls[count] = workdir / f"urls-{size}-{count}.txt"
                    lines = (f"{origin}/{size}.txt?n={i}\n" for i in range(count))
                    urls[count].write_text("".join(lines))
                if "wrk" in args.only and shutil.which("wrk") is None:
                    rows[0].problem = "wrk not installed"
                for attempt in range(args.repeat):  # round-robin: a slow patch hits all rows
                    for row in rows:
                        if row.problem is not None:
                            continue
                        print(f"{size_label} {row.runner} run {attempt + 1}", file=sys.stderr)
                        if row.runner == "wrk":
                            result = run_wrk(f"{origin}/{size}.txt", concurrency)
                        elif row.runner == "spindle":
                            result = run_spindle(
                                urls[row.requests], concurrency, workdir, workers=None
                            )
                        else:
                            result = run_peer(row.runner, urls[row.requests], concurrency, workdir)
                        row.problem = check(result, row.requests, size)
                        row.runs.append(result)
                print(render(rows, n, concurrency, size_label))
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
