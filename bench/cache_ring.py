"""What the Redis ring costs a read, against one plain redis-py GET, and how reads fare
while a server is down.

    python -m bench.cache_ring [--rounds N] [--keys N] [--size BYTES]

Starts three redis-server processes on free ports in a temporary folder (killed at the
end), and a ring over them with one replica. Each round times, taking turns of
``CHUNK`` calls in alternating order (so both see the same load from the machine):

* ring get: ``RedisRing.get`` of keys whose owner is the first server;
* redis-py GET: ``redis.Redis.get`` of the same Redis keys on that server;
* and the same for writes (the ring writes two copies, redis-py one).

Then the first server is killed (SIGKILL) and every key is read through the ring: the
reads that did not return the value written are counted (the target is none), with
their time per read; then the server is started again on its port, empty, and the time
until the ring has repaired it and reads it again is measured.

Prints a markdown table: the median of the rounds' µs per operation, with the spread
(lowest to highest) over the rounds.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from spindle.cache._ring import RedisRing

#: Calls timed in one turn: the ring's and redis-py's turns alternate this often.
CHUNK = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install -y redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                *("--save", "", "--appendonly", "no", "--port", str(self.port)),
                *("--bind", "127.0.0.1", "--dir", str(self.folder), "--logfile", "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self.answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit(f"redis-server on port {self.port} did not start")
            time.sleep(0.005)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


def paired(
    ring_op: Callable[[bytes], object],
    plain_op: Callable[[bytes], object],
    keys: Sequence[bytes],
    raw: Sequence[bytes],
    passes: int,
) -> tuple[float, float]:
    """µs per call of ``ring_op`` over ``keys`` and of ``plain_op`` over ``raw`` (the same
    Redis keys), ``passes`` times, taken in turns of ``CHUNK`` calls in alternating order,
    so that both see the same load from the rest of the machine."""
    spent = [0, 0]
    turn = 0
    for _ in range(passes):
        for i in range(0, len(keys), CHUNK):
            for which in (turn, 1 - turn):
                fn, batch = (ring_op, keys) if which == 0 else (plain_op, raw)
                t0 = time.perf_counter_ns()
                for k in batch[i : i + CHUNK]:
                    fn(k)
                spent[which] += time.perf_counter_ns() - t0
            turn = 1 - turn
    n = passes * len(keys)
    return spent[0] / n / 1000, spent[1] / n / 1000


def spread(values: list[float], digits: int = 1) -> str:
    """The median, and the lowest and highest, of the rounds."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--size", type=int, default=100, help="bytes per value")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    logging.getLogger("spindle.cache").setLevel(logging.ERROR)  # the kill is on purpose

    with tempfile.TemporaryDirectory(prefix="spindle-bench-ring-") as tmp:
        servers: list[Server] = []
        try:
            for i in range(3):
                servers.append(Server(Path(tmp) / str(i)))
            run(servers, args)
        finally:
            for server in servers:
                server.kill()


def run(servers: list[Server], args: argparse.Namespace) -> None:
    value = b"v" * args.size
    keys = [f"bench-{i}".encode() for i in range(args.keys)]
    ring = RedisRing([s.url for s in servers], replicas=1, health_interval=0.05)
    plain = redis.Redis.from_url(servers[0].url, socket_timeout=0.5)
    try:
        for k in keys:
            ring.set(k, value)
        while not all(n["up"] for n in ring.stats()["nodes"].values()):
            time.sleep(0.01)
        first = f"redis://127.0.0.1:{servers[0].port}/0"  # its name in the ring
        owned = [k for k in keys if ring.locate(k)[0] == first]
        raw = [b"spindle:k:" + k for k in owned]
        rows: dict[str, list[float]] = {
            "ring get": [],
            "redis-py GET": [],
            "ring set (2 copies)": [],
            "redis-py SET (1 copy)": [],
        }
        for _ in range(args.rounds):
            ring_us, plain_us = paired(ring.get, plain.get, owned, raw, args.passes)
            rows["ring get"].append(ring_us)
            rows["redis-py GET"].append(plain_us)
            ring_us, plain_us = paired(
                lambda k: ring.set(k, value), lambda k: plain.set(k, value), owned, raw, 1
            )
            rows["ring set (2 copies)"].append(ring_us)
            rows["redis-py SET (1 copy)"].append(plain_us)
        ratios = [a / b for a, b in zip(rows["ring get"], rows["redis-py GET"], strict=True)]

        # One server killed: every key read through the ring.
        servers[0].kill()
        outage: list[float] = []
        failed = 0
        for _ in range(args.rounds):
            t0 = time.perf_counter_ns()
            for k in keys:
                if ring.get(k) != value:
                    failed += 1
            outage.append((time.perf_counter_ns() - t0) / len(keys) / 1000)
        stats = ring.stats()["nodes"]
        fallbacks = sum(n["fallbacks"] for n in stats.values())

        # Back, empty, on the same port: time until repaired and read again.
        t0 = time.perf_counter()
        servers[0].start()
        while ring.stats()["nodes"][first]["state"] != "up":
            time.sleep(0.005)
        back = time.perf_counter() - t0
        repaired = ring.stats()["nodes"][first]["repairs"]
    finally:
        plain.close()
        ring.close()

    print(f"# Redis ring: 3 local servers, 1 replica, {args.size}-byte values")
    print(
        f"{len(owned)} keys owned by the first server, {args.rounds} rounds; in each, the ring"
        f" and redis-py take turns of {CHUNK} calls, in alternating order"
    )
    print()
    print("| operation | µs per op: median (lowest to highest) |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {spread(values)} |")
    print(f"| ring get / redis-py GET (ratio, per round) | {spread(ratios, 2)} |")
    best = min(rows["ring get"]) / min(rows["redis-py GET"])
    print(f"| ring get / redis-py GET (best round of each) | {best:.2f} |")
    print(f"| ring get, one of three servers killed | {spread(outage)} |")
    print()
    print(
        f"While the server was down: {failed} failed reads of {args.rounds * len(keys)} "
        f"(replicated keys), {fallbacks} served by a copy."
    )
    print(
        f"Restarted empty: repaired ({repaired} keys copied to it) and read again in {back:.2f} s."
    )


if __name__ == "__main__":
    main()
