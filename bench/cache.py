"""spindle.Cache against the caches a Python program shares between processes.

    python -m bench.cache [--quick] [--repeat N] [--only get,set] [--runners a,b]

What is measured: the latency of one ``get`` (a hit) and of one ``set`` (replacing an
entry), timed around each call (``perf_counter_ns``, whose own ~60 ns is in every
figure), from 1, 2 and 4 processes at once, each doing its calls on keys drawn at
random from 1,000 entries written beforehand, for 100-byte and 10 KB values. The
table gives the median and the 99th percentile over every call of every process, and
the calls per second of all the processes together.

Each measurement runs in a fresh interpreter (``python -m bench.cache --one RUNNER OP
PROCS SIZE N``), which fills the store, forks the processes (multiprocessing's fork
start, so that every peer's own after-fork handling runs), and lets them go at once;
runners take turns, round after round, and a row gives the median of its rounds with
the spread ((max - min) / median) of their medians.

Runners (the peers need ``pip install -e '.[bench]'``; a missing one is skipped):

* ``spindle``: ``spindle.Cache("256MB")`` (LMDB on /dev/shm), the handle inherited by
  the forked processes;
* ``lmdb``: py-lmdb alone, configured as spindle's store is, one read or write
  transaction per call: the floor under spindle;
* ``shm``: a hash table of our own in ``multiprocessing.shared_memory`` (the
  prototype below: fixed slots, a seqlock per slot for reads, an ``fcntl`` lock for
  writes, no eviction): what a hand-written store would gain over LMDB;
* ``diskcache`` and ``fanout``: diskcache's ``Cache`` and ``FanoutCache`` (8 shards),
  their directory on /dev/shm too, one opened per process;
* ``redis``: redis-py against the Redis server at 127.0.0.1:6379 (GET and SET, keys
  under ``spindle-bench:``, removed afterwards), one connection per process;
* ``manager``: a ``multiprocessing.Manager().dict()``, a proxy per process (a quarter
  of the calls: it is slow).
"""

from __future__ import annotations

import argparse
import array
import fcntl
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from . import compile_spindle

KEYS = 1000
SIZES = (100, 10_240)
PROCS = (1, 2, 4)
#: op -> (calls per process, with --quick)
CALLS = {"get": (20_000, 2_000), "set": (10_000, 1_000)}
#: Runners that make a quarter of the calls.
SLOW = {"manager"}
REDIS = ("127.0.0.1", 6379)

Get = Callable[[bytes], Any]
Set = Callable[[bytes, bytes], Any]
Close = Callable[[], Any]


# ---------------------------------------------------------------------- the prototype


class ShmTable:
    """A hash table of fixed slots in one shared-memory block (the prototype measured
    against LMDB): open addressing, a sequence number per slot (odd while written:
    a reader that sees it change or odd takes the entry as missing), writes under an
    ``fcntl`` lock (freed by the kernel if the writer dies). No eviction, no resize,
    no values larger than a slot."""

    HEADER = struct.Struct("<QQII")  # sequence, key hash, key length, value length

    def __init__(self, slots: int, value_size: int) -> None:
        self.slots = slots
        self.slot = self.HEADER.size + 64 + value_size
        self.shm = shared_memory.SharedMemory(create=True, size=slots * self.slot)
        self.buf = self.shm.buf
        fd, self.lock_path = tempfile.mkstemp(prefix="spindle-bench-shm-", dir="/dev/shm")
        os.close(fd)
        self.lock_fd = -1

    def opened(self) -> ShmTable:
        """In a process that uses the table: its own descriptor of the lock file."""
        self.lock_fd = os.open(self.lock_path, os.O_RDWR)
        return self

    def _slot(self, key: bytes) -> tuple[int, int]:
        from xxhash import xxh3_64_intdigest

        h = xxh3_64_intdigest(key) | 1
        return h, (h % self.slots) * self.slot

    def get(self, key: bytes) -> bytes | None:
        h, off = self._slot(key)
        buf, header = self.buf, self.HEADER
        for _ in range(8):
            seq, hh, kl, vl = header.unpack_from(buf, off)
            if hh == 0:
                return None
            if hh == h and not seq & 1:
                d = off + header.size
                if buf[d : d + kl] == key:
                    value = bytes(buf[d + kl : d + kl + vl])
                    return value if header.unpack_from(buf, off)[0] == seq else None
            off = (off + self.slot) % (self.slots * self.slot)
        return None

    def set(self, key: bytes, value: bytes) -> None:
        h, off = self._slot(key)
        buf, header = self.buf, self.HEADER
        fcntl.lockf(self.lock_fd, fcntl.LOCK_EX)
        try:
            for _ in range(8):
                seq, hh, _, _ = header.unpack_from(buf, off)
                if hh in (0, h):
                    break
                off = (off + self.slot) % (self.slots * self.slot)
            seq += seq & 1  # a writer died in this slot: it is written whole again
            struct.pack_into("<Q", buf, off, seq + 1)
            d = off + header.size
            buf[d : d + len(key)] = key
            buf[d + len(key) : d + len(key) + len(value)] = value
            header.pack_into(buf, off, seq + 1, h, len(key), len(value))
            struct.pack_into("<Q", buf, off, seq + 2)
        finally:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN)

    def destroy(self) -> None:
        del self.buf
        self.shm.close()
        self.shm.unlink()
        os.unlink(self.lock_path)


# ---------------------------------------------------------------------- the runners


class Runner:
    """A store set up in the measuring process; ``open()`` in each worker process."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.cleanup: list[Callable[[], Any]] = []
        self.state: Any = None
        if name == "spindle":
            import spindle

            self.state = spindle.Cache("256MB")
            self.cleanup.append(self.state.close)
        elif name == "lmdb":
            self.state = tempfile.mkdtemp(prefix="spindle-bench-lmdb-", dir="/dev/shm")
            self.cleanup.append(lambda: shutil.rmtree(self.state))
        elif name == "shm":
            self.state = ShmTable(4 * KEYS, size)
            self.cleanup.append(self.state.destroy)
        elif name in ("diskcache", "fanout"):
            self.state = tempfile.mkdtemp(prefix="spindle-bench-diskcache-", dir="/dev/shm")
            self.cleanup.append(lambda: shutil.rmtree(self.state))
        elif name == "redis":
            import redis

            self.state = redis.Redis(*REDIS)
            self.state.ping()
            self.cleanup.append(lambda: self.state.delete(*[key(i) for i in range(KEYS)]))
        elif name == "manager":
            self.manager = multiprocessing.get_context("fork").Manager()
            self.state = self.manager.dict()
            self.cleanup.append(self.manager.shutdown)
        else:
            raise ValueError(name)

    def open(self) -> tuple[Get, Set, Close]:
        """``get``, ``set`` and ``close`` of this process's handle on the store."""
        name, state = self.name, self.state
        nothing: Close = lambda: None  # noqa: E731
        if name == "spindle":
            return state.get, state.set, nothing
        if name == "lmdb":
            import lmdb

            env = lmdb.open(
                state, map_size=1 << 30, max_dbs=2, sync=False, metasync=False,
                readahead=False, max_readers=512,
            )
            db = env.open_db(b"data")

            def get(k: bytes) -> Any:
                with env.begin(db) as txn:
                    return txn.get(k)

            def set_(k: bytes, v: bytes) -> None:
                with env.begin(db, write=True) as txn:
                    txn.put(k, v)

            return get, set_, env.close
        if name == "shm":
            table = state.opened()
            return table.get, table.set, lambda: os.close(table.lock_fd)
        if name == "diskcache":
            import diskcache

            c = diskcache.Cache(state)
            return c.get, c.set, c.close
        if name == "fanout":
            import diskcache

            c = diskcache.FanoutCache(state, shards=8)
            return c.get, c.set, c.close
        if name == "redis":
            import redis

            r = redis.Redis(*REDIS)
            return r.get, r.set, r.close
        if name == "manager":
            d = state
            return d.get, d.__setitem__, nothing
        raise ValueError(name)

    def close(self) -> None:
        for step in reversed(self.cleanup):
            step()


def key(i: int) -> bytes:
    return b"spindle-bench:%06d" % i


def _worker(
    runner: Runner, op: str, calls: int, seed: int, go: Any, out: Any
) -> None:  # pragma: no cover - runs in the forked process
    get, set_, _ = runner.open()
    rng = random.Random(seed)
    keys = [key(rng.randrange(KEYS)) for _ in range(calls)]
    value = os.urandom(runner.size)
    clock = time.perf_counter_ns
    lat = array.array("q", bytes(8 * calls))
    get(keys[0])  # warm: the first call opens what the runner opens lazily
    go.wait()
    began = clock()
    if op == "get":
        for i, k in enumerate(keys):
            t0 = clock()
            if get(k) is None:
                raise RuntimeError(f"{runner.name}: a miss for {k!r}")
            lat[i] = clock() - t0
    else:
        for i, k in enumerate(keys):
            t0 = clock()
            set_(k, value)
            lat[i] = clock() - t0
    elapsed = clock() - began
    out.send_bytes(struct.pack("<q", elapsed) + lat.tobytes())
    out.close()


def run_one(name: str, op: str, procs: int, size: int, calls: int) -> dict[str, Any]:
    """One measurement in this process: the store filled, ``procs`` processes at once."""
    ctx = multiprocessing.get_context("fork")
    runner = Runner(name, size)
    try:
        _, set_, close = runner.open()
        value = os.urandom(size)
        for i in range(KEYS):
            set_(key(i), value)
        close()  # LMDB must not be open in a process that forks
        go = ctx.Event()
        pipes = [ctx.Pipe(duplex=False) for _ in range(procs)]
        workers = [
            ctx.Process(target=_worker, args=(runner, op, calls, seed, go, w))
            for seed, (_, w) in enumerate(pipes)
        ]
        for p in workers:
            p.start()
        for _, w in pipes:
            w.close()
        go.set()
        lat: list[int] = []
        slowest = 0
        for r, _ in pipes:
            data = r.recv_bytes()
            slowest = max(slowest, struct.unpack_from("<q", data)[0])
            lat.extend(array.array("q", data[8:]))
            r.close()
        for p in workers:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"{name} worker exited with {p.exitcode}")
    finally:
        runner.close()
    lat.sort()
    return {
        "median_us": lat[len(lat) // 2] / 1000,
        "p99_us": lat[int(len(lat) * 0.99)] / 1000,
        "ops_per_s": len(lat) / (slowest / 1e9),
        "calls": len(lat),
    }


# ---------------------------------------------------------------------- the table

RUNNERS = {
    "spindle": "`spindle.Cache` (LMDB on /dev/shm)",
    "lmdb": "py-lmdb alone, a transaction per call",
    "shm": "own hash table in `shared_memory` (prototype)",
    "diskcache": "diskcache `Cache` (on /dev/shm)",
    "fanout": "diskcache `FanoutCache`, 8 shards (on /dev/shm)",
    "redis": "redis-py, Redis at 127.0.0.1:6379",
    "manager": "`multiprocessing.Manager().dict()`",
}


def available(name: str) -> str | None:
    """Why a runner cannot run here, or None."""
    module = {"diskcache": "diskcache", "fanout": "diskcache", "redis": "redis"}.get(name)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not importable"
    if name == "redis":
        import redis

        try:
            redis.Redis(*REDIS, socket_connect_timeout=1).ping()
        except Exception as exc:
            return f"no Redis at {REDIS[0]}:{REDIS[1]} ({type(exc).__name__})"
    return None


def measure(name: str, op: str, procs: int, size: int, calls: int) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.cache", "--one", name, op, str(procs), str(size),
         str(calls)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        print(f"  {name} {op} {procs}p {size}B: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return "—"
    return f"{(max(values) - min(values)) / statistics.median(values):.0%}"


def report(runs: dict[tuple[str, str, int, int], list[dict[str, Any]]], ops: list[str],
           names: list[str]) -> None:
    for op in ops:
        for size in SIZES:
            print(f"#### {op}, {size:,}-byte values\n")
            print("| runner | processes | median µs | p99 µs | calls/s, all processes | "
                  "median vs spindle's | spread of medians | rounds |")
            print("|:--|--:|--:|--:|--:|--:|--:|--:|")
            for name in names:
                for procs in PROCS:
                    got = runs.get((name, op, procs, size))
                    if not got:
                        continue
                    med = statistics.median(r["median_us"] for r in got)
                    p99 = statistics.median(r["p99_us"] for r in got)
                    rate = statistics.median(r["ops_per_s"] for r in got)
                    ours = runs.get(("spindle", op, procs, size))
                    if ours and name != "spindle":
                        ratio = f"{med / statistics.median(r['median_us'] for r in ours):.1f}x"
                    else:
                        ratio = "1.0x" if name == "spindle" else "—"
                    print(f"| {RUNNERS[name]} | {procs} | {med:.2f} | {p99:.2f} | {rate:,.0f} | "
                          f"{ratio} | {_spread([r['median_us'] for r in got])} | {len(got)} |")
            print()


def targets(runs: dict[tuple[str, str, int, int], list[dict[str, Any]]]) -> None:
    """spindle's targets, met or missed (2 processes, 100-byte values)."""

    def med(name: str, op: str, what: str = "median_us") -> float | None:
        got = runs.get((name, op, 2, 100))
        return statistics.median(r[what] for r in got) if got else None

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    get_med, get_p99 = med("spindle", "get"), med("spindle", "get", "p99_us")
    set_med = med("spindle", "set")
    lines = []
    if get_med is not None and get_p99 is not None:
        lines.append(f"get median {get_med:.2f} µs (target ≤ 3): {verdict(get_med <= 3)}")
        lines.append(f"get p99 {get_p99:.2f} µs (target ≤ 15): {verdict(get_p99 <= 15)}")
        for peer, want in (("diskcache", 5), ("redis", 15)):
            theirs = med(peer, "get")
            if theirs is not None:
                x = theirs / get_med
                lines.append(f"get vs {peer}: {x:.1f}x (target ≥ {want}x): {verdict(x >= want)}")
    if set_med is not None:
        lines.append(f"set median {set_med:.2f} µs (target ≤ 30): {verdict(set_med <= 30)}")
    if lines:
        print("Targets, 2 processes, 100-byte values:\n")
        print("\n".join(f"- {line}" for line in lines))
        print()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, one round")
    parser.add_argument("--repeat", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated operations (get, set)")
    parser.add_argument("--runners", help=f"comma-separated runners ({', '.join(RUNNERS)})")
    parser.add_argument("--json", help="also write every run to this file")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, op, procs, size, calls = args.one
        print(json.dumps(run_one(name, op, int(procs), int(size), int(calls))), flush=True)
        return
    ops = ["get", "set"] if args.only is None else [o.strip() for o in args.only.split(",")]
    wanted = list(RUNNERS) if args.runners is None else [r.strip() for r in args.runners.split(",")]
    names = []
    for name in wanted:
        why = available(name)
        if why is None:
            names.append(name)
        else:
            print(f"skipping {name}: {why}", file=sys.stderr)
    compile_spindle()
    repeat = args.repeat or (1 if args.quick else 3)
    load = os.getloadavg()[0]
    runs: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for round_ in range(repeat):
        for op in ops:
            for size in SIZES:
                for procs in PROCS:
                    for name in names:
                        full, quick = CALLS[op]
                        calls = quick if args.quick else full
                        if name in SLOW:
                            calls //= 4
                        result = measure(name, op, procs, size, calls)
                        print(f"round {round_ + 1}: {name} {op} {procs}p {size}B: {result}",
                              file=sys.stderr)
                        if result is not None:
                            runs.setdefault((name, op, procs, size), []).append(result)
    import lmdb

    print(
        f"{repeat} rounds, medians; {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))}); "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after.\n"
    )
    report(runs, ops, names)
    targets(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"runner": k[0], "op": k[1], "procs": k[2], "size": k[3], "runs": v}
                       for k, v in runs.items()], f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
