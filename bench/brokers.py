"""Brokers into PostgreSQL: spindle against the queue frameworks and hand-written consumers.

    python -m bench.brokers [--broker redis,rabbitmq,nats] [--only RUNNERS] [--quick]
                            [--repeat N] [--n N]
    python -m bench.brokers --kill [--broker ...] [--only ...] [--n N]
    python -m bench.brokers --memory [--n N]

The job: N messages (200,000; 20,000 with --quick) wait on a broker, each body a JSON
number ``i``; each goes through ``tiny(x)`` (bench/work.py, a few µs of CPU) and its
result into a PostgreSQL table ``(key text, input jsonb, result jsonb)``, keyed by a stable
id of the message, and each message is acknowledged once its row is committed. The
brokers (bench/broker_servers.py says what each run makes on them):

* ``redis``: a Redis stream, entries ``{data: "<i>"}``, read in the group ``bench``; the
  key is the entry's id;
* ``rabbitmq``: a durable queue of persistent messages, ``message_id`` a random hex string,
  the key;
* ``nats``: a JetStream stream on one subject, read by a durable pull consumer; the key is
  ``<stream>:<sequence>``.

Runners (the modules named say how each is set up):

* ``spindle``: the command ``spindle map bench.work:tiny URL -o postgresql://...?table=T
  --drain`` (a cpu stage, a worker process per core), URL ``redis://...?stream=S&group=G``,
  ``amqp://...?queue=Q`` or ``nats://...?stream=S&subject=SUBJ&durable=D``, run in the
  measuring process through the command line's own entry point; it makes its own table
  (with ``key`` its primary key) and ends once the source is drained;
* ``faststream``: FastStream subscribers writing rows with asyncpg (bench/brokers_faststream.py:
  the batch subscriber for Redis Streams and NATS, a subscriber per message for RabbitMQ);
* ``celery`` (Redis only): Celery's own task messages on the Redis broker, ``N`` times
  ``write_row.delay(i)`` before the clock, ``acks_late=True``, the ``celery worker`` command
  with a process per core and ``--prefetch-multiplier 128`` (bench/brokers_celery.py);
* ``dramatiq`` (RabbitMQ only): Dramatiq's own messages, ``N`` times ``write_row.send(i)``
  before the clock, the ``dramatiq`` command with a process per core
  (bench/brokers_dramatiq.py);
* ``asyncio``, ``asyncio-pool``: what a careful engineer writes by hand on uvloop, a reader
  task, a bounded queue and a writer task that COPYs each batch in and acknowledges it
  (bench/brokers_asyncio.py); ``tiny`` inline, or on a ``ProcessPoolExecutor`` (a worker per
  core) a batch per call.

The runners that take one message at a time (Celery, Dramatiq, FastStream's RabbitMQ
subscriber) get at most 20,000 messages a run (``SLOW_CAP``; a full-size run of theirs
would take minutes): the table's N column says so.

The frameworks run until they are stopped: the measuring process watches the broker and
the table, and the clock stops once every message is acknowledged and the table holds
every input (bench/broker_servers.py, ``wait_done``; it looks every 50 ms); their
shut-down is not timed. spindle and the hand-written consumers end by themselves, and
their clock covers start-up, the work and shut-down.

Each measurement runs in a fresh interpreter (``python -m bench.brokers --one ...``), in a
session of its own whose whole process tree is killed afterwards; its imports happen before
the clock (a worker command's happen inside it: the clock starts when it is started). The
messages are preloaded and the table made before the clock, and both are removed after. The
runners take turns, round after round. A run counts only if afterwards the table holds
exactly N rows, N distinct inputs 0..N-1 and the right results, and the broker has nothing
left (no pending entry, no ready message, nothing pending or unacknowledged on the
consumer, no dead letter).

The table of each broker gives each runner's median rate (messages per second), the spread
of its runs ((max - min) / median of the times), its rate over the fastest framework row and
over the fastest hand-written row, and the peak resident memory of the measuring process
(*parent MB*, its ``VmHWM``; for a worker command, that of the command's main process) and
of its whole process tree (*tree MB*, sampled every 50 ms). Under it, spindle's rate
against its target, and spindle's rate over the fastest framework and hand-written run of
the same round (median over the rounds).

``--kill``: one run per runner (N = 20,000 unless --n) whose process group is killed with
SIGKILL once half the rows are in, then started again to the end, with the same command and
names. The table counts the messages whose row is missing (*lost*) and the rows written more
than once (*doubled*), and how many rows were in but their messages not acknowledged at the
kill (each such message comes again). The frameworks' and hand-written consumers' tables
have no key here, so a message written twice shows as two rows; spindle's table keeps its
primary key (it makes it so by design), so its doubles cannot show as rows and its
*doubled* is 0 by construction; its stats line says how many messages came again
(``redelivered``), and the table's note repeats it. The kill comes when the harness
(looking every 50 ms or so) first sees half the rows: right after a commit, so a runner
that acknowledges at once after its commit is rarely caught between the two. The
frameworks get the settings that make a killed run's messages come back soon (Celery:
``visibility_timeout`` 10 s); NATS hands them out again after the consumer's
``ack_wait`` (30 s, the default, for every runner).

``--memory``: 1,000,000 messages (or --n) in a Redis stream through spindle into PostgreSQL;
the figure is the peak RSS of the process that runs ``spindle map`` (target: under 100 MB).

Needs the servers (``SPINDLE_BENCH_REDIS``, default redis://127.0.0.1:6379/0;
``SPINDLE_BENCH_POSTGRES``, default postgresql://postgres@127.0.0.1:5432/test;
``SPINDLE_BENCH_RABBITMQ``, default amqp://guest:guest@127.0.0.1:5672/%2F;
``SPINDLE_BENCH_NATS``, default nats://127.0.0.1:4222, with JetStream), spindle's
``redis``, ``postgres``, ``rabbitmq`` and ``nats`` extras, and the ``bench`` extra for the
peers (asyncpg, FastStream, Celery, Dramatiq); a runner whose library is missing shows as
not importable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from . import compile_spindle
from .broker_servers import (
    GROUP,
    KILL_ENV,
    NATS,
    POSTGRES,
    RABBITMQ,
    REDIS,
    TAG_ENV,
    Names,
    create_table,
    dead_lettered,
    outstanding,
    preload,
    preloaded,
    remove,
    table_counts,
    table_rows,
    wait_done,
)
from .work import tiny

SIZES = (200_000, 20_000)  # full, --quick
KILL_SIZE = 20_000
MEMORY_SIZE = 1_000_000
WORKERS = os.cpu_count() or 1
SAMPLE_EVERY = 0.05
TIME_LIMIT = 900
#: Seconds a run started again after the kill has to finish (NATS hands a killed run's
#: messages out again after its ack_wait, 30 s by default).
RESTART_LIMIT = 240
#: Seconds a worker command has to stop after SIGTERM, before SIGKILL.
STOP_LIMIT = 30
CELERY_PREFETCH = 128  # "64, or 128" for many short tasks: Celery's optimizing guide
BROKERS = ("redis", "rabbitmq", "nats")
#: The most messages a run of the peers that take one message at a time gets.
SLOW_CAP = 20_000
TARGETS = {"redis": 20_000, "rabbitmq": 5_000, "nats": 15_000}


@dataclass(frozen=True)
class Runner:
    name: str
    source: str  # where its messages wait (bench/broker_servers.py)
    kind: str  # "spindle", "framework" or "hand-written"
    label: str
    needs: tuple[str, ...]
    #: At most this many messages a run: a message at a time, a full-size run would take
    #: minutes (the table's N column says so).
    cap: int | None = None


HAND = ("asyncpg", "uvloop", "orjson")
RUNNERS: dict[str, list[Runner]] = {
    "redis": [
        Runner("spindle", "stream", "spindle", "spindle `map --drain`", ("redis", "psycopg")),
        Runner(
            "faststream",
            "stream",
            "framework",
            "FastStream, Redis Streams batch subscriber + claimer",
            ("faststream.redis", "asyncpg", "uvloop"),
        ),
        Runner(
            "celery",
            "celery",
            "framework",
            f"Celery, Redis broker, acks_late, prefork x{WORKERS}",
            ("celery", "psycopg"),
            SLOW_CAP,
        ),
        Runner("asyncio", "stream", "hand-written", "hand-written: redis.asyncio, asyncpg", HAND),
        Runner(
            "asyncio-pool",
            "stream",
            "hand-written",
            "hand-written: redis.asyncio, asyncpg, process pool",
            HAND,
        ),
    ],
    "rabbitmq": [
        Runner("spindle", "queue", "spindle", "spindle `map --drain`", ("aio_pika", "psycopg")),
        Runner(
            "faststream",
            "queue",
            "framework",
            "FastStream, RabbitMQ subscriber per message",
            ("faststream.rabbit", "asyncpg", "uvloop"),
            SLOW_CAP,
        ),
        Runner(
            "dramatiq",
            "dramatiq",
            "framework",
            f"Dramatiq, RabbitMQ broker, {WORKERS} processes x 8 threads",
            ("dramatiq", "pika", "psycopg"),
            SLOW_CAP,
        ),
        Runner("asyncio", "queue", "hand-written", "hand-written: aio-pika, asyncpg", HAND),
        Runner(
            "asyncio-pool",
            "queue",
            "hand-written",
            "hand-written: aio-pika, asyncpg, process pool",
            HAND,
        ),
    ],
    "nats": [
        Runner("spindle", "jetstream", "spindle", "spindle `map --drain`", ("nats", "psycopg")),
        Runner(
            "faststream",
            "jetstream",
            "framework",
            "FastStream, NATS batch pull subscriber",
            ("faststream.nats", "asyncpg", "uvloop"),
        ),
        Runner("asyncio", "jetstream", "hand-written", "hand-written: nats-py, asyncpg", HAND),
        Runner(
            "asyncio-pool",
            "jetstream",
            "hand-written",
            "hand-written: nats-py, asyncpg, process pool",
            HAND,
        ),
    ],
}


def find_runner(broker: str, name: str) -> Runner:
    return next(r for r in RUNNERS[broker] if r.name == name)


# -- the runners (in the measuring process) -------------------------------------------------


def source_url(broker: str, names: Names) -> str:
    if broker == "redis":
        return f"{REDIS}?stream={names.stream}&group={GROUP}"
    if broker == "rabbitmq":
        return f"{RABBITMQ}?queue={names.queue}"
    return f"{NATS}?stream={names.jetstream}&subject={names.subject}&durable={names.durable}"


def run_spindle(broker: str, names: Names, quiet: bool) -> None:
    from spindle.cli import main

    args = [
        "map",
        "bench.work:tiny",
        source_url(broker, names),
        "-o",
        f"{POSTGRES}?table={names.table}",
        "--drain",
    ]
    if quiet:
        args.append("-q")
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"spindle map exited with {exc.code}") from None


def run_hand_written(broker: str, names: Names, pooled: bool) -> None:
    import uvloop

    from .brokers_asyncio import consume

    if not pooled:
        uvloop.run(consume(broker, names, None))
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(WORKERS) as pool:
        uvloop.run(consume(broker, names, pool))


def run_faststream(broker: str, runner: Runner, names: Names, n: int, limit: float) -> float:
    """Seconds until every message is in; the broker's stop is not timed."""
    import asyncpg
    import uvloop

    from .brokers_faststream import faststream_broker

    async def run() -> float:
        started = time.perf_counter()
        async with asyncpg.create_pool(POSTGRES, min_size=2, max_size=4) as pool:
            app = faststream_broker(broker, names, pool)
            await app.start()
            try:
                await wait_done(runner.source, names, n, limit)
                return time.perf_counter() - started
            finally:
                await app.stop()

    return uvloop.run(run())


def worker_command(runner: Runner, names: Names) -> list[str]:
    if runner.name == "celery":
        return [
            *[sys.executable, "-m", "celery", "-A", "bench.brokers_celery", "worker"],
            f"--concurrency={WORKERS}",
            f"--prefetch-multiplier={CELERY_PREFETCH}",
            *["--pool=prefork", "--loglevel=WARNING"],
            *["--without-gossip", "--without-mingle", "--without-heartbeat"],
        ]
    return [
        *[sys.executable, "-m", "dramatiq", "bench.brokers_dramatiq"],
        *["--processes", str(WORKERS), "--queues", names.queue],
    ]


def run_worker_command(runner: Runner, names: Names, n: int, limit: float) -> tuple[float, float]:
    """Start the worker command, wait until every message is in, stop it (SIGTERM).
    Returns the seconds until every message was in, and the peak RSS of the command's
    main process."""
    started = time.perf_counter()
    worker = subprocess.Popen(worker_command(runner, names))
    try:
        asyncio.run(wait_done(runner.source, names, n, limit))
        seconds = time.perf_counter() - started
        peak = peak_rss_mb(str(worker.pid))
        worker.send_signal(signal.SIGTERM)
        worker.wait(STOP_LIMIT)
        return seconds, peak
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def peak_rss_mb(pid: str) -> float:
    """The peak RSS of a process since its program started (``VmHWM``). Not
    ``ru_maxrss``: Linux keeps that across ``execve``, so a fresh interpreter would start
    from the RSS of the harness that forked it."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def run_one(broker: str, name: str, n: int, names: Names, limit: float) -> dict[str, Any]:
    runner = find_runner(broker, name)
    for module in runner.needs:  # imports before the clock
        __import__(module)
    if runner.kind == "spindle":
        import spindle.cli.map  # noqa: F401
    elif runner.name == "faststream":
        import bench.brokers_faststream  # noqa: F401
    started = time.perf_counter()
    if runner.kind == "spindle":
        # Its closing stats (how many messages came again) only in kill runs.
        run_spindle(broker, names, quiet=not os.environ.get(KILL_ENV))
        seconds = time.perf_counter() - started
    elif runner.kind == "hand-written":
        run_hand_written(broker, names, pooled=runner.name == "asyncio-pool")
        seconds = time.perf_counter() - started
    elif runner.name == "faststream":
        seconds = run_faststream(broker, runner, names, n, limit)
    else:
        seconds, parent = run_worker_command(runner, names, n, limit)
        return {"seconds": seconds, "parent_mb": parent}
    return {"seconds": seconds, "parent_mb": peak_rss_mb("self")}


# -- the harness: processes ---------------------------------------------------------------


def tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    import psutil

    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the run's process group, and any process of its tree outside it."""
    import psutil

    processes = tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in processes:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait()


@dataclass
class Child:
    """A run in a fresh interpreter, in a session of its own, its output in files (a
    chatty worker would block on a full pipe that nobody reads while the run goes)."""

    proc: subprocess.Popen[str]
    out: IO[str]
    err: IO[str]

    def watch(self, limit: float, until: Callable[[], bool] | None = None) -> tuple[int, str]:
        """Sample the tree's RSS until the run ends, ``until()`` holds or ``limit`` passes;
        then kill whatever is left of its tree. Returns the peak RSS and why it stopped."""
        peak = 0
        deadline = time.monotonic() + limit
        why = "ended"
        try:
            while self.proc.poll() is None:
                if time.monotonic() > deadline:
                    why = "time limit"
                    break
                if until is not None and until():
                    why = "killed"
                    break
                peak = max(peak, tree_rss(self.proc.pid))
                time.sleep(SAMPLE_EVERY)
        finally:
            kill_tree(self.proc)
        return peak, why

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def result(self, label: str) -> dict[str, Any] | None:
        """The run's JSON line, or None (its standard error shown) if it did not end well."""
        self.proc.wait()
        self.out.seek(0)
        self.err.seek(0)
        lines = [line for line in self.out.read().splitlines() if line.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            print(
                f"  {label}: failed (exit {self.proc.returncode})\n{self.err.read()[-3000:]}",
                file=sys.stderr,
            )
            return None
        result: dict[str, Any] = json.loads(lines[-1])
        return result


@contextlib.contextmanager
def spawn(
    broker: str, runner: str, n: int, names: Names, limit: float, kill: bool
) -> Iterator[Child]:
    """``python -m bench.brokers --one ...``; its whole tree is killed on the way out."""
    command = [sys.executable, "-m", "bench.brokers", "--one", broker, runner, str(n), names.tag]
    command += ["--limit", str(limit)]
    env = dict(os.environ, **{TAG_ENV: names.tag})
    if kill:
        env[KILL_ENV] = "1"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, start_new_session=True, env=env
        )
        try:
            yield Child(proc, out, err)
        finally:
            kill_tree(proc)


# -- the harness: before and after the clock ------------------------------------------------


def prepare(broker: str, runner: Runner, names: Names, n: int, keyed: bool) -> None:
    """The messages and the table, before the clock."""
    if runner.source in ("celery", "dramatiq"):
        module = f"bench.brokers_{runner.source}"
        env = dict(os.environ, **{TAG_ENV: names.tag})
        subprocess.run([sys.executable, "-m", module, str(n)], env=env, check=True)
    else:
        asyncio.run(preload(runner.source, names, n))
    deadline = time.monotonic() + 30
    while (waiting := asyncio.run(preloaded(runner.source, names))) != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{broker}/{runner.name}: {waiting} messages preloaded of {n}")
        time.sleep(0.1)
    create_table(names, keyed)


def left_on_broker(runner: Runner, names: Names) -> str | None:
    left = asyncio.run(outstanding(runner.source, names))
    if left:
        return f"{left} messages left on the broker" if left > 0 else "no consumer"
    if runner.source == "dramatiq" and (dead := asyncio.run(dead_lettered(names))):
        return f"{dead} dead letters"
    return None


def verify(runner: Runner, names: Names, n: int) -> str | None:
    """What is wrong with the run's outcome (None: nothing)."""
    rows, inputs, low, high, total = table_counts(names)
    if rows != n or inputs != n or low != 0 or high != n - 1 or total != n * tiny(0):
        return f"{rows} rows, {inputs} distinct inputs (of {n}), sum {total}"
    return left_on_broker(runner, names)


def measure(broker: str, runner: Runner, n: int) -> dict[str, Any] | None:
    """One run: preload, the runner in a fresh interpreter, verify, remove."""
    names = Names.new()
    try:
        prepare(broker, runner, names, n, keyed=True)
        with spawn(broker, runner.name, n, names, TIME_LIMIT, kill=False) as child:
            peak, why = child.watch(TIME_LIMIT + 60)
            result = child.result(f"{broker}/{runner.name}")
        if result is None:
            return None
        result["tree_mb"] = peak / 2**20
        result["n"] = n
        result["problem"] = verify(runner, names, n) if why == "ended" else why
        return result
    finally:
        remove(names)


def kill_run(broker: str, runner: Runner, n: int) -> dict[str, Any]:
    """Kill the runner once half the rows are in, start it again, count lost and doubled."""
    names = Names.new()
    label = f"{broker}/{runner.name}"
    try:
        keyed = runner.kind == "spindle"
        prepare(broker, runner, names, n, keyed=keyed)
        with spawn(broker, runner.name, n, names, RESTART_LIMIT, kill=True) as first:
            _, why = first.watch(RESTART_LIMIT, until=lambda: table_rows(names) >= n // 2)
            if why != "killed":
                first.result(f"{label} (first run, {why} before the kill)")
        # Messages whose row is in but that were not acknowledged at the kill: each comes
        # again, and is written twice unless the table's key stops it. (RabbitMQ puts a
        # dead connection's messages back at once: its ready count is all not acknowledged.)
        at, inputs_at, *_ = table_counts(names)
        left_at = asyncio.run(outstanding(runner.source, names))
        in_flight = inputs_at - (n - left_at) if left_at >= 0 else None
        started = time.monotonic()
        with spawn(broker, runner.name, n, names, RESTART_LIMIT, kill=True) as again:
            _, why_again = again.watch(RESTART_LIMIT + 30)
            finished = again.result(f"{label} (started again)")
            again_error = again.stderr()
            came_again = re.search(r"\(([\d,]+) redelivered\)", again_error)
        seconds = time.monotonic() - started
        rows, inputs, *_ = table_counts(names)
        left = left_on_broker(runner, names)
        notes = []
        if finished is None:
            said = again_error.strip().splitlines()[-1:] if why_again == "ended" else [why_again]
            notes.append(f"second run failed: {said[0] if said else '?'}")
        if left:
            notes.append(left)
        if why != "killed":
            notes.append(f"first run {why} before the kill")
        if came_again:
            notes.append(f"{came_again.group(1)} messages came again, each written once")
        return {
            "killed_at": at,
            "in_flight": in_flight,
            "lost": n - inputs,
            "doubled": rows - inputs,
            "keyed": keyed,
            "seconds": seconds,
            "note": ", ".join(notes),
        }
    finally:
        remove(names)


def available(runner: Runner) -> str | None:
    for module in runner.needs:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not importable"
    return None


# -- the reports ------------------------------------------------------------------------------


def versions() -> str:
    from importlib import metadata

    names = ["redis", "hiredis", "psycopg", "asyncpg", "aio-pika", "nats-py", "uvloop"]
    names += ["faststream", "celery", "kombu", "dramatiq", "pika"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def speed(result: dict[str, Any]) -> float:
    return float(result["n"]) / float(result["seconds"])


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "—"


def report(
    broker: str, plan: list[Runner], runs: dict[str, list[dict[str, Any]]], missing: dict[str, str]
) -> None:
    rate = {r: statistics.median(x["n"] / x["seconds"] for x in xs) for r, xs in runs.items() if xs}
    kinds = {r.name: r.kind for r in plan}
    best = {
        kind: max((v for r, v in rate.items() if kinds[r] == kind), default=None)
        for kind in ("framework", "hand-written")
    }
    print(f"\n### {broker} → PostgreSQL\n")
    print(
        "| runner | N | msg/s | spread | vs best framework | vs best hand-written | seconds "
        "| parent MB | tree MB | runs |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for runner in plan:
        if runner.name in missing:
            print(f"| {runner.label} | | {missing[runner.name]} | | | | | | | |")
            continue
        xs = runs.get(runner.name)
        if not xs:
            print(f"| {runner.label} | | **failed** | | | | | | | |")
            continue
        ts = [x["seconds"] for x in xs]
        spread = (max(ts) - min(ts)) / statistics.median(ts) if len(ts) > 1 else 0.0
        parent = statistics.median(x["parent_mb"] for x in xs)
        tree_mb = statistics.median(x["tree_mb"] for x in xs)
        r = rate[runner.name]
        print(
            f"| {runner.label} | {xs[0]['n']:,} | {r:,.0f} | {spread:.0%} | "
            f"{ratio(r, best['framework'])} | {ratio(r, best['hand-written'])} | "
            f"{statistics.median(ts):.2f} | {parent:.0f} | {tree_mb:.0f} | {len(xs)} |"
        )
    if "spindle" not in rate:
        return
    spindle = rate["spindle"]
    lines = [f"spindle {spindle:,.0f} msg/s (target {TARGETS[broker]:,})"]
    for kind, want in (("framework", 2.0), ("hand-written", 1.0)):
        peers = [r.name for r in plan if r.kind == kind and r.name in runs]
        # Runs of the same round ran minutes apart at most: their ratio moves less than
        # either rate when the machine's pace drifts.
        paired = []
        for mine in runs["spindle"]:
            theirs = [speed(x) for p in peers for x in runs[p] if x["round"] == mine["round"]]
            if theirs:
                paired.append(speed(mine) / max(theirs))
        if not paired:
            continue
        lines.append(
            f"over the fastest {kind} row of the same round: median "
            f"{statistics.median(paired):.2f}x (from {min(paired):.2f}x to {max(paired):.2f}x, "
            f"target {want:.0f}x)"
        )
    print("\n" + "; ".join(lines) + ".")


def run_benchmark(args: argparse.Namespace, brokers: list[str], only: set[str] | None) -> None:
    n = args.n or (SIZES[1] if args.quick else SIZES[0])
    repeat = args.repeat or (1 if args.quick else 3)
    load = os.getloadavg()
    results: dict[str, tuple[list[Runner], dict[str, list[dict[str, Any]]], dict[str, str]]] = {}
    for broker in brokers:
        plan = [r for r in RUNNERS[broker] if only is None or r.name in only]
        missing = {r.name: why for r in plan if (why := available(r)) is not None}
        runs: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(repeat):
            for runner in plan:
                if runner.name in missing:
                    continue
                size = min(n, runner.cap or n)
                result = measure(broker, runner, size)
                label = f"round {round_ + 1}: {broker}/{runner.name} n={size:,}"
                print(f"{label}: {result}", file=sys.stderr)
                if result is not None:
                    result["round"] = round_
                if result is not None and result["problem"] is None:
                    runs.setdefault(runner.name, []).append(result)
                elif result is not None:
                    print(f"  WRONG: {result['problem']}", file=sys.stderr)
        results[broker] = (plan, runs, missing)
    capped = f" ({SLOW_CAP:,} for the peers that take a message at a time)" if n > SLOW_CAP else ""
    print(
        f"{n:,} messages a run{capped}, {repeat} round(s), medians; {os.cpu_count()} cores, "
        f"Python "
        f"{platform.python_version()}; {versions()}; load average "
        f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} before, "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} after."
    )
    for broker, (plan, runs, missing) in results.items():
        report(broker, plan, runs, missing)


def run_kills(args: argparse.Namespace, brokers: list[str], only: set[str] | None) -> None:
    n = args.n or KILL_SIZE
    load = os.getloadavg()
    rows = []
    for broker in brokers:
        for runner in RUNNERS[broker]:
            if (only is not None and runner.name not in only) or available(runner):
                continue
            result = kill_run(broker, runner, n)
            print(f"kill: {broker}/{runner.name} n={n:,}: {result}", file=sys.stderr)
            rows.append((broker, runner, result))
    print(
        f"{n:,} messages, SIGKILL to the run's process group once {n // 2:,} rows were in, "
        f"then the same command again; {os.cpu_count()} cores; load average "
        f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    print(
        "| broker | runner | rows at the kill | of them not acknowledged | lost | doubled "
        "| table | second run s | note |"
    )
    print("|:--|:--|--:|--:|--:|--:|:--|--:|:--|")
    for broker, runner, r in rows:
        table = "primary key (a double cannot show)" if r["keyed"] else "no key"
        flight = "—" if r["in_flight"] is None else f"{r['in_flight']:,}"
        print(
            f"| {broker} | {runner.label} | {r['killed_at']:,} | {flight} | {r['lost']:,} | "
            f"{r['doubled']:,} | {table} | {r['seconds']:.1f} | {r['note']} |"
        )


def run_memory(args: argparse.Namespace) -> None:
    n = args.n or MEMORY_SIZE
    runner = find_runner("redis", "spindle")
    load = os.getloadavg()[0]
    result = measure("redis", runner, n)
    print(
        f"{n:,} messages, a Redis stream through `spindle map --drain` into PostgreSQL; "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    print("| runner | parent MB | tree MB | seconds | msg/s | outcome |")
    print("|:--|--:|--:|--:|--:|:--|")
    if result is None:
        print(f"| {runner.label} | **failed** | | | | |")
        return
    print(
        f"| {runner.label} | {result['parent_mb']:.0f} | {result['tree_mb']:.0f} | "
        f"{result['seconds']:.1f} | {n / result['seconds']:,.0f} | "
        f"{result['problem'] or 'every row, nothing pending'} |"
    )
    print(f"\nparent peak RSS {result['parent_mb']:.0f} MB (target under 100 MB).")


def interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.brokers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--broker", default=",".join(BROKERS), help="comma-separated brokers")
    parser.add_argument("--only", help="comma-separated runners")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, one round")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--n", type=int, help="messages per run")
    parser.add_argument("--kill", action="store_true", help="lost and doubled after a SIGKILL")
    parser.add_argument("--memory", action="store_true", help="spindle's RSS over 1,000,000")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=TIME_LIMIT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        broker, runner, n, tag = args.one
        print(json.dumps(run_one(broker, runner, int(n), Names(tag), args.limit)), flush=True)
        return
    brokers = [b.strip() for b in args.broker.split(",") if b.strip()]
    unknown = [b for b in brokers if b not in RUNNERS]
    if unknown:
        parser.error(f"unknown broker {', '.join(unknown)}; choose from {', '.join(BROKERS)}")
    only = None if args.only is None else {r.strip() for r in args.only.split(",")}
    signal.signal(signal.SIGTERM, interrupt)
    compile_spindle()
    if args.memory:
        run_memory(args)
    elif args.kill:
        run_kills(args, brokers, only)
    else:
        run_benchmark(args, brokers, only)


if __name__ == "__main__":
    main(sys.argv[1:])
