"""A Redis stream into a PostgreSQL table: spindle against hand-written asyncio consumers.

    python -m bench.brokers [--quick] [--repeat N] [--n N]

The workload: N messages (200,000; 20,000 with --quick) preloaded in a Redis stream, each
body a JSON number ``i``; each goes through ``tiny(x)`` (bench/work.py, a few µs of CPU)
and its result into a PostgreSQL table ``(key text primary key, input jsonb, result
jsonb)``, keyed by the message id, ``ON CONFLICT (key) DO NOTHING``, and each message is
acknowledged (XACK) once its row is committed. A run counts only if afterwards the table
holds exactly N rows with the right results and the group has no pending message.

Runners:

* ``spindle``: the command ``spindle map bench.work:tiny redis://...?stream=S&group=G -o
  postgresql://...?table=T --drain`` (a cpu stage, a worker process per core), run in the
  measuring process through the command line's own entry point;
* ``asyncio``: what a careful engineer writes by hand with redis-py's asyncio client and
  asyncpg on uvloop: a reader task (XREADGROUP COUNT 1000) feeding a bounded queue, a
  writer task that runs ``tiny`` inline on each batch, COPYs the rows into a temporary
  table, INSERTs them ``ON CONFLICT DO NOTHING`` in one transaction, then XACKs the batch;
* ``asyncio-pool``: the same, with ``tiny`` run on a ``ProcessPoolExecutor`` (a worker
  per core), a batch per call, as one would for a heavier job.

Each measurement runs in a fresh interpreter (``python -m bench.brokers --one RUNNER N``),
its imports before the clock; the stream and the table are made before the clock and
removed after; the runners take turns, round after round. The table gives each row's
median rate (messages per second of the whole run: start-up, work, shut-down), the spread
of its runs ((max - min) / median of the times), its rate over the best hand-written one,
and the peak resident memory of the measuring process (*parent MB*) and of its whole
process tree (*tree MB*, sampled every 50 ms).

Needs Redis and PostgreSQL (``SPINDLE_BENCH_REDIS``, default redis://127.0.0.1:6379/0;
``SPINDLE_BENCH_POSTGRES``, default postgresql://postgres@127.0.0.1:5432/test), spindle's
``redis`` and ``postgres`` extras, and for the hand-written peers ``asyncpg`` (``pip
install asyncpg``); a peer whose library is missing shows as not importable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from . import compile_spindle
from .work import tiny

REDIS = os.environ.get("SPINDLE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("SPINDLE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SIZES = (200_000, 20_000)  # full, --quick
READ = 1000  # messages per read of the hand-written consumers
WORKERS = os.cpu_count() or 1
SAMPLE_EVERY = 0.05
TIME_LIMIT = 600

RUNNERS = [
    ("spindle", "spindle `map --drain`, cpu stage (a worker per core)"),
    ("asyncio", "hand-written: redis.asyncio + asyncpg, uvloop, tiny inline"),
    ("asyncio-pool", "hand-written: redis.asyncio + asyncpg, uvloop, ProcessPoolExecutor"),
]
NEEDS = {"spindle": ["redis", "psycopg"], "asyncio": ["redis", "asyncpg", "uvloop"]}
NEEDS["asyncio-pool"] = NEEDS["asyncio"]


# -- the stream and the table, before and after the clock ------------------------------


def prepare(stream: str, table: str, n: int) -> None:
    """Fill the stream with ``n`` messages; no table yet (each runner makes it)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.delete(stream)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(stream, {"data": b"%d" % i})
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def verify_and_clean(stream: str, group: str, table: str, n: int) -> str | None:
    """What is wrong with the run's outcome (None: nothing); then remove both."""
    import psycopg
    import redis

    client = redis.Redis.from_url(REDIS)
    problem = None
    try:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            rows, total = conn.execute(
                f"SELECT count(*), coalesce(sum((result)::bigint), 0) FROM {table}"
            ).fetchone() or (0, 0)
            if rows != n or total != n * tiny(0):
                problem = f"{rows} rows (of {n}), sum {total}"
            pending = int(client.xpending(stream, group)["pending"])
            if pending:
                problem = f"{pending} messages still pending"
            conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_failures")
    finally:
        client.delete(stream)
        client.close()
    return problem


# -- the runners (in the measuring process) --------------------------------------------


def run_spindle(stream: str, group: str, table: str) -> None:
    from spindle.cli import main

    args = [
        "map",
        "bench.work:tiny",
        f"{REDIS}?stream={stream}&group={group}",
        "-o",
        f"{POSTGRES}?table={table}",
        "--drain",
        "-q",
    ]
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"spindle map exited with {exc.code}") from None


def _tiny_batch(values: list[Any]) -> list[int]:
    return [tiny(v) for v in values]


async def consume(stream: str, group: str, table: str, pool: Any | None) -> int:
    """The hand-written consumer: a reader task, a bounded queue, a writer task."""
    import asyncpg
    import orjson
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(REDIS)
    conn = await asyncpg.connect(POSTGRES)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
    done = 0
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, input jsonb, result jsonb)"
        )
        await conn.execute(
            "CREATE TEMP TABLE incoming (key text, input jsonb, result jsonb) ON COMMIT DELETE ROWS"
        )
        insert = (
            f"INSERT INTO {table} SELECT key, input, result FROM incoming "
            "ON CONFLICT (key) DO NOTHING"
        )

        async def reader() -> None:
            while True:
                reply = await client.xreadgroup(group, "c", {stream: ">"}, count=READ)
                if not reply or not reply[0][1]:
                    await queue.put(None)
                    return
                await queue.put(reply[0][1])

        async def writer() -> None:
            nonlocal done
            while (entries := await queue.get()) is not None:
                ids = [e[0] for e in entries]
                raw = [e[1][b"data"] for e in entries]
                values = [orjson.loads(r) for r in raw]
                if pool is None:
                    results = [tiny(v) for v in values]
                else:
                    results = await loop.run_in_executor(pool, _tiny_batch, values)
                records = [
                    (i.decode(), r.decode(), orjson.dumps(x).decode())
                    for i, r, x in zip(ids, raw, results, strict=True)
                ]
                async with conn.transaction():
                    await conn.copy_records_to_table("incoming", records=records)
                    await conn.execute(insert)
                await client.xack(stream, group, *ids)
                done += len(ids)

        await asyncio.gather(reader(), writer())
    finally:
        await conn.close()
        await client.aclose()
    return done


def run_asyncio(stream: str, group: str, table: str, pooled: bool) -> None:
    import uvloop

    if not pooled:
        uvloop.run(consume(stream, group, table, None))
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(WORKERS) as pool:
        uvloop.run(consume(stream, group, table, pool))


def run_one(runner: str, n: int) -> dict[str, Any]:
    for module in NEEDS[runner]:  # imports before the clock
        __import__(module)
    if runner == "spindle":
        import spindle.cli.map  # noqa: F401
    else:
        import asyncpg  # noqa: F401
        import redis.asyncio  # noqa: F401
    tag = uuid.uuid4().hex[:10]
    stream, group, table = f"bench:{tag}", "bench", f"bench_{tag}"
    prepare(stream, table, n)
    started = time.perf_counter()
    if runner == "spindle":
        run_spindle(stream, group, table)
    else:
        run_asyncio(stream, group, table, pooled=runner == "asyncio-pool")
    seconds = time.perf_counter() - started
    problem = verify_and_clean(stream, group, table, n)
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "parent_mb": parent, "problem": problem}


# -- the harness -----------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(runner: str, n: int) -> dict[str, Any] | None:
    """One run in a fresh interpreter, in a session of its own (killed afterwards)."""
    command = [sys.executable, "-m", "bench.brokers", "--one", runner, str(n)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peak = 0
    deadline = time.monotonic() + TIME_LIMIT
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(SAMPLE_EVERY)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {runner}: failed (exit {proc.returncode})\n{err[-3000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    result["tree_mb"] = peak / 2**20
    return result


def available(runner: str) -> str | None:
    for module in NEEDS[runner]:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not importable"
    return None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.brokers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="20,000 messages, one round")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--n", type=int, help="messages per run")
    parser.add_argument("--only", help="comma-separated runners")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        runner, n = args.one
        print(json.dumps(run_one(runner, int(n))), flush=True)
        return
    compile_spindle()
    n = args.n or (SIZES[1] if args.quick else SIZES[0])
    repeat = args.repeat or (1 if args.quick else 3)
    only = None if args.only is None else set(args.only.split(","))
    plan = [(r, label) for r, label in RUNNERS if only is None or r in only]
    missing = {r: why for r, _ in plan if (why := available(r)) is not None}
    load = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(repeat):
        for runner, _ in plan:
            if runner in missing:
                continue
            result = measure(runner, n)
            print(f"round {round_ + 1}: {runner} n={n:,}: {result}", file=sys.stderr)
            if result is not None and result["problem"] is None:
                runs.setdefault(runner, []).append(result)
            elif result is not None:
                print(f"  WRONG: {result['problem']}", file=sys.stderr)
    versions = []
    for name in ("redis", "hiredis", "psycopg", "asyncpg", "uvloop"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            versions.append(f"{name} missing")
    print(
        f"{n:,} messages, {repeat} rounds, medians; {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {', '.join(versions)}; load average {load:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after.\n"
    )
    rate = {r: statistics.median(n / x["seconds"] for x in xs) for r, xs in runs.items()}
    best_peer = max((v for r, v in rate.items() if r != "spindle"), default=None)
    print(
        "| runner | msg/s | vs best hand-written | seconds | spread | parent MB | tree MB | runs |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for runner, label in plan:
        if runner in missing:
            print(f"| {label} | {missing[runner]} | | | | | | |")
            continue
        xs = runs.get(runner)
        if not xs:
            print(f"| {label} | **failed** | | | | | | |")
            continue
        ts = [x["seconds"] for x in xs]
        spread = (max(ts) - min(ts)) / statistics.median(ts) if len(ts) > 1 else 0.0
        vs = f"{rate[runner] / best_peer:.2f}x" if best_peer else "—"
        parent = statistics.median(x["parent_mb"] for x in xs)
        tree = statistics.median(x["tree_mb"] for x in xs)
        print(
            f"| {label} | {rate[runner]:,.0f} | {vs} | {statistics.median(ts):.2f} | "
            f"{spread:.0%} | {parent:.0f} | {tree:.0f} | {len(xs)} |"
        )
    peers = [r for r, _ in plan if r != "spindle" and r in runs]
    rounds = min((len(runs[r]) for r in ["spindle", *peers] if r in runs), default=0)
    if "spindle" in runs and peers and rounds:
        # The same round's runs ran minutes apart at most: their ratio moves less than
        # either rate when the machine's pace drifts.
        ratios = [
            min(runs[p][i]["seconds"] for p in peers) / runs["spindle"][i]["seconds"]
            for i in range(rounds)
        ]
        print(
            f"\nspindle over the best hand-written run of the same round: median "
            f"{statistics.median(ratios):.2f}x, from {min(ratios):.2f}x to {max(ratios):.2f}x "
            f"over {rounds} rounds."
        )


if __name__ == "__main__":
    main(sys.argv[1:])
