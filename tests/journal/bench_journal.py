"""Micro-benchmark of the journal and output writers (not a test; run it by hand).

    python tests/journal/bench_journal.py [--items N] [--batch B] [--format F] [--no-fsync]

It plays the engine's part for N items in batches of B: hash each item to a key,
``mark_started`` the batch, build result records and ``record`` them. The same loop is
timed without a journal (keys, records, and the results written to a plain file with
orjson), which is the floor any run producing that output pays. The difference per item
is the journal's cost; at R items/s of user work it adds R x cost of overhead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import orjson

from spindle.connectors import FailuresOutput, open_output
from spindle.journal import Record, SqliteJournal


def key_of(item: dict[str, int]) -> bytes:
    return hashlib.blake2b(orjson.dumps(item, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def items(n: int) -> list[dict[str, int]]:
    return [{"i": i} for i in range(n)]


def bare(data: list[dict[str, int]], batch: int, path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for s in range(0, len(data), batch):
            chunk = data[s : s + batch]
            keys = [key_of(x) for x in chunk]
            recs = [{"i": x["i"], "result": x["i"] * 2} for x in chunk]
            f.write(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
            del keys
    return time.perf_counter() - t0


def journaled(
    data: list[dict[str, int]], batch: int, directory: Path, fmt: str, fsync: bool
) -> tuple[float, dict[str, float]]:
    ext = {"jsonl": "jsonl", "csv": "csv", "sqlite": "db", "parquet": "parquet"}[fmt]
    parts = {"keys+records": 0.0, "mark_started": 0.0, "record": 0.0, "close": 0.0}
    t0 = time.perf_counter()
    journal = SqliteJournal(
        directory / "journal.db",
        "bench",
        output=open_output(directory / f"out.{ext}", fsync=fsync),
        failures=FailuresOutput(directory / "failures.jsonl", fsync=fsync),
    )
    for s in range(0, len(data), batch):
        t = time.perf_counter()
        chunk = data[s : s + batch]
        keys = [key_of(x) for x in chunk]
        t1 = time.perf_counter()
        run = journal.mark_started(keys)
        t2 = time.perf_counter()
        recs = [
            Record.done(k, {"i": x["i"], "result": x["i"] * 2})
            for k, x, go in zip(keys, chunk, run, strict=True)
            if go
        ]
        t3 = time.perf_counter()
        journal.record(recs)
        t4 = time.perf_counter()
        parts["keys+records"] += (t1 - t) + (t3 - t2)
        parts["mark_started"] += t2 - t1
        parts["record"] += t4 - t3
    t = time.perf_counter()
    journal.close()
    parts["close"] += time.perf_counter() - t
    return time.perf_counter() - t0, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--format", default="jsonl")
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    args = ap.parse_args()
    data = items(args.items)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        base = bare(data, args.batch, directory / "bare.jsonl")
        total, parts = journaled(data, args.batch, directory, args.format, not args.no_fsync)
        size = os.path.getsize(directory / "journal.db")
    n = args.items
    print(f"{n:,} items, batches of {args.batch}, format {args.format}, fsync {not args.no_fsync}")
    for name, secs in (("without journal", base), ("with journal", total)):
        per_item = secs / n * 1e6
        print(
            f"  {name + ':':<17}{secs:7.2f} s  {per_item:6.2f} us/item  {n / secs:10,.0f} items/s"
        )
    for name, secs in parts.items():
        print(f"    {name:<13} {secs:7.2f} s  {secs / n * 1e6:6.2f} us/item")
    cost = (total - base) / n
    print(f"  journal cost:    {cost * 1e6:6.2f} us/item")
    for rate in (10_000, 100_000, 1_000_000):
        print(f"    overhead on a run doing {rate:>9,} items/s: {cost * rate * 100:7.1f} %")
    print(f"  journal size: {size / n:.0f} bytes/item")


if __name__ == "__main__":
    main()
