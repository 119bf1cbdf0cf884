"""Readers of every output format and of the journal database, shared by the tests."""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from spindle.journal import item_states


def read_jsonl(path: Path) -> list[Any]:
    """Every line parsed; a torn or invalid line fails the test."""
    data = path.read_bytes()
    if not data:
        return []
    assert data.endswith(b"\n"), f"{path} ends with a torn line: {data[-80:]!r}"
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} ends with a torn row: {data[-80:]!r}"
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_sqlite(path: Path, table: str = "results") -> list[dict[str, Any]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            return []
        return [dict(row) for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY _seq')]
    finally:
        conn.close()


def read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for part in sorted(path.glob("part-*.parquet")):
        with open(part, "rb") as f:  # closed here, not later by one of pyarrow's threads
            rows.extend(pq.read_table(f).to_pylist())
    return rows


def read_output(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The records in an output, as dicts (CSV values as text)."""
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return list(read_csv(path))
    if fmt == "sqlite":
        return read_sqlite(path)
    if fmt == "parquet":
        return read_parquet(path)
    raise ValueError(fmt)


EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "sqlite": "db", "parquet": "parquet"}


def journal_states(path: Path) -> dict[Any, str]:
    """key -> state: the journal's index, its log and the keys its runs had in flight."""
    return item_states(path)


def journal_totals(path: Path) -> dict[str, int]:
    """The totals table, checked against a count of every key's state."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        totals = dict(conn.execute("SELECT state, n FROM totals").fetchall())
        in_flight = conn.execute("SELECT coalesce(sum(inflight_n), 0) FROM runs").fetchone()[0]
    finally:
        conn.close()
    totals["pending"] = totals.get("pending", 0) + in_flight
    counted = Counter(item_states(path).values())
    for state in ("pending", "done", "failed"):
        assert totals.get(state, 0) == counted.get(state, 0), (totals, counted)
    return totals
