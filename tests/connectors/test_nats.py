"""NATS JetStream against a real server: a durable pull consumer as a source, JetStream
publishes as a sink, ``spindle map`` between them, PostgreSQL and files, and servers of
the tests' own killed (SIGKILL) and started again mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import spindle
from spindle import ConfigError
from spindle.connectors import (
    InputError,
    MemorySink,
    Message,
    NatsSink,
    NatsSource,
    OutputError,
    StreamRun,
    open_sink,
    open_source,
)

from ._cli import kill_a_worker, refused_in_one_line, spindle_map
from ._servers import NATS_SERVER, NATS_URL, nats_url, on_nats, postgres_url

# -- helpers ---------------------------------------------------------------------------------


def publish(stream: str, bodies: list[Any], url: str = NATS_URL) -> list[int]:
    """Publish ``bodies`` (bytes as they are, anything else as JSON) to the subject named
    like the stream (created if missing); their stream sequences."""
    payloads = [b if isinstance(b, bytes) else orjson.dumps(b) for b in bodies]

    async def work(js: Any) -> list[int]:
        import nats.js.errors

        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=stream, subjects=[stream])
        futures = [await js.publish_async(stream, data) for data in payloads]
        return [ack.seq for ack in await asyncio.gather(*futures)]

    return on_nats(work, url)


def consumer(stream: str, durable: str = "d", url: str = NATS_URL) -> dict[str, int]:
    """The durable's messages left to read, and read but not acknowledged."""

    async def work(js: Any) -> dict[str, int]:
        info = await js.consumer_info(stream, durable)
        return {"pending": info.num_pending, "unacked": info.num_ack_pending}

    return on_nats(work, url)


def stream_messages(stream: str, url: str = NATS_URL) -> list[Any]:
    """Every message of ``stream`` (subject, data, headers), in order."""

    async def work(js: Any) -> list[Any]:
        info = await js.stream_info(stream)
        first, last = info.state.first_seq, info.state.last_seq
        return [await js.get_msg(stream, seq) for seq in range(first, last + 1)]

    return on_nats(work, url)


def source(
    stream: str, durable: str = "d", drain: bool = False, url: str = NATS_URL, **params: str
) -> NatsSource:
    opened = open_source(
        nats_url(url, stream=stream, durable=durable, subject=stream, **params), drain=drain
    )
    assert isinstance(opened, NatsSource)
    return opened


def read_n(src: NatsSource, n: int, timeout: float = 30) -> list[Message]:
    """Read until ``n`` messages came (each read waits on the server); fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} messages came"
        got += src.read(n - len(got), 0.5)
    return got


def triple(x: dict[str, int]) -> int:
    return x["n"] * 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnServer:
    """A nats-server of the test's own: a free port, its store in a temporary directory;
    killed with SIGKILL and started again on the same port and store. Its log is read by
    a thread (joined when the server ends) that tells when it is ready."""

    def __init__(self, store: Path, *options: str) -> None:
        self.store = store
        self.options = options
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self._log: threading.Thread | None = None
        self.starts = 0

    def start(self) -> None:
        ready = threading.Event()
        proc = subprocess.Popen(
            [
                *(NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)),
                *("-js", "-sd", str(self.store), *self.options),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        lines: list[str] = []

        def read_log(stream: Any) -> None:
            for line in stream:
                if len(lines) < 200:
                    lines.append(line)
                if "Server is ready" in line:
                    ready.set()
            ready.set()  # it ended

        self.proc = proc
        self._log = threading.Thread(target=read_log, args=(proc.stderr,), name="nats-server-log")
        self._log.start()
        if not ready.wait(30) or proc.poll() is not None:
            self.kill()
            raise AssertionError(f"nats-server did not start: {''.join(lines)}")
        self.starts += 1

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if self._log is not None:
            self._log.join(30)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.kill()
        self.start()


def need_nats_server() -> None:
    pytest.importorskip("nats", reason="the nats-py client is not installed")
    if not (os.access(NATS_SERVER, os.X_OK) or shutil.which(NATS_SERVER)):
        pytest.skip(f"no nats-server binary at {NATS_SERVER} (SPINDLE_TEST_NATS_SERVER)")


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnServer]:
    """A NATS server of this test's own (killed and reaped afterwards)."""
    need_nats_server()
    server = OwnServer(tmp_path / "store")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- reading and acknowledging ---------------------------------------------------------------


def test_a_consumer_is_created_read_then_acknowledged(nats_stream: str) -> None:
    seqs = publish(nats_stream, [{"n": i} for i in range(10)])
    with source(nats_stream) as src:
        msgs = src.read(4, 0.5)
        assert [m.body for m in msgs] == [{"n": i} for i in range(4)]
        assert [m.key for m in msgs] == [f"{nats_stream}:{s}" for s in seqs[:4]]
        assert not any(m.redelivered for m in msgs)
        assert consumer(nats_stream) == {"pending": 6, "unacked": 4}
        src.ack([m.token for m in msgs])
        assert consumer(nats_stream)["unacked"] == 0
        assert src.read(100, 0.5) and src.lag() == 0
        stats = src.stats()
        assert stats["durable"] == "d" and stats["acks_unconfirmed"] == 0


def test_the_stream_is_created_with_the_subject(nats_stream: str) -> None:
    with source(nats_stream, ack_wait="7", max_deliver="5") as src:
        assert src.read(10, 0.05) == [] and src.ack_wait == 7
    publish(nats_stream, [{"n": 1}])

    async def config(js: Any) -> Any:
        return (await js.consumer_info(nats_stream, "d")).config

    made = on_nats(config)
    assert (made.ack_wait, made.max_deliver, made.filter_subject) == (7, 5, nats_stream)
    with source(nats_stream, ack_wait="3") as src:  # an existing consumer: ack_wait updated
        assert src.ack_wait == 3 and [m.body for m in src.read(10, 0.5)] == [{"n": 1}]
    assert on_nats(config).max_deliver == 5


def test_messages_read_and_not_acknowledged_come_again(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(5)])
    with source(nats_stream, ack_wait="1") as crashed:
        first = crashed.read(3, 0.5)  # then the process died, acknowledging nothing
    with source(nats_stream) as again:
        fresh = read_n(again, 2)
        assert [m.body["n"] for m in fresh] == [3, 4] and not any(m.redelivered for m in fresh)
        again.ack([m.token for m in fresh])
        msgs = read_n(again, 3)  # after ack_wait: the same keys, marked redelivered
        assert [m.key for m in msgs] == [m.key for m in first]
        assert [m.body["n"] for m in msgs] == [0, 1, 2] and all(m.redelivered for m in msgs)
        again.ack([m.token for m in msgs])
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}


@pytest.mark.slow
def test_messages_in_flight_are_kept_from_redelivery(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(3)])
    with source(nats_stream, ack_wait="2") as holder, source(nats_stream) as other:
        held = holder.read(3, 0.5)
        assert len(held) == 3
        deadline = time.monotonic() + 4.5  # more than twice ack_wait: the other pulls
        while time.monotonic() < deadline:
            assert other.read(10, 0.5) == []
        assert holder.kept_alive >= 3
        holder.ack([m.token for m in held])
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}


def test_a_read_never_takes_more_than_the_bound(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(100)])
    with source(nats_stream) as src:
        src.set_bound(5)
        msgs = src.read(100, 0.5)
        assert len(msgs) == 5
        assert consumer(nats_stream)["unacked"] == 5  # delivered: exactly what was read
        src.ack([m.token for m in msgs])


def test_the_unacknowledged_messages_never_exceed_the_bound(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(3000)])
    seen: list[int] = []

    class Probe(MemorySink):
        takes_messages = True

        def write(self, inputs: list[Any], values: list[Any]) -> None:
            seen.append(consumer(nats_stream)["unacked"])  # as the server says
            super().write(inputs, values)

    with source(nats_stream, drain=True) as src:
        run = StreamRun(src, Probe(), max_unacked=200, read_size=64)
        run.run(spindle.Pipeline([spindle.thread(triple, workers=2)], on_error="yield"))
    assert seen and max(seen) <= 200 and run.peak_unacked <= 200
    assert run.acked == 3000 and consumer(nats_stream)["unacked"] == 0


def test_a_message_that_came_for_a_pull_given_up_is_handed_back(nats_stream: str) -> None:
    publish(nats_stream, [{"n": 1}])

    class Late:  # what a pull that ended on the client's side would still bring
        headers = None

        def __init__(self, reply: str) -> None:
            self.reply = reply
            self.subject = nats_stream
            self.data = b'{"n": 1}'

    with source(nats_stream) as src:
        (msg,) = src.read(1, 0.5)
        src.conn.call(src._on_message(Late(msg.token)))  # no pull in flight: -NAK
        (again,) = read_n(src, 1)
        assert again.key == msg.key and again.redelivered and src.returned == 1
        src.ack([again.token])


def test_acknowledging_from_another_thread_while_reading(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(3000)])
    with source(nats_stream, drain=True) as src:
        batches: list[list[Message]] = []
        while len(batches) < 30:
            batches.append(src.read(100, 0.5))

        def ack_all() -> None:
            for b in batches:
                src.ack([m.token for m in b])

        t = threading.Thread(target=ack_all)
        t.start()
        assert src.read(100, 0.5) == []  # a drain: ends once the acknowledgements are in
        t.join(30)
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}


# -- bodies, keys, failures ------------------------------------------------------------------


def test_bodies_text_json_keys_and_malformed(nats_stream: str) -> None:
    seqs = publish(nats_stream, [{"id": "a-1", "v": 2}, b"{not json", {"v": 5}, b"\xff\xfe"])
    with open_source(nats_url(stream=nats_stream, durable="d", subject=nats_stream), key="id") as s:
        a, bad, nokey, binary = s.read(10, 0.5)
        assert a.body == {"id": "a-1", "v": 2} and a.key == "a-1"
        assert type(bad.body) is spindle.Failure and bad.body.error == "MalformedInput"
        assert bad.body.item == "{not json" and bad.key == f"{nats_stream}:{seqs[1]}"
        assert type(nokey.body) is spindle.Failure and nokey.body.error == "MissingKey"
        assert "key messages by stream sequence" in nokey.body.message
        assert type(binary.body) is spindle.Failure
        s.ack([m.token for m in (a, bad, nokey, binary)])
    text = nats_url(stream=nats_stream, durable="t", subject=nats_stream)
    with open_source(text, fmt="text") as s:
        msgs = s.read(10, 0.5)
        assert msgs[0].body == '{"id":"a-1","v":2}' and msgs[1].body == "{not json"
        assert type(msgs[3].body) is spindle.Failure and "UTF-8" in msgs[3].body.message
        s.ack([m.token for m in msgs])


def test_a_malformed_message_fails_alone_and_is_acknowledged(
    nats_stream: str, pg: Any, table: str
) -> None:
    seqs = publish(nats_stream, [{"n": 1}, b"{oops", {"n": 2}])
    with source(nats_stream, drain=True) as src, open_sink(postgres_url(table)) as sink:
        run = StreamRun(src, sink)
        run.run(spindle.Pipeline([spindle.thread(triple)], on_error="yield"))
    assert dict(pg.execute(f"SELECT key, result FROM {table}").fetchall()) == {
        f"{nats_stream}:{seqs[0]}": 3,
        f"{nats_stream}:{seqs[2]}": 6,
    }
    fails = pg.execute(f"SELECT key, error, input FROM {table}_failures").fetchall()
    assert fails == [(f"{nats_stream}:{seqs[1]}", "MalformedInput", "{oops")]
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}


def test_a_message_past_max_deliver_becomes_a_failure(nats_stream: str) -> None:
    (seq,) = publish(nats_stream, [{"n": 7}])
    for _ in range(2):  # two runs died holding it
        with source(nats_stream, ack_wait="0.5", max_deliver="2") as crashed:
            assert len(read_n(crashed, 1)) == 1
    with source(nats_stream) as src:
        (given_up,) = read_n(src, 1)  # the server gives it up, and says so
        body = given_up.body
        assert type(body) is spindle.Failure and body.error == "DeliveriesExceeded"
        assert body.item == {"n": 7} and body.attempts == 2
        assert given_up.key == f"{nats_stream}:{seq}" and given_up.token is None
        src.ack([given_up.token])  # nothing to send
        assert src.stats()["given_up"] == 1
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}


# -- drain -----------------------------------------------------------------------------------


def test_a_drain_ends_once_empty_and_waits_for_a_dead_runs_messages(nats_stream: str) -> None:
    publish(nats_stream, [{"n": i} for i in range(50)])
    with source(nats_stream, ack_wait="1") as crashed:
        assert len(crashed.read(20, 0.5)) == 20  # died holding 20 of them
    sink = MemorySink()
    with source(nats_stream, drain=True) as src:
        run = StreamRun(src, sink)
        run.run(spindle.Pipeline([spindle.thread(triple)], on_error="yield"))
        assert run.redelivered >= 20 and src.stats()["left_unacked"] == 0
    # at least once: a message slow enough in the pipeline may come twice (ack_wait 1 s)
    assert sorted({x["n"] for x, _ in sink.results}) == list(range(50))
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}
    with source(nats_stream, drain=True) as empty:
        assert empty.read(10, 0.5) == []  # at once: nothing to wait for


def test_a_stopped_run_ends_a_drain_read_waiting_for_its_acknowledgements(
    nats_stream: str,
) -> None:
    # A Ctrl-C drops the messages the run had not started: they are never acknowledged,
    # and a drain waits for them up to 1.5 x ack_wait (90 s here) unless told of the stop.
    publish(nats_stream, [{"n": i} for i in range(3)])
    with source(nats_stream, drain=True, ack_wait="60") as src:
        read_n(src, 3)
        got: list[list[Message]] = []
        t = threading.Thread(target=lambda: got.append(src.read(10, 0.2)))
        t.start()
        src.stop_reading()
        t.join(10)
        assert not t.is_alive() and got == [[]]


# -- the sink --------------------------------------------------------------------------------


def test_the_sink_publishes_results_and_failures_with_their_ids(nats_stream: str) -> None:
    out = f"{nats_stream}_out"
    url = nats_url(stream=out, subject=f"{out}.results")
    with open_sink(url) as sink:
        assert isinstance(sink, NatsSink)
        msgs = [Message({"n": 1}, "k1", None), Message({"n": 2}, "k2", None)]
        failure = spindle.Failure({"n": 2}, "ValueError", "bad", "Traceback...", 2, "f")
        sink.write(msgs, [3, failure])
        sink.commit()
        sink.write(msgs, [3, failure])  # the same chunk again (a crash before the ack)
        sink.commit()
        sink.write(["plain"], [{"a": 1}])
        assert sink.written == 3 and sink.failed == 2
    assert sink.stats()["duplicates"] == 2 and sink.stats()["published"] == 5
    result, failed, plain = stream_messages(out)
    assert (result.subject, orjson.loads(result.data)) == (f"{out}.results", 3)
    assert result.headers["Nats-Msg-Id"] == "k1"
    assert failed.subject == f"{out}.results.failures"
    assert failed.headers["Nats-Msg-Id"] == "failure:k2"
    record = orjson.loads(failed.data)
    assert record == {
        "key": "k2",
        "input": {"n": 2},
        "error": "ValueError",
        "message": "bad",
        "traceback": "Traceback...",
        "attempts": 2,
    }
    assert orjson.loads(plain.data) == {"a": 1} and len(plain.headers["Nats-Msg-Id"]) == 32


def test_a_sink_without_a_stream_needs_one_that_takes_the_subject(nats_stream: str) -> None:
    with pytest.raises(ConfigError, match=r"no JetStream stream takes the subject .* &stream="):
        open_sink(nats_url(subject=f"{nats_stream}_out.nowhere"))
    publish(nats_stream, [])
    with pytest.raises(ConfigError, match="goes to the stream"):
        open_sink(nats_url(stream=f"{nats_stream}_out", subject=nats_stream))


def test_a_sink_whose_stream_is_gone_fails_after_publishing_again(
    nats_stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spindle.connectors import _nats

    monkeypatch.setattr(_nats, "PUBLISH_TIMEOUT", 1.0)
    out = f"{nats_stream}_out"
    sink = open_sink(nats_url(stream=out, subject=out))
    try:
        on_nats(lambda js: js.delete_stream(out))
        sink.write([Message({"n": 1}, "k1", None)], [2])
        with pytest.raises(OutputError, match=r"did not acknowledge 1 of the publishes within 1 s"):
            sink.commit()
        assert sink.stats()["republished"] >= 1
    finally:
        sink.conn.close()


# -- errors ----------------------------------------------------------------------------------


def test_a_url_missing_a_parameter_names_it() -> None:
    with pytest.raises(ConfigError, match=r"add \?stream=NAME"):
        open_source("nats://127.0.0.1:4222")
    with pytest.raises(ConfigError, match=r"add &durable=NAME"):
        open_source("nats://127.0.0.1:4222?stream=s")
    with pytest.raises(ConfigError, match=r"add &subject=NAME"):
        open_sink("nats://127.0.0.1:4222?stream=s")
    with pytest.raises(ConfigError, match="ack_wait='x' is not a number"):
        open_source("nats://127.0.0.1:4222?stream=s&durable=d&ack_wait=x")
    with pytest.raises(ConfigError, match="max_deliver='0'"):
        open_source("nats://127.0.0.1:4222?stream=s&durable=d&max_deliver=0")
    with pytest.raises(ConfigError, match="a JetStream name has no"):
        open_source("nats://127.0.0.1:4222?stream=a.b&durable=d")


def test_an_unknown_parameter_is_named(nats: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter group: a NATS source takes"):
        open_source(f"{nats}?stream=s&durable=d&group=g")


def test_a_missing_stream_without_a_subject_is_named(nats_stream: str) -> None:
    with pytest.raises(ConfigError, match=r"no stream .* add &subject=NAME"):
        open_source(nats_url(stream=nats_stream, durable="d"))


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    pytest.importorskip("nats", reason="the nats-py client is not installed")
    url = f"nats://u:hunter2@127.0.0.1:{free_port()}?stream=s&durable=d"
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        open_source(url)
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "hunter2" not in text and "\n" not in text
    assert text.startswith("cannot connect to nats://u:***@127.0.0.1:")
    assert "refused" in text.lower() or "connect call failed" in text.lower()
    with pytest.raises(OutputError, match=r"^cannot connect to nats://u:\*\*\*@"):
        open_sink(url.replace("stream=s&durable=d", "subject=s"))


def test_a_missing_client_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(ConfigError, match=r"pip install 'spindle\[nats\]'"):
        open_source("nats://127.0.0.1:4222?stream=s&durable=d")


def test_the_user_and_password_of_the_url_are_passed_on(tmp_path: Path) -> None:
    need_nats_server()
    server = OwnServer(tmp_path / "store", "--user", "spin", "--pass", "s3cret")
    server.start()
    try:
        host = server.url.removeprefix("nats://")
        url = f"nats://spin:s3cret@{host}?stream=auth&durable=d&subject=auth"
        with open_source(url) as src:
            assert src.read(10, 0.05) == []
        for wrong in ("spin:nope@", ""):
            with pytest.raises(InputError) as info:
                open_source(f"nats://{wrong}{host}?stream=auth&durable=d")
            text = str(info.value)
            assert "Authorization Violation" in text and "\n" not in text
            assert "nope" not in text
    finally:
        server.kill()


# -- a server killed and started again ------------------------------------------------------


@pytest.mark.slow
def test_a_server_killed_mid_run_loses_nothing(own_nats: OwnServer, pg: Any, table: str) -> None:
    n = 5000
    stream = "restarted"
    publish(stream, [{"n": i} for i in range(n)], url=own_nats.url)
    reached = threading.Event()
    restarted = threading.Event()

    def work(x: dict[str, int]) -> int:
        if x["n"] == 2000 and not reached.is_set():  # held while the server restarts
            reached.set()
            restarted.wait(60)
        return x["n"] * 2

    failed: list[BaseException] = []

    def run() -> None:
        try:
            with (
                source(stream, drain=True, url=own_nats.url, ack_wait="2") as src,
                open_sink(postgres_url(table)) as sink,
            ):
                stream_run = StreamRun(src, sink)
                stream_run.run(spindle.Pipeline([spindle.thread(work, workers=2)]))
                stats.update(src.stats(), redelivered=stream_run.redelivered)
        except Exception as exc:  # the test's thread asserts on it
            failed.append(exc)

    stats: dict[str, Any] = {}
    runner = threading.Thread(target=run, name="the run")
    runner.start()
    try:
        assert reached.wait(60), "the run never got to message 2000"
        own_nats.restart()  # SIGKILL, then the same port and store
    finally:
        restarted.set()
        runner.join(120)
    assert not runner.is_alive() and not failed, failed
    assert stats["reconnects"] >= 1
    assert pg.execute(f"SELECT count(*), count(DISTINCT key) FROM {table}").fetchone() == (n, n)
    assert pg.execute(f"SELECT sum((result)::bigint) FROM {table}").fetchone()[0] == n * (n - 1)
    assert consumer(stream, url=own_nats.url)["pending"] == 0
    assert consumer(stream, url=own_nats.url)["unacked"] == 0


@pytest.mark.slow
def test_the_sinks_publishes_survive_a_server_restart(own_nats: OwnServer) -> None:
    url = nats_url(own_nats.url, stream="out", subject="out")
    with open_sink(url) as sink:
        sink.write([Message({"n": i}, f"k{i}", None) for i in range(100)], list(range(100)))
        sink.commit()
        own_nats.kill()
        sink.write([Message({"n": i}, f"k{i}", None) for i in range(100, 200)], list(range(100)))
        own_nats.start()  # the same port and store
        sink.commit()  # returns once JetStream has them all
        assert sink.stats()["reconnects"] >= 1
    ids = [m.headers["Nats-Msg-Id"] for m in stream_messages("out", url=own_nats.url)]
    assert sorted(ids) == sorted(f"k{i}" for i in range(200))


# -- spindle map -----------------------------------------------------------------------------

JOB = """
import os

def work(x):
    if x.get("poison"):
        raise ValueError("poisoned")
    for mark in filter(None, os.environ.get("SPINDLE_TEST_MARKS", "").split(",")):
        at, hold = mark.split(":")
        if x["n"] == int(at):
            try:  # the first worker to get there, once per run
                os.close(os.open(f"{os.environ['SPINDLE_TEST_FIFO']}.{at}", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                break
            fd = os.open(os.environ["SPINDLE_TEST_FIFO"], os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, at.encode() + b"\\n")
            os.close(fd)
            if hold == "hold":
                with open(os.environ["SPINDLE_TEST_FIFO"] + ".release", "rb") as release:
                    release.read()  # until the test opens it, which it never does: killed
    return x["n"] * 2

def shout(text):
    return text.upper()
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOB)
    return tmp_path


class Marked:
    """``spindle map`` in a session of its own whose job writes to a FIFO when it gets to
    the messages named in ``marks`` (``"N:go"``: and goes on; ``"N:hold"``: and waits)."""

    def __init__(self, work: Path, tag: str, args: list[str], marks: str) -> None:
        self.fifo = work / f"marks-{tag}"
        os.mkfifo(self.fifo)
        os.mkfifo(f"{self.fifo}.release")
        # Open for writing too, so that the FIFO never reads as ended between two marks.
        self.reader = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        self.buffer = b""
        self.err = ""
        env = dict(os.environ, SPINDLE_TEST_FIFO=str(self.fifo), SPINDLE_TEST_MARKS=marks)
        # The run's snapshot, for the message of a mark that never comes.
        self.dashboard = free_port()
        command = [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"]
        self.proc = subprocess.Popen(
            [*command, "--dashboard", str(self.dashboard)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_mark(self, *ats: int, timeout: float = 90) -> None:
        """Wait until the job of one of the messages ``ats`` has run."""
        deadline = time.monotonic() + timeout
        while not any(f"{at}\n".encode() in self.buffer for at in ats):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.reader], [], [], max(left, 0))
            if not ready:
                state = self.snapshot()
                self.kill()
                raise AssertionError(
                    f"the job of message {ats} never ran: {self.err}\nthe run then: {state}"
                )
            self.buffer += os.read(self.reader, 100)

    def snapshot(self) -> str:
        """The run's workers and connectors, from its dashboard (or why not)."""
        url = f"http://127.0.0.1:{self.dashboard}/api/snapshot"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                snap = json.loads(answer.read())
        except (OSError, ValueError) as exc:
            return f"no snapshot ({exc})"
        return json.dumps({k: snap.get(k) for k in ("stages", "workers", "connectors")})

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the command and its workers
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.err = self.proc.communicate(timeout=30)[1]

    def close(self) -> None:
        self.kill()
        os.close(self.reader)


@pytest.fixture
def marked() -> Iterator[list[Marked]]:
    runs: list[Marked] = []
    yield runs
    for run in runs:
        run.close()


def test_nats_to_postgres_drained(work: Path, nats_stream: str, pg: Any, table: str) -> None:
    n = 3000
    seqs = publish(nats_stream, [{"n": i} for i in range(n)])
    bad = publish(nats_stream, [b"{not json", {"n": -1, "poison": True}])
    url = nats_url(stream=nats_stream, durable="d", subject=nats_stream)
    done = spindle_map("jobs:work", url, "-o", postgres_url(table), "--drain", cwd=work)
    assert done.returncode == 1, done.stderr  # two failures
    keys = {r[0] for r in pg.execute(f"SELECT key FROM {table}")}
    assert keys == {f"{nats_stream}:{s}" for s in seqs}
    fails = dict(pg.execute(f"SELECT key, error FROM {table}_failures").fetchall())
    assert fails == {
        f"{nats_stream}:{bad[0]}": "MalformedInput",
        f"{nats_stream}:{bad[1]}": "ValueError",
    }
    assert pg.execute(f"SELECT sum((result)::int) FROM {table}").fetchone()[0] == n * (n - 1)
    assert consumer(nats_stream) == {"pending": 0, "unacked": 0}
    assert f"{n + 2:,} read (0 redelivered), {n + 2:,} acknowledged" in done.stderr


def test_a_file_into_nats_twice_publishes_each_key_once(work: Path, nats_stream: str) -> None:
    (work / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "n": i}) + "\n" for i in range(300))
        + json.dumps({"id": "p", "n": 0, "poison": True})
        + "\n"
    )
    out = f"{nats_stream}_out"
    url = nats_url(stream=out, subject=out)
    for _ in range(2):  # the second run's publishes are all repeats: dropped
        done = spindle_map(
            "jobs:work", "in.jsonl", "--format", "jsonl", "--key", "id", "-o", url, cwd=work
        )
        assert done.returncode == 1, done.stderr  # the poisoned line
    messages = stream_messages(out)
    results = [m for m in messages if m.subject == out]
    assert len(results) == 300 and len(messages) == 301
    assert {m.headers["Nats-Msg-Id"]: orjson.loads(m.data) for m in results}["r7"] == 14
    (failure,) = [m for m in messages if m.subject == f"{out}.failures"]
    assert orjson.loads(failure.data)["error"] == "ValueError"
    # and read back as a stream: the results of one run are the input of the next
    again = spindle_map(
        "jobs:shout",
        nats_url(stream=out, durable="d", subject=out),
        "--format",
        "text",
        "-o",
        "back.jsonl",
        "--drain",
        cwd=work,
    )
    assert again.returncode == 0, again.stderr
    assert len((work / "back.jsonl").read_text().splitlines()) == 300


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["nats://u:pw@127.0.0.1:1?stream=s&durable=d", "-o", "o.jsonl"],
            "cannot connect to nats://u:***@127.0.0.1:1?stream=s&durable=d",
        ),
        (["nats://127.0.0.1:1?stream=s", "-o", "o.jsonl"], "add &durable=NAME"),
        (["in.txt", "-o", "nats://u:pw@127.0.0.1:1?stream=s"], "add &subject=NAME"),
        (
            ["in.txt", "-o", "nats://u:pw@127.0.0.1:1?subject=s"],
            "cannot connect to nats://u:***@127.0.0.1:1?subject=s",
        ),
    ],
)
def test_bad_urls_are_one_line(work: Path, args: list[str], expected: str) -> None:
    pytest.importorskip("nats", reason="the nats-py client is not installed")
    refused_in_one_line(work, args, expected)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_kills_and_a_server_restart_leave_one_row_per_message(
    work: Path, own_nats: OwnServer, pg: Any, table: str, marked: list[Marked]
) -> None:
    n = 20_000
    stream = "chaos"
    malformed = {i for i in range(n) if i % 1000 == 999}
    bodies = [b"{not json %d" % i if i in malformed else {"n": i} for i in range(n)]
    seqs = publish(stream, bodies, url=own_nats.url)
    url = nats_url(own_nats.url, stream=stream, durable="d", subject=stream, ack_wait="2")
    # A job whose worker is killed under it runs again (WorkerCrashed, then a retry).
    command = ["jobs:work", url, "-o", postgres_url(table), "--retries", "3"]
    first = Marked(work, "first", command, "3000:hold")
    marked.append(first)
    first.wait_mark(3000)
    first.kill()  # SIGKILL while a job runs
    assert first.proc.returncode == -signal.SIGKILL
    # The next run reads the messages the first never read before those it left
    # unacknowledged (they come back after ack_wait): its marks are among the former.
    fresh = n - consumer(stream, url=own_nats.url)["pending"]
    go, hold = (fresh + (n - fresh) * k // 3 for k in (1, 2))
    go, hold = (i + 1 if i in malformed else i for i in (go, hold))
    second = Marked(work, "second", command, f"{go}:go,{hold}:hold")
    marked.append(second)
    # Rarely (3 runs in 117 here) the job of `hold` runs first and that of `go` never
    # does: the run then holds its results in order behind `hold` and stops there, in
    # the middle all the same. Why `go` came later is not known; its snapshot, taken
    # when `go` never came, showed every message read.
    second.wait_mark(go, hold)
    kill_a_worker(second.proc)  # SIGKILL one worker process mid-run
    own_nats.restart()  # SIGKILL the server mid-run; the same port and store
    second.wait_mark(hold)
    second.kill()
    rows = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert 0 < rows < n - len(malformed)  # killed in the middle
    stats = work / "stats.json"
    last = spindle_map(*command, "--drain", "--stats-json", str(stats), cwd=work)
    assert last.returncode == 1, last.stderr  # the malformed messages failed
    good = [i for i in range(n) if i not in malformed]
    assert pg.execute(f"SELECT count(*), count(DISTINCT key) FROM {table}").fetchone() == (
        len(good),
        len(good),
    )
    key_of = {f"{stream}:{seqs[i]}": i for i in range(n)}
    results = dict(pg.execute(f"SELECT key, (result)::int FROM {table}").fetchall())
    assert results == {k: 2 * i for k, i in key_of.items() if i not in malformed}
    fails = dict(pg.execute(f"SELECT key, error FROM {table}_failures").fetchall())
    assert fails == {f"{stream}:{seqs[i]}": "MalformedInput" for i in malformed}
    assert consumer(stream, url=own_nats.url)["pending"] == 0
    assert consumer(stream, url=own_nats.url)["unacked"] == 0
    source_row = json.loads(stats.read_text())["connectors"][0]
    # Not checked: that the last run saw redeliveries. A server killed mid-run may lose
    # the consumer's latest delivery counts (it writes them to its store now and then),
    # and then gives the messages left unacknowledged again as first deliveries.
    assert source_row["unacked"] == 0
    assert source_row["extra"]["durable"] == "d" and source_row["extra"]["left_unacked"] == 0
