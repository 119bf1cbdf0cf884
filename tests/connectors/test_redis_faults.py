"""A Redis server that goes away in the middle of a run: killed and restarted, gone for
good, or back without its data; and ``spindle map`` through killed workers, killed runs
and a killed server.

These tests start a redis-server of their own on a free port, with its data in the
test's directory (``--appendonly yes --appendfsync always``), so that one killed with
SIGKILL and started again on the same port and directory keeps the stream and its
group, as a production server with persistence does. It says it is ready through the
systemd notification socket (``--supervised systemd``): no polling for its port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

import spindle
from spindle.connectors import (
    InputError,
    MemorySink,
    OutputError,
    RedisStreamSink,
    RedisStreamSource,
    StreamRun,
    open_sink,
    open_source,
)

from ._cli import kill_a_worker, workers_of
from ._servers import postgres_url, redis_url

REDIS_SERVER = os.environ.get("SPINDLE_TEST_REDIS_SERVER") or shutil.which("redis-server")
ROOT = Path(__file__).resolve().parents[2]
#: Seconds a redis-server of a test's own gets to say it is ready.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server of a test's own, its data in ``directory``: started, killed with
    SIGKILL and started again on the same port, and stopped (always reaped)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._clients: list[Any] = []

    @property
    def base(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def url(self, stream: str, **params: str) -> str:
        return f"{self.base}?" + "&".join(
            f"{k}={v}" for k, v in {"stream": stream, **params}.items()
        )

    def start(self) -> None:
        """Start the server; return once it has loaded its data and takes connections."""
        assert self.proc is None or self.proc.poll() is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"spindle-test-redis-{uuid.uuid4().hex}"
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--supervised", "systemd",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
            open(self.directory / "server.log", "ab") as log,
        ):
            notify.bind("\0" + name)  # an abstract socket: nothing left on disk
            self.proc = subprocess.Popen(
                args,
                env={**os.environ, "NOTIFY_SOCKET": "@" + name},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    text = (self.directory / "server.log").read_text(errors="replace")
                    raise AssertionError(f"redis-server did not start on {self.port}: {text}")
                notify.settimeout(min(left, 0.5))  # a bound that also sees the server exit
                try:
                    if b"READY=1" in notify.recv(4096):
                        break
                except TimeoutError:
                    continue
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, reaped: no shutdown, no last write."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def client(self) -> Any:
        """A client of this server (closed by :meth:`stop`)."""
        import redis

        client = redis.Redis(
            port=self.port, password=self.password, socket_connect_timeout=2, socket_timeout=30
        )
        self._clients.append(client)
        return client


def own_server(directory: Path, password: str | None = None) -> OwnRedis:
    pytest.importorskip("redis", reason="the redis client is not installed")
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = OwnRedis(directory, password)
    server.start()
    return server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own, with persistence, stopped afterwards."""
    server = own_server(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


def add(client: Any, stream: str, bodies: list[Any]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for body in bodies:
        pipe.xadd(stream, {"data": body if isinstance(body, bytes) else orjson.dumps(body)})
    ids: list[bytes] = pipe.execute()
    return ids


def group_state(client: Any, stream: str, group: str) -> dict[str, int]:
    """The group's entries pending (read, not acknowledged) and its lag."""
    for g in client.xinfo_groups(stream):
        if g["name"] == group.encode():
            return {"pending": int(client.xpending(stream, group)["pending"]), "lag": g["lag"]}
    raise AssertionError(f"no group {group}")


def all_acked(client: Any, stream: str, group: str) -> bool:
    """Whether the group exists and has read and acknowledged every entry."""
    groups = [g for g in client.xinfo_groups(stream) if g["name"] == group.encode()]
    return bool(groups) and group_state(client, stream, group) == {"pending": 0, "lag": 0}


def on_failure(retrying: Any) -> threading.Event:
    """An event set once a command of ``retrying`` (a source's or a sink's
    ``reconnecting``) has failed to reach the server."""
    failed = threading.Event()
    before = retrying.lost

    def lost() -> None:
        if before is not None:
            before()
        failed.set()

    retrying.lost = lost
    return failed


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Until ``condition()``. Another process's progress (rows in PostgreSQL, a
    group's state in Redis) has no event to wait on here: it is polled, with a deadline
    that fails the test."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.005)


# -- in a program: a source and a sink ------------------------------------------------------


def test_a_stream_run_goes_on_through_a_server_killed_and_restarted(own_redis: OwnRedis) -> None:
    client = own_redis.client()
    n = 3000
    add(client, "s", [{"n": i} for i in range(n)])
    held, resume = threading.Event(), threading.Event()

    def job(x: dict[str, int]) -> int:
        if x["n"] == 1500:  # holds the ordered results (and so the acknowledgements)
            held.set()
            resume.wait(60)
        return x["n"] * 3

    source = open_source(own_redis.url("s", group="g", consumer="c", reconnect="30"), drain=True)
    assert isinstance(source, RedisStreamSource)
    failed = on_failure(source.reconnecting)
    sink = MemorySink()
    run = StreamRun(source, sink, max_unacked=300, read_size=100)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            run.run(spindle.Pipeline([spindle.thread(job, workers=2)], on_error="yield"))
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=drive)
    runner.start()
    try:
        assert held.wait(60)
        own_redis.kill()
        resume.set()  # the results go to the sink, and their acknowledgements to no server
        assert failed.wait(60), "no command met the killed server"
        own_redis.start()
    finally:
        resume.set()
        runner.join(60)
        source.close()
    assert not runner.is_alive() and errors == []
    assert sorted(x["n"] for x, _ in sink.results) == list(range(n))
    assert [v for x, v in sink.results] == [x["n"] * 3 for x, _ in sink.results]
    assert source.stats()["reconnects"] >= 1
    assert run.acked == n
    assert group_state(client, "s", "g") == {"pending": 0, "lag": 0}


def test_the_sink_writes_on_through_a_server_killed_and_restarted(own_redis: OwnRedis) -> None:
    client = own_redis.client()
    sink = open_sink(own_redis.url("out", reconnect="30"))
    assert isinstance(sink, RedisStreamSink)
    failed = on_failure(sink.reconnecting)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sink.write(["b", "c"], [2, spindle.Failure("c", "ValueError", "no", "", 1, "f")])
        except BaseException as exc:
            errors.append(exc)

    try:
        sink.write(["a"], [1])
        own_redis.kill()
        writer = threading.Thread(target=write)
        writer.start()
        try:
            assert failed.wait(60)
            own_redis.start()
        finally:
            writer.join(60)
    finally:
        sink.close()
    assert errors == [] and sink.written == 2 and sink.failed == 1
    assert sink.stats() == {"reconnects": 1}
    # Sent once the server was back: each entry once (the transaction was never sent
    # to the killed server).
    assert [orjson.loads(e[1][b"data"]) for e in client.xrange("out")] == [1, 2]
    assert [e[1][b"error"] for e in client.xrange("out:failures")] == [b"ValueError"]


def test_past_the_reconnect_deadline_each_side_says_so_in_one_line(tmp_path: Path) -> None:
    server = own_server(tmp_path / "redis", password="hunter2")
    try:
        client = server.client()
        add(client, "s", [{"n": i} for i in range(5)])
        source = open_source(server.url("s", group="g", reconnect="1"), drain=True)
        sink = open_sink(server.url("out", reconnect="1"))
        quick = open_source(server.url("s", group="g2", reconnect="off"), drain=True)
        assert isinstance(source, RedisStreamSource) and isinstance(quick, RedisStreamSource)
        try:
            tokens = [m.token for m in source.read(5, 0.1)]
            server.kill()
            attempts: list[tuple[str, Callable[[], Any], type[Exception]]] = [
                ("cannot read", lambda: source.read(5, 0.1), InputError),
                ("cannot acknowledge on", lambda: source.ack(tokens), InputError),
                ("cannot write to", lambda: sink.write(["x"], [1]), OutputError),
            ]
            for what, attempt, error in attempts:
                started = time.monotonic()
                with pytest.raises(error) as info:
                    attempt()
                took = time.monotonic() - started
                text = str(info.value)
                assert 1.0 <= took < 10, (what, took)
                assert text.startswith(f"{what} redis://:***@127.0.0.1:{server.port}/0?"), text
                assert "reconnect=1 in the URL waits longer" in text
                assert "\n" not in text and "hunter2" not in text
            started = time.monotonic()
            with pytest.raises(InputError, match=r"^cannot read redis://") as info:
                quick.read(5, 0.1)  # reconnect=off: the first failure is the error
            assert time.monotonic() - started < 1.0 and "waits longer" not in str(info.value)
        finally:
            source.close()
            sink.close()
            quick.close()
    finally:
        server.stop()


def test_a_server_restarted_without_its_data_gets_the_group_again(own_redis: OwnRedis) -> None:
    client = own_redis.client()
    add(client, "s", [{"n": i} for i in range(10)])
    source = open_source(own_redis.url("s", group="g", consumer="c"), drain=True)
    assert isinstance(source, RedisStreamSource)
    try:
        in_flight = source.read(10, 0.1)
        own_redis.kill()
        shutil.rmtree(own_redis.directory / "appendonlydir")  # as a server without persistence
        own_redis.start()
        assert client.exists("s") == 0
        add(client, "s", [{"n": i} for i in range(100, 103)])  # producers go on
        source.ack([m.token for m in in_flight])  # XACK finds no group: nothing to do
        again = source.read(10, 0.1)  # NOGROUP: made again, from the start of the stream
        assert [m.body["n"] for m in again] == [100, 101, 102]
        source.ack([m.token for m in again])
        assert source.read(10, 0.1) == []
        assert source.stats()["groups_recreated"] == 1
    finally:
        source.close()
    assert group_state(client, "s", "g") == {"pending": 0, "lag": 0}


def test_entries_of_a_lost_reply_come_again_and_those_in_flight_do_not(
    redis_client: Any, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    add(redis_client, stream, [{"n": i} for i in range(30)])
    source = open_source(redis_url(stream, group="g", consumer="c"), drain=True)
    assert isinstance(source, RedisStreamSource)
    try:
        in_flight = source.read(10, 0.1)
        real = source._reader.xreadgroup
        lost: list[Any] = []

        def reply_lost_once(*args: Any, **kwargs: Any) -> Any:
            reply = real(*args, **kwargs)
            if not lost:  # the server gave the entries; the connection died with the reply
                lost.append(reply)
                raise redis.ConnectionError("Connection closed by server.")
            return reply

        monkeypatch.setattr(source._reader, "xreadgroup", reply_lost_once)
        after = source.read(10, 0.1)  # the command again: the next entries
        assert [m.body["n"] for m in after] == list(range(20, 30))
        again = source.read(10, 0.1)  # the own pending list: what the lost reply held
        assert [m.body["n"] for m in again] == list(range(10, 20))
        assert all(m.redelivered for m in again)
        source.ack([m.token for m in in_flight + after + again])
        assert source.read(10, 0.1) == []
        assert source.stats()["reconnects"] == 1
    finally:
        source.close()
    assert int(redis_client.xpending(stream, "g")["pending"]) == 0


def test_a_group_destroyed_by_hand_is_made_again_from_the_start(
    redis_client: Any, stream: str
) -> None:
    add(redis_client, stream, [{"n": i} for i in range(5)])
    source = open_source(redis_url(stream, group="g", consumer="c"), drain=True)
    assert isinstance(source, RedisStreamSource)
    try:
        source.ack([m.token for m in source.read(10, 0.1)])
        redis_client.xgroup_destroy(stream, "g")
        add(redis_client, stream, [{"n": 5}])
        again = source.read(10, 0.1)
        assert [m.body["n"] for m in again] == [0, 1, 2, 3, 4, 5]  # every entry still there
        source.ack([m.token for m in again])
        assert source.stats()["groups_recreated"] == 1
    finally:
        source.close()


# -- spindle map ------------------------------------------------------------------------------


def spindle_map(*args: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """``spindle map ARGS`` from the repository's root, in a session of its own (its
    workers in its process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "spindle", "map", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )


def test_the_command_gives_up_after_the_reconnect_deadline_in_one_line(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    client = own_redis.client()
    add(client, "s", [{"n": 1}])
    url = own_redis.url("s", group="g", consumer="c1", reconnect="1")
    out = tmp_path / "out.jsonl"
    proc = spindle_map("tests.connectors.chaos_jobs:slow_double", url, "-o", str(out), "-q")
    try:
        # Once the message is acknowledged, the run only reads (waits for more).
        wait_for(lambda: all_acked(client, "s", "g"), "the acknowledgement")
        own_redis.kill()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"spindle: cannot read {url}: "), lines
    assert "reconnect=1 in the URL waits longer" in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_killed_workers_runs_and_server_then_each_message_once(
    own_redis: OwnRedis, pg: Any, table: str, tmp_path: Path
) -> None:
    client = own_redis.client()
    n = 20_000
    bad = {i for i in range(n) if i % 1000 == 999}
    bodies = [f"{{broken {i}".encode() if i in bad else orjson.dumps({"n": i}) for i in range(n)]
    ids = [i.decode() for i in add(client, "s", bodies)]
    command = [
        "tests.connectors.chaos_jobs:slow_double",
        own_redis.url("s", group="g", consumer="c1"),
        "-o",
        postgres_url(table),
        "--drain",
        "--workers",
        "2",
        "--retries",
        "3",  # a job whose worker was killed under it runs again (WorkerCrashed)
        "-q",
    ]

    import psycopg  # the pg fixture skips the test without it

    def rows() -> int:
        try:
            return int(pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except psycopg.errors.UndefinedTable:  # not created yet
            return 0

    runs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with open(tmp_path / f"run-{len(runs)}.err", "wb") as err:
            proc = spindle_map(*command, stderr=err)
        runs.append(proc)
        return proc

    def until(count: int, proc: subprocess.Popen[bytes]) -> None:
        wait_for(lambda: rows() >= count or proc.poll() is not None, f"{count:,} rows")
        log = (tmp_path / f"run-{len(runs) - 1}.err").read_text()
        assert proc.poll() is None, f"the run ended before {count:,} rows: {log}"

    def kill_run(proc: subprocess.Popen[bytes]) -> None:
        workers = workers_of(proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == []

    try:
        first = start()
        until(1500, first)
        kill_a_worker(first)
        until(3000, first)
        kill_a_worker(first)
        until(4500, first)
        kill_run(first)
        second = start()
        until(6500, second)
        own_redis.kill()
        own_redis.start()
        until(8500, second)
        kill_a_worker(second)
        until(10_500, second)
        kill_run(second)
        last = start()
        last.wait(timeout=180)
        log = (tmp_path / f"run-{len(runs) - 1}.err").read_text()
        assert last.returncode == 1, log  # the malformed messages failed
    finally:
        for proc in runs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    good = {ids[i]: i * 2 for i in range(n) if i not in bad}
    written = dict(pg.execute(f"SELECT key, result FROM {table}").fetchall())
    assert len(written) == len(good) and written == good
    failures = dict(pg.execute(f"SELECT key, error FROM {table}_failures").fetchall())
    assert failures == {ids[i]: "MalformedInput" for i in bad}
    assert group_state(client, "s", "g") == {"pending": 0, "lag": 0}
    assert own_redis.starts == 2
