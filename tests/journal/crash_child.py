"""The process the crash test kills: runs a fixed input through a journal and an output.

    python crash_child.py DIR FORMAT ITEMS SEED [COMMIT_INTERVAL]

The input is the same on every run (``ITEMS`` values plus some repeated ones); the
batch sizes come from ``SEED``, so each run cuts the work differently. Prints ``ready``
once the journal is open (recovery done), ``commit N`` after each commit, and
``finished`` after a clean close: the parent waits on these lines, never on time.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import orjson

from spindle.connectors import FailuresOutput, open_output
from spindle.journal import Record, SqliteJournal

EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "sqlite": "db", "parquet": "parquet"}


def inputs(n: int) -> list[int]:
    """0..n-1 with every tenth value repeated a little later (duplicates run once)."""
    values: list[int] = []
    for i in range(n):
        values.append(i)
        if i % 10 == 9:
            values.append(i - 5)
    return values


def key_of(value: int) -> bytes:
    return hashlib.blake2b(orjson.dumps({"item": value}), digest_size=16).digest()


def is_failure(value: int) -> bool:
    return value % 11 == 0


def main() -> None:
    directory, fmt, n, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    interval = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    rng = random.Random(seed)
    options = {"min_rows": 500, "max_delay": 0.0} if fmt == "parquet" else {}
    journal = SqliteJournal(
        directory / "journal.db",
        "crash-test",
        output=open_output(directory / f"out.{EXTENSIONS[fmt]}", **options),
        failures=FailuresOutput(directory / "failures.jsonl"),
        commit_interval=interval,
        commit_items=2000,
    )
    print("ready", flush=True)
    values = inputs(n)
    commits = 0
    pos = 0
    while pos < len(values):
        chunk = values[pos : pos + rng.randint(1, 400)]
        pos += len(chunk)
        keys = [key_of(v) for v in chunk]
        records = []
        for key, value, run in zip(keys, chunk, journal.mark_started(keys), strict=True):
            if not run:
                continue
            if is_failure(value):
                failure = {"key": key.hex(), "item": value, "error": "ValueError"}
                records.append(Record.failed(key, "ValueError", f"bad {value}", failure))
            else:
                records.append(Record.done(key, {"key": key.hex(), "item": value, "sq": value**2}))
        journal.record(records)
        if journal.stats().commits != commits:
            commits = journal.stats().commits
            print(f"commit {commits}", flush=True)
    journal.close()
    print("finished", flush=True)


if __name__ == "__main__":
    main()
