"""PostgreSQL as a source against the local server: a query read in key order (resumed by
a journal), and a queue table claimed by concurrent readers, settled exactly once when the
sink is a table of the same database."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import spindle
from spindle import ConfigError
from spindle.connectors import (
    AckSource,
    InputError,
    MemorySink,
    Message,
    PostgresQuerySource,
    PostgresQueueSource,
    PostgresSink,
    StreamRun,
    acknowledges,
    open_sink,
    open_source,
)

from ._cli import refused_in_one_line, spindle_map
from ._servers import POSTGRES_URL, postgres_url, unique

pytestmark = pytest.mark.timeout(120)

QUEUE_TABLE = (
    "(key text PRIMARY KEY, input {input} , done boolean NOT NULL DEFAULT false, "
    "claimed_by text, claimed_at timestamptz)"
)


@pytest.fixture
def names(pg: Any) -> Iterator[Callable[[str], str]]:
    """Table names of this test's own (each with its failures table, dropped afterwards)."""
    made: list[str] = []

    def name(prefix: str) -> str:
        made.append(unique(prefix))
        return made[-1]

    yield name
    for table in made:
        pg.execute(f"DROP TABLE IF EXISTS {table}, {table}_failures")


def query_url(query: str, key: str, **params: Any) -> str:
    return f"{POSTGRES_URL}?{urlencode({'query': query, 'key': key, **params})}"


def query_source(query: str, key: str, **params: Any) -> PostgresQuerySource:
    opened = open_source(query_url(query, key, **params))
    assert isinstance(opened, PostgresQuerySource)
    return opened


def queue(pg: Any, table: str, bodies: dict[str, Any], input_type: str = "jsonb") -> None:
    """Make the queue table ``table`` holding ``bodies`` (key -> input)."""
    pg.execute(f"CREATE TABLE {table} {QUEUE_TABLE.format(input=input_type)}")
    with pg.cursor() as cur, cur.copy(f"COPY {table} (key, input) FROM STDIN") as copy:
        for key, body in bodies.items():
            copy.write_row((key, body if isinstance(body, str) else json.dumps(body)))


def queue_source(table: str, drain: bool = True, **params: Any) -> PostgresQueueSource:
    url = f"{postgres_url(table)}&{urlencode(params)}" if params else postgres_url(table)
    opened = open_source(url, drain=drain)
    assert isinstance(opened, PostgresQueueSource)
    return opened


def states(pg: Any, table: str) -> dict[str, bool]:
    return dict(pg.execute(f"SELECT key, done FROM {table}").fetchall())


def drop_sessions(pg: Any, pattern: str) -> None:
    """End the server sessions whose application_name is like ``pattern`` and wait,
    at most ten seconds each, until they are gone (as a crashed client's are, soon)."""
    pg.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
        (pattern,),
    )


# -- query mode -------------------------------------------------------------------------


def test_a_query_is_read_in_key_order_a_page_at_a_time(pg: Any, names: Any) -> None:
    t = names("rows")
    pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, word text)")
    order = [17, 3, 25, 1, 9, 12, 4, 22, 8, 15, 2, 19, 6, 11, 24, 5, 20, 7, 14, 10, 23, 13]
    pg.execute(f"INSERT INTO {t} SELECT i, 'w' || i FROM unnest(%s::int[]) i", (order,))
    with query_source(f"SELECT * FROM {t} WHERE id <> 13", "id", page=4) as src:
        pages = list(src.chunks())
        assert all(len(p) == 4 for p in pages[:-1]) and 0 < len(pages[-1]) <= 4
        ids = [row["id"] for p in pages for row in p]
        assert ids == sorted(set(order) - {13})
        assert pages[0][0] == {"id": 1, "word": "w1"}
        assert src.stats() == {"rows": 21, "pages": 6, "skipped": 0, "null_keys": 0}
        assert "21 rows in 6 pages" in repr(src)
    with query_source(f"SELECT id FROM {t}", "id", page=5) as src:
        assert src.count() == len(order)
        assert list(src) == [{"id": i} for i in sorted(order)]  # one at a time, too


def test_rows_of_various_types_come_as_json(pg: Any) -> None:
    query = (
        "SELECT 1 AS id, 12.50::numeric AS price, 'NaN'::numeric AS nan, "
        "'2024-05-06 07:08:09+00'::timestamptz AS at, '2024-05-06'::date AS day, "
        "'2024-05-06 07:08:09'::timestamp AS local, true AS yes, NULL::text AS nothing, "
        'ARRAY[1, 2] AS ints, \'{"a": [1, {"b": null}]}\'::jsonb AS doc, '
        "'\\x01ff'::bytea AS raw, '00000000-0000-0000-0000-000000000001'::uuid AS u, "
        "interval '1 day 2 hours' AS span, 'Infinity'::float8 AS inf, "
        "'tab\tand \"quote\" and é'::text AS text, 9007199254740993::bigint AS big"
    )
    with query_source(query, "id") as src:
        (row,) = list(src)
    assert row == {
        "id": 1,
        "price": 12.5,
        "nan": "NaN",
        "at": "2024-05-06T07:08:09+00:00",
        "day": "2024-05-06",
        "local": "2024-05-06T07:08:09",
        "yes": True,
        "nothing": None,
        "ints": [1, 2],
        "doc": {"a": [1, {"b": None}]},
        "raw": "\\x01ff",
        "u": "00000000-0000-0000-0000-000000000001",
        "span": "1 day 02:00:00",
        "inf": "Infinity",
        "text": 'tab\tand "quote" and é',
        "big": 9007199254740993,
    }


def test_text_keys_go_in_the_servers_order_and_null_keys_come_last(pg: Any, names: Any) -> None:
    t = names("text")
    pg.execute(f"CREATE TABLE {t} (k text, n int)")
    keys = ["b", "B", "a", "a b", "ab", "%", "10", "9", None, "é", None]
    pg.execute(
        f"INSERT INTO {t} SELECT * FROM unnest(%s::text[], %s::int[])", (keys, list(range(11)))
    )
    expected = [r[0] for r in pg.execute(f"SELECT k FROM {t} WHERE k IS NOT NULL ORDER BY k")]
    with query_source(f"SELECT * FROM {t} WHERE k LIKE '%' OR k IS NULL", "k", page=3) as src:
        rows = list(src.chunks())
        got = [r["k"] for p in rows for r in p]
        assert got[:-2] == expected and got[-2:] == [None, None]
        assert src.null_keys == 2


def test_a_key_that_is_not_unique_is_one_line(pg: Any, names: Any) -> None:
    t = names("dup")
    pg.execute(f"CREATE TABLE {t} (id int)")
    pg.execute(f"INSERT INTO {t} VALUES (1), (2), (3), (3), (4)")
    src = query_source(f"SELECT * FROM {t}", "id", page=3)  # 3 ends a page
    with src, pytest.raises(InputError) as info:
        list(src)
    text = str(info.value)
    assert "\n" not in text and "key=id is not unique (more than one row has 3)" in text


def test_skip_done_starts_after_the_first_rows_done(pg: Any, names: Any) -> None:
    t = names("skip")
    pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
    pg.execute(f"INSERT INTO {t} SELECT generate_series(1, 50)")
    done = set(range(1, 31)) | {33, 40}
    asked: list[int] = []

    def still_to_run(rows: list[dict[str, int]]) -> list[bool]:
        asked.extend(r["id"] for r in rows)
        return [r["id"] not in done for r in rows]

    with query_source(f"SELECT * FROM {t}", "id", page=7) as src:
        src.skip_done(still_to_run)
        ids = [r["id"] for r in src]
        assert ids == list(range(31, 51))  # 33 and 40 are the journal's to skip
        assert src.skipped == 30 and asked == list(range(1, 51))
    with query_source(f"SELECT * FROM {t}", "id", page=7) as src:
        src.skip_done(lambda rows: [False] * len(rows))  # all done: nothing to read
        assert list(src) == [] and src.skipped == 50


@pytest.mark.parametrize(
    ("url", "error", "expected"),
    [
        (f"{POSTGRES_URL}?key=id", ConfigError, "add &query=SQL&key=COLUMN or ?table=NAME"),
        (f"{POSTGRES_URL}?query=SELECT+1+AS+id", ConfigError, "add &key=NAME"),
        (query_url("SELECT 1 AS n", "id"), ConfigError, "key=id is not a column of the query"),
        (
            query_url("SELEC 1 AS id", "id"),
            InputError,
            "the query fails: syntax error at or near",
        ),
        (query_url("SELECT * FROM spindle_no_such_table", "id"), InputError, "does not exist"),
        (query_url("SELECT 1 AS id", "id", page="0"), ConfigError, "page=0 must be at least 1"),
        (f"{POSTGRES_URL}?query=SELECT+1&key=id&table=t", ConfigError, "not both"),
    ],
)
def test_a_bad_query_url_is_one_line(pg: Any, url: str, error: type, expected: str) -> None:
    with pytest.raises(error) as info:
        open_source(url).close()
    text = str(info.value)
    assert "\n" not in text and expected in text


def test_a_query_failing_while_read_is_one_line(pg: Any) -> None:
    with (
        query_source(
            "SELECT i AS id, 1 / (3 - i) AS x FROM generate_series(1, 5) i", "id", page=1
        ) as src,
        pytest.raises(InputError) as info,
    ):
        list(src)
    assert str(info.value).startswith(f"cannot read {POSTGRES_URL}?query=")
    assert "division by zero" in str(info.value) and "\n" not in str(info.value)


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    pytest.importorskip("psycopg", reason="the psycopg client is not installed")
    for url in (
        "postgresql://spindle:hunter2@127.0.0.1:1/test?query=SELECT+1+AS+id&key=id",
        "postgresql://spindle:hunter2@127.0.0.1:1/test?table=jobs",
    ):
        with pytest.raises(InputError) as info:
            open_source(url)
        text = str(info.value)
        assert "hunter2" not in text and "\n" not in text
        assert text.startswith("cannot connect to postgresql://spindle:***@127.0.0.1:1/test?")


def test_a_missing_client_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for url in (query_url("SELECT 1 AS id", "id"), f"{POSTGRES_URL}?table=jobs"):
        with pytest.raises(ConfigError, match=r"pip install 'spindle\[postgres\]'"):
            open_source(url)


def test_which_urls_acknowledge() -> None:
    assert acknowledges(f"{POSTGRES_URL}?table=jobs")
    assert not acknowledges(query_url("SELECT 1 AS id", "id"))
    assert acknowledges("redis://127.0.0.1:6379/0?stream=s&group=g")


# -- queue-table mode --------------------------------------------------------------------


def test_rows_are_claimed_then_marked_done_by_ack(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {f"k{i:02}": {"n": i} for i in range(10)})
    with queue_source(jobs, consumer="first") as src:
        assert src.lag() == 10
        msgs = src.read(4, 0)
        assert [(m.key, m.body, m.redelivered) for m in msgs] == [
            (f"k{i:02}", {"n": i}, False) for i in range(4)
        ]
        claimed = pg.execute(f"SELECT claimed_by FROM {jobs} WHERE claimed_by IS NOT NULL")
        assert {r[0] for r in claimed} == {src.claimer} and src.claimer.startswith("spindle first ")
        src.ack([m.token for m in msgs[:3]])
        assert states(pg, jobs) == {f"k{i:02}": i < 3 for i in range(10)}
        rest = src.read(100, 0)
        assert [m.key for m in rest] == [f"k{i:02}" for i in range(4, 10)]
        assert src.read(100, 0) == []  # drained: k03 is its own, claimed
        src.ack([msgs[3].token, *(m.token for m in rest)])
        assert all(states(pg, jobs).values()) and src.lag() == 0
        assert src.stats()["marked"] == 10 and src.stats()["settled"] == 0


def test_two_readers_at_once_never_get_the_same_row(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    n = 3000
    queue(pg, jobs, {f"{i:05}": i for i in range(n)})
    got: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    both_open = threading.Barrier(2, timeout=30)

    def consume(who: str) -> None:
        try:
            with queue_source(jobs, consumer=who) as src:
                both_open.wait()
                while msgs := src.read(7, 0):
                    got[who].extend(m.key for m in msgs)
                    src.ack([m.token for m in msgs])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(w,)) for w in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    a, b = set(got["a"]), set(got["b"])
    assert len(a) == len(got["a"]) and len(b) == len(got["b"])
    assert not a & b and len(a | b) == n and a and b
    assert all(states(pg, jobs).values())


def test_a_crashed_readers_rows_come_back_at_once(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {f"k{i}": i for i in range(20)})
    crashed = queue_source(jobs, consumer="crashed")
    taken = {m.key for m in crashed.read(8, 0)}
    with queue_source(jobs, consumer="other") as other:
        msgs = other.read(100, 0)  # the first reader lives: its rows are its own
        assert {m.key for m in msgs} == {f"k{i}" for i in range(20)} - taken
        assert not any(m.redelivered for m in msgs)
        other.ack([m.token for m in msgs])
        crashed.conn.close()  # as when its process dies: the claiming session ends
        drop_sessions(pg, crashed.claimer)
        again = other.read(100, 0)
        assert {m.key for m in again} == taken and all(m.redelivered for m in again)
        assert other.stats()["taken_over"] == 8
        other.ack([m.token for m in again])
    crashed.close()
    assert all(states(pg, jobs).values())


def test_a_lease_takes_rows_back_from_a_live_reader(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {"a": 1, "b": 2})
    with queue_source(jobs, consumer="slow") as slow, queue_source(jobs, lease="0") as eager:
        assert len(slow.read(1, 0)) == 1
        msgs = eager.read(10, 0)  # lease 0: every claim is past its lease
        assert sorted((m.key, m.redelivered) for m in msgs) == [("a", True), ("b", False)]
        assert eager.stats()["lease"] == 0


def test_drain_ends_when_no_undone_row_is_left_unclaimed(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {"a": 1, "b": 2, "c": 3})
    pg.execute(f"UPDATE {jobs} SET done = true WHERE key = 'c'")
    with queue_source(jobs) as holder:
        held = holder.read(1, 0)
        with queue_source(jobs) as drained:
            run = StreamRun(drained, MemorySink())
            run.run(spindle.Pipeline([spindle.thread(lambda x: x * 10)], on_error="yield"))
            assert run.acked == 1 and drained.lag() == 1  # "a" is the live holder's
        holder.ack([m.token for m in held])
        assert holder.read(5, 0) == [] and holder.lag() == 0
    assert states(pg, jobs) == {"a": True, "b": True, "c": True}


def test_a_waiting_reader_gets_a_row_added_meanwhile(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {})
    with queue_source(jobs, drain=False) as src:
        got: list[Message] = []
        reader = threading.Thread(target=lambda: got.extend(src.read(10, 30)))
        started = time.monotonic()
        reader.start()
        pg.execute(f"INSERT INTO {jobs} (key, input) VALUES ('new', '5'); NOTIFY {jobs}")
        reader.join(30)
        assert [m.body for m in got] == [5] and time.monotonic() - started < 25


def test_text_inputs_are_parsed_and_malformed_ones_fail_alone(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {"a": '{"n": 1}', "b": "{oops", "c": '"s"'}, input_type="text")
    with queue_source(jobs) as src:
        a, b, c = src.read(10, 0)
        assert a.body == {"n": 1} and c.body == "s"
        assert isinstance(b.body, spindle.Failure) and b.body.error == "MalformedInput"
        assert "row b: not valid JSON" in b.body.message
    with open_source(postgres_url(jobs), fmt="text", drain=True) as src:
        assert isinstance(src, AckSource)
        assert [m.body for m in src.read(10, 0)] == ['{"n": 1}', "{oops", '"s"']


def test_a_table_that_is_not_a_queue_says_what_it_lacks(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    with pytest.raises(InputError) as info:
        queue_source(jobs)
    assert f"there is no table {jobs} to read; a queue table is CREATE TABLE" in str(info.value)
    pg.execute(f"CREATE TABLE {jobs} (key int, input jsonb, done boolean, extra int)")
    with pytest.raises(InputError) as info:
        queue_source(jobs)
    text = str(info.value)
    assert "\n" not in text and f"table {jobs} is not a queue table" in text
    for problem in (
        "no column claimed_by",
        "no column claimed_at",
        "key is not its primary key",
        "done may be null",
    ):
        assert problem in text
    with pytest.raises(ConfigError, match="leave out --key id"):
        open_source(postgres_url(jobs), key="id")


def test_the_same_database_sink_settles_rows_in_its_transaction(pg: Any, names: Any) -> None:
    jobs, results = names("jobs"), names("results")
    bodies: dict[str, Any] = {f"k{i:03}": {"n": i} for i in range(300)}
    bodies["k007"] = {"n": 7, "poison": True}
    queue(pg, jobs, bodies)

    def job(x: dict[str, Any]) -> Any:
        if x.get("poison"):
            raise ValueError("poisoned")
        return "nul \x00" if x["n"] == 8 else x["n"] * 2  # jsonb refuses a NUL

    with queue_source(jobs) as src, open_sink(postgres_url(results)) as sink:
        assert isinstance(sink, PostgresSink)
        run = StreamRun(src, sink, read_size=50)
        run.run(spindle.Pipeline([spindle.thread(job)], on_error="yield"))
        assert sink.settled == 300 and src.settled == 300 and src.marked == 0
        assert run.acked == 300
    assert all(states(pg, jobs).values())
    assert pg.execute(f"SELECT count(*) FROM {results}").fetchone() == (298,)
    failures = dict(pg.execute(f"SELECT key, error FROM {results}_failures").fetchall())
    assert failures == {"k007": "ValueError", "k008": "Unwritable"}


def test_another_sink_is_acknowledged_after_its_commit(pg: Any, names: Any) -> None:
    jobs = names("jobs")
    queue(pg, jobs, {f"k{i}": i for i in range(100)})
    with queue_source(jobs) as src:
        sink = MemorySink()
        StreamRun(src, sink, read_size=30).run(
            spindle.Pipeline([spindle.thread(lambda x: x + 1)], on_error="yield")
        )
        assert src.marked == 100 and src.settled == 0 and len(sink.results) == 100
    assert all(states(pg, jobs).values())


# -- the command line --------------------------------------------------------------------

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
        time.sleep(120)
    return x["n"] * 2
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOB)
    return tmp_path


def killed_at(pg: Any, work: Path, stop_at: int, *args: str) -> None:
    """Run ``spindle map`` until the job of ``n == stop_at`` runs (it writes to a FIFO),
    then SIGKILL the run (the command and its workers); return once the server has
    ended the run's sessions, as it soon does for a client that died."""
    fifo = work / f"started-{stop_at}"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    env = dict(os.environ, SPINDLE_TEST_FIFO=str(fifo), SPINDLE_TEST_STOP_AT=str(stop_at))
    proc = subprocess.Popen(
        [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        ready, _, _ = select.select([reader], [], [], 60)
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert ready, f"the job of n={stop_at} never started: {err}"
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    drop_sessions(pg, f"spindle %:{proc.pid}%")


def test_a_query_into_a_file_resumes_from_its_journal_after_a_kill(
    pg: Any, names: Any, work: Path
) -> None:
    t = names("rows")
    n = 6000
    pg.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, n int, poison boolean)")
    pg.execute(f"INSERT INTO {t} SELECT i, i, i % 1000 = 0 FROM generate_series(1, {n}) i")
    url = query_url(f"SELECT * FROM {t}", "id", page=200)
    command = ["jobs:work", url, "-o", "out.jsonl", "--journal", "j.db"]
    killed_at(pg, work, 2500, *command)
    assert len((work / "out.jsonl").read_text().splitlines()) < n
    again = spindle_map(*command, cwd=work)
    assert again.returncode == 1, again.stderr  # the poisoned rows failed
    lines = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
    ids = [r["input"]["id"] for r in lines]
    assert sorted(ids) == [i for i in range(1, n + 1) if i % 1000] and len(set(ids)) == len(ids)
    assert all(r["result"] == r["input"]["n"] * 2 for r in lines)
    failed = (work / "out.jsonl.failures.jsonl").read_text().splitlines()
    assert sorted(json.loads(f)["input"]["id"] for f in failed) == list(range(1000, n + 1, 1000))
    assert " 0 pending in all" in again.stderr
    changed = query_url(f"SELECT * FROM {t} WHERE id > 5", "id", page=200)
    other = spindle_map("jobs:work", changed, "-o", "out.jsonl", "--journal", "j.db", cwd=work)
    assert other.returncode == 2 and "made by another command" in other.stderr


def test_a_queue_table_into_the_same_database_is_exactly_once_across_kills(
    pg: Any, names: Any, work: Path
) -> None:
    jobs, results = names("jobs"), names("results")
    n = 20_000
    pg.execute(f"CREATE TABLE {jobs} {QUEUE_TABLE.format(input='text')}")
    pg.execute(
        f"INSERT INTO {jobs} (key, input) SELECT lpad(i::text, 6, '0'), "
        "CASE WHEN i % 5000 = 1 THEN '{not json' "
        "WHEN i % 5000 = 2 THEN json_build_object('n', i, 'poison', true)::text "
        "WHEN i % 5000 = 3 THEN '[1, 2]' "
        f"ELSE json_build_object('n', i)::text END FROM generate_series(0, {n - 1}) i"
    )
    command = ["jobs:work", postgres_url(jobs), "-o", postgres_url(results)]
    killed_at(pg, work, 6000, *command)
    first = pg.execute(f"SELECT count(*) FROM {results}").fetchone()[0]
    killed_at(pg, work, 14000, *command)
    second = pg.execute(f"SELECT count(*) FROM {results}").fetchone()[0]
    assert first <= second < n
    done = spindle_map(*command, "--drain", cwd=work)
    assert done.returncode == 1, done.stderr  # the expected failures
    redelivered = re.search(r"read \(([\d,]+) redelivered\)", done.stderr)
    assert redelivered and int(redelivered[1].replace(",", "")) > 0, done.stderr  # 14000
    assert "lag 0" in done.stderr
    assert pg.execute(f"SELECT count(*) FILTER (WHERE NOT done) FROM {jobs}").fetchone() == (0,)
    bad = {i for i in range(n) if i % 5000 in (1, 2, 3)}
    keys = [r[0] for r in pg.execute(f"SELECT key FROM {results}")]
    assert len(keys) == len(set(keys)) == n - len(bad)
    assert {int(k) for k in keys} == set(range(n)) - bad
    wrong = pg.execute(
        f"SELECT count(*) FROM {results} WHERE (result)::int <> 2 * key::int"
    ).fetchone()
    assert wrong == (0,)
    failures = dict(pg.execute(f"SELECT key, error FROM {results}_failures").fetchall())
    expected = {1: "MalformedInput", 2: "ValueError", 3: "AttributeError"}
    assert failures == {f"{i:06}": expected[i % 5000] for i in sorted(bad)}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["postgresql://u:pw@127.0.0.1:1/test?query=SELECT+1+AS+id&key=id", "-o", "o.jsonl"],
            "cannot connect to postgresql://u:***@127.0.0.1:1/test?query=",
        ),
        ([query_url("SELECT 1 AS id", "id"), "-o", "o.jsonl", "--drain"], "a query ends by itself"),
        (
            [postgres_url("jobs"), "-o", "o.jsonl", "--journal", "j.db"],
            "leave out --journal",
        ),
        (
            [query_url("SELECT 1 AS id", "id"), "-o", postgres_url("t"), "--journal", "j.db"],
            "into a database or a stream the sink's own keys make each record once",
        ),
        ([f"{POSTGRES_URL}?query=SELECT+1", "-o", "o.jsonl"], "add &key=NAME"),
    ],
)
def test_bad_postgres_inputs_are_one_line(
    pg: Any, work: Path, args: list[str], expected: str
) -> None:
    refused_in_one_line(work, args, expected, job="jobs:work")
