"""``spindle serve`` against the classic ways of putting a function behind HTTP.

    python -m bench.serve [--quick] [--duration S] [--only spindle,tornado,fastapi]
                          [--work noop,cpu1ms,mix,ndjson,journal] [--mix-rate R] [--json PATH]

Needs wrk (``apt-get install wrk``, Debian and Ubuntu; ``brew install wrk`` on macOS)
and the peers, in the ``bench`` extra (``pip install -e '.[bench]'``: tornado, fastapi,
uvicorn[standard]). A peer that is not installed shows as such in its rows.

Every server is started by the harness, on a port of its own, serving the same
function, :func:`bench.serve_jobs.job`, whose item says what it does (``{"x": 1}``
comes back as it is; ``{"x": 1, "loops": L}`` spins ``L`` loops of pure-Python CPU)::

    harness ──▶ server, in a session of its own ◀── wrk -t1 -cC --latency -s SCRIPT.lua
       │          (waited for: its "listening" lines, then a checked answer to a
       │           no-op and to a cpu item; 1 s of warm-up load; then its cells)
       └── SIGTERM to the server's process group, SIGKILL after 10 s, after its cells,
           and in a ``finally``: on an error or Ctrl-C no server is left behind

Servers, a worker per core each:

* **spindle**: ``spindle serve bench.serve_jobs:job --kind cpu --workers CORES``: one
  front process (aiohttp) answers HTTP and hands the jobs to CORES worker processes;
* **tornado**: the classic design, a Tornado app forked into one process per core
  (``tornado.process.fork_processes(0)``) running the job inline in its handler;
* **fastapi**: FastAPI on ``uvicorn --workers CORES`` (uvloop and httptools), a plain
  ``def`` endpoint, which FastAPI runs on its thread pool.

Works, each at 64 and 256 connections, one wrk thread (wrk shares the cores with the
servers), ``--duration`` seconds a cell (10; 3 with ``--quick``):

* **noop**: ``{"x": 1}``, as fast as wrk can send: the cost of a request;
* **cpu1ms**: about 1 ms of pure-Python CPU a request (the loop count is measured once
  by the harness, best of 7, and sent in the body), as fast as wrk can send;
* **mix**: 1 request in 100 (exactly every 100th, counted in wrk's Lua ``request()``)
  is ``{"x": 1, "loops": 500 ms of loops}``, the others are no-ops. Here wrk does not
  send as fast as it can, and this is the one decision to know about when reading the
  figures: sent flat out, a mix whose every hundredth request costs 500 ms of CPU is
  capped by the slow requests alone at 2 cores / (500 ms / 100) = 400 requests/s,
  so wrk saturates every server, the wait of every request is set by the queue of
  slow jobs (Little's law: 64 connections / 400 per s = 160 ms each, whatever the
  design), and the fast requests' latency compares nothing but the queues. So the
  connections are paced instead: each waits an exponentially distributed time before
  each request (wrk's Lua ``delay()``), so that together they send ``--mix-rate``
  requests/s (default 100: the slow ones then need half a core on average, a quarter
  of the machine). ``--mix-rate 0`` sends flat out, to see the saturated case.
  While the mix runs, a second, light wrk (8 connections, no-ops only, paced to 100
  requests/s together) measures the *fast* requests' latency alone: wrk can time its
  requests but cannot tell its Lua hooks which response took how long, so the fast
  requests are best timed by a client that sends nothing else. Its connections stay
  open through the cell, as the load's do: with Tornado, a connection belongs to the
  process that accepted it, and waits whenever that process runs a slow job inline.

and two for spindle only:

* **ndjson**: ``POST /run`` with an NDJSON body of 1,000 no-op items (built once into
  the wrk script) at 8 and 64 connections: *items/s* = requests/s x 1,000. The server
  runs with ``--max-queue 100000``: with the default 10,000, more than ten such
  requests at once are refused with 429 (by design: the bound is in items);
* **journal**: ``POST /jobs`` of single no-op items at 64 connections, on a fresh
  server without ``--journal`` and on one with a fresh journal file in a temporary
  directory (both ``--max-queue 1000000``, so that no request is refused with 429):
  requests/s and their ratio, the cost of making every job durable before its 202.

Columns: **requests/s**: 2xx answers over the cell (wrk's count over its duration);
**p50/p99/p99.9 ms**: wrk's latency percentiles, time from a request's first byte sent
to its response's last byte received (its own ``done()`` hook gives p99.9, with
``latency:percentile(99.9)``), over every answer; **errors**: non-2xx answers and
socket errors, if any;
**vs Tornado**: the row's requests/s over Tornado's at the same load. wrk runs with
``--timeout 30s``, so no slow response is left out of the percentiles. The load
average is printed before and after: above the number of cores, something else was
using the machine and the figures are not worth comparing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import compile_spindle
from .serve_jobs import job
from .work import LOOPS_ENV, spin

ROOT = Path(__file__).resolve().parent.parent
CORES = os.cpu_count() or 1
#: Worker processes of spindle serve (``--spindle-workers``; the cores by default).
SPINDLE_WORKERS = [CORES]
SERVERS = {
    "spindle": f"spindle serve --kind cpu --workers {CORES}",
    "tornado": f"Tornado, fork_processes(0): {CORES} processes, job inline",
    "fastapi": f"FastAPI, uvicorn --workers {CORES}, def endpoint",
}
WORKS = ["noop", "cpu1ms", "mix"]
SPINDLE_ONLY = ["ndjson", "journal"]
LOADS = (64, 256)
NDJSON_LOADS = (8, 64)
NDJSON_ITEMS = 1000
NDJSON_QUEUE = 100_000
JOURNAL_LOAD = 64
#: The mix: every SLOW_EVERY-th request takes SLOW_MS of CPU.
SLOW_EVERY, SLOW_MS = 100, 500
#: The probe of the fast requests' latency during the mix.
PROBE_CONNECTIONS, PROBE_RATE = 8, 100.0
WRK_THREADS = 1
WARM_UP = 1.0
#: Seconds a server gets to start listening, and to stop after SIGTERM.
START_LIMIT, STOP_LIMIT = 60.0, 10.0
#: The figures wrk's ``done()`` hook prints, on one line after this marker.
MARKER = "BENCH-SERVE "
#: What the targets ask for (see the report at the end of a run).
TARGET_NOOP_P99_MS, TARGET_FAST_P99_MS = 10.0, 20.0
TARGET_ITEMS_PER_S, TARGET_JOURNAL_RATIO = 200_000, 0.70


# -- processes ---------------------------------------------------------------------------


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while processes are being stopped: a second Ctrl-C then
    lands after the clean-up, not in the middle of it."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_group(proc: subprocess.Popen[bytes], gentle: bool) -> None:
    """Stop ``proc`` and everything in its process group (its session's leader is
    ``proc``: forked and spawned workers are in it too)."""
    with signals_held():
        if gentle and proc.poll() is None:
            kill_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_LIMIT)
        kill_group(proc.pid)  # the leader if it still runs, and any child left behind
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes, path: str = "/run") -> tuple[int, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# -- the servers -------------------------------------------------------------------------


class ServerError(Exception):
    """A server did not start, or answered wrong."""


@dataclass
class Launch:
    """How to start a server and tell that it listens."""

    command: list[str]
    #: What the server writes on stderr when it listens (spindle: with its port, which
    #: it picks itself), and how many times: once per process that serves.
    ready: str
    count: int
    #: The port it was told to listen on; None when ``ready`` gives it.
    port: int | None


def launch(name: str, *, journal: Path | None = None, max_queue: int | None = None) -> Launch:
    python = sys.executable
    if name == "spindle":
        command = [
            python, "-m", "spindle", "serve", "bench.serve_jobs:job", "--kind", "cpu",
            "--workers", str(SPINDLE_WORKERS[0]), "--port", "0", "--grace", "1",
        ]  # fmt: skip
        if journal is not None:
            command += ["--journal", str(journal)]
        if max_queue is not None:
            command += ["--max-queue", str(max_queue)]
        return Launch(command, r"spindle: serving \S+ on http://127\.0\.0\.1:(\d+)", 1, None)
    port = free_port()
    if name == "tornado":
        command = [python, "-m", "bench.serve_jobs", "tornado", str(port)]
        return Launch(command, r"tornado: process \d+ listening", CORES, port)
    if name == "fastapi":
        command = [
            python, "-m", "uvicorn", "bench.serve_jobs:fastapi_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(CORES),
            "--no-access-log", "--log-level", "info",
        ]  # fmt: skip
        return Launch(command, r"Application startup complete", CORES, port)
    raise ValueError(name)


@contextlib.contextmanager
def running(name: str, loops: int, **options: Any) -> Iterator[str]:
    """Start server ``name``, wait until it listens and answers right; yield its URL;
    stop it and its whole process group afterwards, whatever happens."""
    spec = launch(name, **options)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            spec.command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
        gentle = True
        try:
            url = wait_ready(proc, spec, err)
            check_answers(url, loops)
            yield url
        except BaseException:
            gentle = False
            raise
        finally:
            stop_group(proc, gentle)


def stderr_of(err: Any) -> str:
    err.seek(0)
    return str(err.read().decode(errors="replace"))


def wait_ready(proc: subprocess.Popen[bytes], spec: Launch, err: Any) -> str:
    """The server's URL once it has said it listens, as many times as it has processes.

    Looks at its stderr every 20 ms: the servers say nothing to anyone but it."""
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        text = stderr_of(err)
        found = re.findall(spec.ready, text)
        if len(found) >= spec.count:
            port = spec.port if spec.port is not None else int(found[0])
            return f"http://127.0.0.1:{port}"
        if proc.poll() is not None:
            tail = " / ".join(text.strip().splitlines()[-3:])
            raise ServerError(f"exited at start (status {proc.returncode}): {tail}")
        time.sleep(0.02)
    raise ServerError(f"did not say it listens within {START_LIMIT:g} s")


def check_answers(url: str, loops: int) -> None:
    """A no-op and a cpu item, answered as :func:`job` answers them here."""
    for item in ({"x": 1}, {"x": 3, "loops": loops}):
        status, got = post(url, json.dumps(item).encode())
        if status != 200 or got != {"result": job(item)}:
            raise ServerError(f"answered {status} {got!r} to {item!r}")


# -- wrk ---------------------------------------------------------------------------------

DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50": %d, "p99": %d, "p999": %d, "max": %d}\\n',
    "MARKER", summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
""".replace("MARKER", MARKER)


def lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def script(
    body: str,
    *,
    path: str = "/run",
    content_type: str = "application/json",
    slow_body: str | None = None,
    mean_delay_ms: float | None = None,
) -> str:
    """A wrk script: POST ``body`` to ``path``; every SLOW_EVERY-th request sends
    ``slow_body`` instead, if given; each connection waits an exponential time of mean
    ``mean_delay_ms`` before each request, if given."""
    lines = [
        f'wrk.method = "POST"\nwrk.path = "{path}"',
        f'wrk.headers["Content-Type"] = "{content_type}"',
        f"wrk.body = {lua_string(body)}",
    ]
    if slow_body is not None:
        lines.append(
            f"local fast, slow, n = wrk.body, {lua_string(slow_body)}, 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            f"  return wrk.format(nil, nil, nil, n % {SLOW_EVERY} == 0 and slow or fast)\n"
            "end"
        )
    if mean_delay_ms is not None:
        lines.append(
            "delay = function()\n"
            f"  return math.floor(-{mean_delay_ms:.3f} * math.log(1 - math.random()))\n"
            "end"
        )
    lines.append(DONE_HOOK)
    return "\n".join(lines)


@dataclass
class Cell:
    """One measurement: a server, a work, a load; wrk's figures, or why there are none."""

    server: str
    work: str
    connections: int
    figures: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    problem: str | None = None

    def rate(self) -> float | None:
        return self.figures.get("rps") if self.problem is None else None


@contextlib.contextmanager
def wrk(
    url: str, lua: str, connections: int, seconds: float, tmp: Path
) -> Iterator[Callable[[], dict[str, Any]]]:
    """Start wrk; yield what waits for it and gives its figures; kill it on the way out."""
    path = tmp / f"s{time.monotonic_ns()}.lua"
    path.write_text(lua)
    command = [
        "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "30s", "--latency", "-s", str(path), url,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield lambda: figures_of(proc, out, seconds)
        finally:
            stop_group(proc, gentle=False)


#: wrk's error counts, and their names in the tables.
ERRORS = {
    "status": "non-2xx",
    "connect": "connect errors",
    "read": "read errors",
    "write": "write errors",
    "timeout": "timeouts",
}


def figures_of(proc: subprocess.Popen[bytes], out: Any, seconds: float) -> dict[str, Any]:
    """Wait for wrk; its figures, from the line its ``done()`` hook wrote."""
    try:
        proc.wait(seconds + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish"}
    out.seek(0)
    text = out.read().decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        return {"error": f"wrk exit {proc.returncode}: {text.strip()[-300:]}"}
    raw = json.loads(line.removeprefix(MARKER))
    seconds_run = raw["duration_us"] / 1e6
    errors = {name: raw[k] for k, name in ERRORS.items() if raw[k]}
    good = raw["requests"] - raw["status"]  # answers that were not 2xx or 3xx do not count
    return {
        "requests": good,
        "answers": raw["requests"],
        "seconds": seconds_run,
        "rps": good / seconds_run if seconds_run else 0.0,
        "p50_ms": raw["p50"] / 1000,
        "p99_ms": raw["p99"] / 1000,
        "p999_ms": raw["p999"] / 1000,
        "max_ms": raw["max"] / 1000,
        "errors": errors,
    }


def run_wrk(url: str, lua: str, connections: int, seconds: float, tmp: Path) -> dict[str, Any]:
    with wrk(url, lua, connections, seconds, tmp) as result:
        return result()


def measure(cell: Cell, url: str, lua: str, seconds: float, tmp: Path) -> None:
    figures = run_wrk(url, lua, cell.connections, seconds, tmp)
    settle(cell, figures)


def settle(cell: Cell, figures: dict[str, Any]) -> None:
    if "error" in figures:
        cell.problem = figures["error"]
        return
    cell.figures = figures
    if figures["requests"] == 0:
        cell.problem = f"no 2xx answer ({errors_of(figures)})"


# -- the cells -----------------------------------------------------------------------------


def bodies(loops: int) -> dict[str, str]:
    return {
        "noop": json.dumps({"x": 1}),
        "cpu1ms": json.dumps({"x": 1, "loops": loops}),
        "slow": json.dumps({"x": 1, "loops": loops * SLOW_MS}),
        "ndjson": "".join(json.dumps({"x": i}) + "\n" for i in range(NDJSON_ITEMS)),
    }


def mix_delay(connections: int, rate: float) -> float | None:
    """The mean wait of a connection before each request, in ms, for ``rate`` in all."""
    return connections / rate * 1000 if rate > 0 else None


def run_server_cells(
    name: str, args: argparse.Namespace, loops: int, tmp: Path, say: Callable[[str], None]
) -> list[Cell]:
    body = bodies(loops)
    cells = [Cell(name, work, c) for work in WORKS if work in args.work for c in LOADS]
    with running(name, loops) as url:
        say(f"{name}: listening on {url}; warming up")
        run_wrk(url, script(body["noop"]), 64, WARM_UP, tmp)
        for cell in cells:
            say(f"{name} {cell.work} c={cell.connections}")
            if cell.work != "mix":
                measure(cell, url, script(body[cell.work]), args.duration, tmp)
                continue
            load = script(
                body["noop"],
                slow_body=body["slow"],
                mean_delay_ms=mix_delay(cell.connections, args.mix_rate),
            )
            probe = script(body["noop"], mean_delay_ms=mix_delay(PROBE_CONNECTIONS, PROBE_RATE))
            with (
                wrk(url, load, cell.connections, args.duration, tmp) as load_figures,
                wrk(url, probe, PROBE_CONNECTIONS, args.duration, tmp) as probe_figures,
            ):
                figures, fast = load_figures(), probe_figures()
            settle(cell, figures)
            cell.probe = fast
            time.sleep(SLOW_MS / 1000)  # a slow job still running ends before the next cell
    return cells


def run_spindle_extras(
    args: argparse.Namespace, loops: int, tmp: Path, say: Callable[[str], None]
) -> list[Cell]:
    body = bodies(loops)
    cells: list[Cell] = []
    if "ndjson" in args.work:
        # Room for every connection's 1,000 items: past --max-queue a request is refused.
        with running("spindle", loops, max_queue=NDJSON_QUEUE) as url:
            say(f"spindle ndjson: listening on {url}; warming up")
            lua = script(body["ndjson"], content_type="application/x-ndjson")
            run_wrk(url, lua, NDJSON_LOADS[0], WARM_UP, tmp)
            for c in NDJSON_LOADS:
                say(f"spindle ndjson c={c}")
                cell = Cell("spindle", "ndjson", c)
                measure(cell, url, lua, args.duration, tmp)
                cells.append(cell)
    if "journal" in args.work:
        lua = script(body["noop"], path="/jobs")
        for journaled in (False, True):
            journal = tmp / f"journal-{time.monotonic_ns()}.sqlite" if journaled else None
            work = "jobs+journal" if journaled else "jobs"
            with running("spindle", loops, journal=journal, max_queue=1_000_000) as url:
                say(f"spindle {work}: listening on {url}; warming up")
                run_wrk(url, lua, JOURNAL_LOAD, WARM_UP, tmp)
                say(f"spindle {work} c={JOURNAL_LOAD}")
                cell = Cell("spindle", work, JOURNAL_LOAD)
                measure(cell, url, lua, args.duration, tmp)
                cells.append(cell)
    return cells


# -- the report ----------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def errors_of(figures: dict[str, Any] | None) -> str:
    if not figures or "errors" not in figures:
        return "—"
    return ", ".join(f"{n:,} {kind}" for kind, n in figures["errors"].items()) or "0"


def latency_cells(figures: dict[str, Any] | None) -> list[str]:
    if not figures or "error" in figures:
        return ["—"] * 3
    return [ms(figures["p50_ms"]), ms(figures["p99_ms"]), ms(figures["p999_ms"])]


def find(cells: list[Cell], server: str, work: str, connections: int) -> Cell | None:
    return next(
        (
            c
            for c in cells
            if (c.server, c.work, c.connections) == (server, work, connections)
            and c.problem is None
        ),
        None,
    )


def work_table(work: str, cells: list[Cell], missing: dict[str, str]) -> str:
    mix = work == "mix"
    head = ["server", "connections", "requests/s", "p50 ms", "p99 ms", "p99.9 ms"]
    if mix:
        head += ["fast p50 ms", "fast p99 ms", "fast p99.9 ms"]
    head += ["errors", "vs Tornado"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|:--|" + "--:|" * (len(head) - 1),
    ]
    for name, label in SERVERS.items():
        if name in missing:
            lines.append(f"| {label} | | {missing[name]} |" + " |" * (len(head) - 3))
            continue
        for cell in (c for c in cells if c.server == name and c.work == work):
            if cell.problem is not None:
                lines.append(
                    f"| {label} | {cell.connections} | **{cell.problem[:120]}** |"
                    + " |" * (len(head) - 3)
                )
                continue
            tornado = find(cells, "tornado", work, cell.connections)
            base = tornado.rate() if tornado else None
            rate = cell.rate()
            versus = f"{rate / base:.2f}x" if rate and base else "—"
            row = [label, str(cell.connections), f"{rate:,.0f}", *latency_cells(cell.figures)]
            if mix:
                row += latency_cells(cell.probe)
            errors = errors_of(cell.figures)
            if mix and cell.probe is not None and errors_of(cell.probe) not in ("0", "—"):
                errors += f"; probe: {errors_of(cell.probe)}"
            row += [errors, versus]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def extras_tables(cells: list[Cell]) -> list[str]:
    parts: list[str] = []
    ndjson = [c for c in cells if c.work == "ndjson"]
    if ndjson:
        lines = [
            f"#### ndjson: POST /run, {NDJSON_ITEMS:,} no-op items a request (spindle)\n",
            "| connections | requests/s | items/s | p50 ms | p99 ms | p99.9 ms | errors |",
            "|--:|--:|--:|--:|--:|--:|:--|",
        ]
        for c in ndjson:
            if c.problem is not None:
                lines.append(f"| {c.connections} | **{c.problem[:120]}** | | | | | |")
                continue
            rate = c.figures["rps"]
            lines.append(
                f"| {c.connections} | {rate:,.0f} | {rate * NDJSON_ITEMS:,.0f} | "
                + " | ".join(latency_cells(c.figures))
                + f" | {errors_of(c.figures)} |"
            )
        parts.append("\n".join(lines))
    jobs = [c for c in cells if c.work in ("jobs", "jobs+journal")]
    if jobs:
        lines = [
            f"#### journal: POST /jobs, single no-op items, {JOURNAL_LOAD} connections (spindle)\n",
            "| server | requests/s | p50 ms | p99 ms | p99.9 ms | errors |",
            "|:--|--:|--:|--:|--:|:--|",
        ]
        for c in jobs:
            label = "with --journal" if c.work == "jobs+journal" else "without journal"
            if c.problem is not None:
                lines.append(f"| {label} | **{c.problem[:120]}** | | | | |")
                continue
            lines.append(
                f"| {label} | {c.figures['rps']:,.0f} | "
                + " | ".join(latency_cells(c.figures))
                + f" | {errors_of(c.figures)} |"
            )
        parts.append("\n".join(lines))
    return parts


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else "met" if ok else "**missed**"


def targets(cells: list[Cell]) -> list[dict[str, Any]]:
    """Each target: what it asks, what was measured, and whether it was met."""
    found: list[dict[str, Any]] = []
    s, t = find(cells, "spindle", "noop", 64), find(cells, "tornado", "noop", 64)
    if s is not None:
        rate, base, p99 = s.figures["rps"], t.rate() if t else None, s.figures["p99_ms"]
        found.append(
            {
                "target": "noop, 64 connections: spindle requests/s >= Tornado's, p99 < "
                f"{TARGET_NOOP_P99_MS:g} ms",
                "measured": f"{rate:,.0f} vs {base:,.0f} requests/s ({rate / base:.2f}x), "
                f"p99 {ms(p99)} ms"
                if base
                else f"{rate:,.0f} requests/s (no Tornado figure), p99 {ms(p99)} ms",
                "met": None if not base else rate >= base and p99 < TARGET_NOOP_P99_MS,
            }
        )
    for c in LOADS:
        cell = find(cells, "spindle", "mix", c)
        if cell is None or not cell.probe or "error" in cell.probe:
            continue
        peer = find(cells, "tornado", "mix", c)
        theirs = (
            f" (Tornado: {ms(peer.probe['p99_ms'])} ms)"
            if peer and peer.probe and "error" not in peer.probe
            else ""
        )
        p99 = cell.probe["p99_ms"]
        found.append(
            {
                "target": f"mix, {c} connections: spindle's fast requests p99 < "
                f"{TARGET_FAST_P99_MS:g} ms",
                "measured": f"{ms(p99)} ms{theirs}",
                "met": p99 < TARGET_FAST_P99_MS,
            }
        )
    ndjson = [c for c in cells if c.work == "ndjson" and c.problem is None]
    if ndjson:
        best = max(ndjson, key=lambda c: c.figures["rps"])
        items = best.figures["rps"] * NDJSON_ITEMS
        found.append(
            {
                "target": f"ndjson: at least {TARGET_ITEMS_PER_S:,} items/s",
                "measured": f"{items:,.0f} items/s (best, at {best.connections} connections)",
                "met": items >= TARGET_ITEMS_PER_S,
            }
        )
    plain = find(cells, "spindle", "jobs", JOURNAL_LOAD)
    journaled = find(cells, "spindle", "jobs+journal", JOURNAL_LOAD)
    if plain is not None and journaled is not None:
        ratio = journaled.figures["rps"] / plain.figures["rps"]
        found.append(
            {
                "target": f"POST /jobs with --journal: at least {TARGET_JOURNAL_RATIO:.2f}x "
                "the requests/s without",
                "measured": f"{journaled.figures['rps']:,.0f} / {plain.figures['rps']:,.0f} "
                f"= {ratio:.2f}x",
                "met": ratio >= TARGET_JOURNAL_RATIO,
            }
        )
    return found


def render(meta: dict[str, Any], cells: list[Cell], missing: dict[str, str]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    parts = [
        "# spindle serve benchmark" + (" (quick)" if meta["quick"] else ""),
        f"{meta['date']} · Python {meta['python']} · {meta['cores']} cores · "
        f"{meta['platform']} · load average {meta['load_before']:.2f} before, "
        f"{meta['load_after']:.2f} after  \n{versions}  \n"
        f"{meta['duration']:g} s a cell, wrk -t{WRK_THREADS} --latency; 1 ms of work = "
        f"{meta['loops_per_ms']:,} loops; mix: 1 request in {SLOW_EVERY} takes {SLOW_MS} ms, "
        + (f"paced to {meta['mix_rate']:g} requests/s" if meta["mix_rate"] > 0 else "sent flat out")
        + f", fast requests timed by a second wrk ({PROBE_CONNECTIONS} connections, "
        f"no-ops paced to {PROBE_RATE:g} requests/s)",
    ]
    titles = {
        "noop": "noop: the item back",
        "cpu1ms": "cpu1ms: about 1 ms of pure-Python CPU",
        "mix": f"mix: 1 request in {SLOW_EVERY} takes {SLOW_MS} ms of CPU, the rest are no-ops",
    }
    for work in WORKS:
        if any(c.work == work for c in cells) or (missing and work in meta["works"]):
            parts.append(f"#### {titles[work]}\n\n" + work_table(work, cells, missing))
    parts += extras_tables(cells)
    found = targets(cells)
    if found:
        lines = ["#### targets\n", "| target | measured | |", "|:--|:--|:--|"]
        lines += [f"| {x['target']} | {x['measured']} | {verdict(x['met'])} |" for x in found]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# -- main ----------------------------------------------------------------------------------


def calibrate() -> int:
    """Iterations of :func:`bench.work.spin` per millisecond here (best of 7), or the
    figure given in ``$SPINDLE_BENCH_LOOPS_PER_MS``."""
    if os.environ.get(LOOPS_ENV):
        return int(os.environ[LOOPS_ENV])
    loops, best = 200_000, float("inf")
    for _ in range(7):
        start = time.perf_counter()
        spin(0, loops)
        best = min(best, time.perf_counter() - start)
    return max(1, round(loops / (best * 1000)))


def versions() -> dict[str, str]:
    found = {}
    for name in ["spindle", "aiohttp", "tornado", "fastapi", "uvicorn", "uvloop", "httptools"]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
        found["wrk"] = (out.split() or ["?"])[1] if len(out.split()) > 1 else "?"
    return found


def not_installed(name: str) -> str | None:
    for module in {"tornado": ["tornado"], "fastapi": ["fastapi", "uvicorn"]}.get(name, []):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install -e '.[bench]')"
    return None


def names(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        chosen = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in chosen if x not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return chosen

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3 s a cell instead of 10")
    parser.add_argument("--duration", type=float, help="seconds a cell [10; 3 with --quick]")
    parser.add_argument(
        "--only",
        type=names(list(SERVERS)),
        default=list(SERVERS),
        metavar="NAME[,NAME]",
        help=f"servers, from: {', '.join(SERVERS)}",
    )
    parser.add_argument(
        "--work",
        type=names(WORKS + SPINDLE_ONLY),
        default=WORKS + SPINDLE_ONLY,
        metavar="WORK[,WORK]",
        help=f"works, from: {', '.join(WORKS + SPINDLE_ONLY)} (the last two: spindle only)",
    )
    parser.add_argument(
        "--mix-rate",
        type=float,
        default=100.0,
        metavar="R",
        help="requests/s the mix's connections send together; 0: flat out [100]",
    )
    parser.add_argument(
        "--spindle-workers",
        type=int,
        default=CORES,
        metavar="N",
        help=f"worker processes of spindle serve [{CORES}, the cores]",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    args = parser.parse_args(argv)
    SPINDLE_WORKERS[0] = args.spindle_workers
    SERVERS["spindle"] = f"spindle serve --kind cpu --workers {args.spindle_workers}"
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.duration < 1:
        parser.error("--duration must be at least 1 s (wrk counts whole seconds)")
    if args.mix_rate < 0:
        parser.error("--mix-rate must not be negative")
    return args


def stop(signum: int, _frame: object) -> None:
    """Leave through the ``finally`` blocks, which stop every server and wrk."""
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit(
            "bench.serve: wrk is not installed, nothing to measure "
            "(Debian/Ubuntu: apt-get update && apt-get install -y wrk; macOS: brew install wrk)"
        )
    for signum in (signal.SIGINT, signal.SIGTERM):  # even when started in the background
        signal.signal(signum, stop)
    compile_spindle()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    loops = calibrate()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cores": CORES,
        "loops_per_ms": loops,
        "load_before": os.getloadavg()[0],
        "duration": args.duration,
        "quick": args.quick,
        "mix_rate": args.mix_rate,
        "works": args.work,
        "servers": args.only,
        "versions": versions(),
    }
    say(f"1 ms of CPU = {loops:,} loops; load average {meta['load_before']:.2f}")
    cells: list[Cell] = []
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="spindle-serve-bench-") as tmp:
        for name in args.only:
            why = not_installed(name)
            if why is not None:
                missing[name] = why
                continue
            if not any(w in args.work for w in WORKS):
                continue
            try:
                cells += run_server_cells(name, args, loops, Path(tmp), say)
            except ServerError as exc:
                say(f"{name}: {exc}")
                missing[name] = f"did not run: {exc}"[:160]
        if "spindle" in args.only and any(w in args.work for w in SPINDLE_ONLY):
            try:
                cells += run_spindle_extras(args, loops, Path(tmp), say)
            except ServerError as exc:
                say(f"spindle: {exc}")
    meta["load_after"] = os.getloadavg()[0]
    shown = {k: v for k, v in missing.items() if k in args.only}
    print(render(meta, cells, shown))
    if args.json is not None:
        blob = {
            "meta": meta,
            "cells": [vars(c) for c in cells],
            "missing": shown,
            "targets": targets(cells),
        }
        args.json.write_text(json.dumps(blob, indent=1) + "\n")
        say(f"written to {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
