"""``spindle map`` between Redis streams, PostgreSQL tables and files, run as a user runs
it: drained, killed and run again, stopped with Ctrl-C, given a poison message."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from ._cli import refused_in_one_line, spindle_map
from ._servers import postgres_url, redis_url

JOB = """
import os, time

def work(x):
    if x.get("poison"):
        raise ValueError("poisoned")
    stop = os.environ.get("SPINDLE_TEST_STOP_AT")
    if stop is not None and x["n"] == int(stop):
        fd = os.open(os.environ["SPINDLE_TEST_FIFO"], os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"x")
        os.close(fd)
        time.sleep(float(os.environ.get("SPINDLE_TEST_SLEEP", "120")))
    return x["n"] * 2

def shout(text):
    return text.upper()
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOB)
    return tmp_path


def add(client: Any, stream: str, bodies: list[Any]) -> None:
    pipe = client.pipeline(transaction=False)
    for body in bodies:
        pipe.xadd(stream, {"data": orjson.dumps(body) if not isinstance(body, bytes) else body})
    pipe.execute()


def group_state(client: Any, stream: str, group: str) -> dict[str, int]:
    """The group's entries read, pending (read, not acknowledged) and lag."""
    for g in client.xinfo_groups(stream):
        if g["name"] == group.encode():
            return {"read": g["entries-read"], "pending": g["pending"], "lag": g["lag"]}
    raise AssertionError(f"no group {group}")


def count(pg: Any, table: str) -> int:
    row = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


def started(work: Path, *args: str, stop_at: int, sleep: float = 120) -> tuple[Any, int]:
    """Start ``spindle map`` in a session of its own; return once the job of message
    ``stop_at`` runs (it writes to a FIFO), with that job held for ``sleep`` seconds."""
    fifo = work / "started"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    env = dict(
        os.environ,
        SPINDLE_TEST_FIFO=str(fifo),
        SPINDLE_TEST_STOP_AT=str(stop_at),
        SPINDLE_TEST_SLEEP=str(sleep),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ready, _, _ = select.select([reader], [], [], 90)
    if not ready:
        proc.kill()
        os.close(reader)
        _out, err = proc.communicate()
        raise AssertionError(f"the job of message {stop_at} never started: {err}")
    return proc, reader


def test_redis_to_postgres_drained(
    work: Path, redis_client: Any, stream: str, pg: Any, table: str
) -> None:
    n = 3000
    add(redis_client, stream, [{"n": i} for i in range(n)])
    add(redis_client, stream, [b"{not json", {"n": -1, "poison": True}])
    done = spindle_map(
        "jobs:work", redis_url(stream, group="g"), "-o", postgres_url(table), "--drain", cwd=work
    )
    assert done.returncode == 1, done.stderr  # two failures
    assert count(pg, table) == n
    ids = {e[0].decode() for e in redis_client.xrange(stream)}
    keys = {r[0] for r in pg.execute(f"SELECT key FROM {table}")}
    fails = dict(pg.execute(f"SELECT error, key FROM {table}_failures").fetchall())
    assert set(fails) == {"MalformedInput", "ValueError"}
    assert keys | set(fails.values()) == ids and not keys & set(fails.values())
    assert pg.execute(f"SELECT sum((result)::int) FROM {table}").fetchone()[0] == n * (n - 1)
    assert group_state(redis_client, stream, "g") == {"read": n + 2, "pending": 0, "lag": 0}
    assert f"{n + 2:,} read (0 redelivered), {n + 2:,} acknowledged" in done.stderr


@pytest.mark.parametrize("again_as", ["the same consumer", "another consumer"])
def test_killed_mid_stream_then_run_again_writes_each_message_once(
    work: Path, redis_client: Any, stream: str, pg: Any, table: str, again_as: str
) -> None:
    n = 4000
    add(redis_client, stream, [{"n": i} for i in range(n)])
    source = redis_url(stream, group="g", consumer="first")
    command = ["jobs:work", source, "-o", postgres_url(table), "--drain"]
    proc, reader = started(work, *command, stop_at=2500)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run: the command and its workers
        proc.communicate(timeout=30)
    finally:
        os.close(reader)
    assert proc.returncode == -signal.SIGKILL
    before = group_state(redis_client, stream, "g")
    assert before["pending"] > 0 and count(pg, table) < n  # killed in the middle
    if again_as == "another consumer":  # a consumer of another host takes them over
        source = redis_url(stream, group="g", consumer="second", claim_idle="0")
    again = spindle_map("jobs:work", source, "-o", postgres_url(table), "--drain", cwd=work)
    assert again.returncode == 0, again.stderr
    assert count(pg, table) == n
    assert pg.execute(f"SELECT count(DISTINCT result) FROM {table}").fetchone()[0] == n
    assert group_state(redis_client, stream, "g") == {"read": n, "pending": 0, "lag": 0}
    redelivered = f"({before['pending']:,} redelivered)"
    assert redelivered in again.stderr, again.stderr


def test_ctrl_c_acknowledges_what_is_durable_and_leaves_the_rest(
    work: Path, redis_client: Any, stream: str, pg: Any, table: str
) -> None:
    # Batches of one item and ordered results: while message 1000 is held, the run holds
    # a few messages in flight and reads no further than its bound (some 16,000).
    n = 40_000
    add(redis_client, stream, [{"n": i} for i in range(n)])
    command = ["jobs:work", redis_url(stream, group="g"), "-o", postgres_url(table)]
    proc, reader = started(
        work, *command, "--grace", "30", "--batch-size", "1", stop_at=1000, sleep=0.5
    )
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    state = group_state(redis_client, stream, "g")
    rows = count(pg, table)
    # Every committed row was acknowledged, and nothing else: read = acknowledged + pending.
    assert rows == state["read"] - state["pending"] and rows > 1000
    assert state["pending"] > 0 and state["lag"] > 0  # left for a later run
    again = spindle_map(
        "jobs:work", redis_url(stream, group="g"), "-o", postgres_url(table), "--drain", cwd=work
    )
    assert again.returncode == 0, again.stderr
    assert count(pg, table) == n
    assert group_state(redis_client, stream, "g") == {"read": n, "pending": 0, "lag": 0}


def test_a_stream_into_a_file_and_a_file_into_a_stream(
    work: Path, redis_client: Any, stream: str
) -> None:
    add(redis_client, stream, ["a", "b", "c"])
    first = spindle_map(
        "jobs:shout",
        redis_url(stream, group="g"),
        "--format",
        "text",
        "-o",
        "out.jsonl",
        "--drain",
        cwd=work,
    )
    assert first.returncode == 0, first.stderr
    lines = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
    assert lines == [{"input": f'"{c}"', "result": f'"{c.upper()}"'} for c in "abc"]
    add(redis_client, stream, ["d"])
    second = spindle_map(
        "jobs:shout",
        redis_url(stream, group="g"),
        "--format",
        "text",
        "-o",
        "out.jsonl",
        "--drain",
        cwd=work,
    )
    assert second.returncode == 0, second.stderr
    assert len((work / "out.jsonl").read_text().splitlines()) == 4  # appended, not cut
    out = f"{stream}-out"
    try:
        (work / "in.txt").write_text("x\ny\n")
        into = spindle_map("jobs:shout", "in.txt", "-o", redis_url(out), cwd=work)
        assert into.returncode == 0, into.stderr
        data = [orjson.loads(e[1][b"data"]) for e in redis_client.xrange(out)]
        assert data == ["X", "Y"]
    finally:
        redis_client.delete(out)


def test_a_file_into_postgres_by_key_twice_writes_each_key_once(
    work: Path, pg: Any, table: str
) -> None:
    (work / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "n": i}) + "\n" for i in range(500))
    )
    for _ in range(2):
        done = spindle_map(
            "jobs:work",
            "in.jsonl",
            "--format",
            "jsonl",
            "--key",
            "id",
            "-o",
            postgres_url(table),
            cwd=work,
        )
        assert done.returncode == 0, done.stderr
    assert count(pg, table) == 500
    assert pg.execute(f"SELECT result FROM {table} WHERE key = 'r7'").fetchone() == (14,)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["redis://:pw@127.0.0.1:1/0?stream=s&group=g", "-o", "o.jsonl"],
            "cannot connect to redis://:***@127.0.0.1:1/0",
        ),
        (["redis://127.0.0.1:1/0?stream=s", "-o", "o.jsonl"], "add &group=NAME"),
        (
            ["in.txt", "-o", "postgresql://u:pw@127.0.0.1:1/test?table=t"],
            "cannot connect to postgresql://u:***@127.0.0.1:1/test",
        ),
        (
            ["in.txt", "-o", "out.jsonl", "--drain"],
            "--drain applies to a broker or queue-table INPUT",
        ),
        (
            ["redis://127.0.0.1:1/0?stream=s&group=g", "-o", "o.jsonl", "--journal", "j.db"],
            "leave out --journal",
        ),
    ],
)
def test_bad_urls_and_options_are_one_line(work: Path, args: list[str], expected: str) -> None:
    pytest.importorskip("redis", reason="the redis client is not installed")
    pytest.importorskip("psycopg", reason="the psycopg client is not installed")
    refused_in_one_line(work, args, expected)
