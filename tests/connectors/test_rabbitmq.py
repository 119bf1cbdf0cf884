"""RabbitMQ against the local broker: a durable queue as a source and as a sink, alone, in a
stream run, through ``spindle map``, across a lost connection and killed runs."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
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
    OutputError,
    PostgresSink,
    RabbitSink,
    RabbitSource,
    StreamRun,
    open_sink,
    open_source,
)

from ._cli import kill_a_worker, refused_in_one_line, spindle_map
from ._servers import POSTGRES_URL, RABBITMQCTL, amqp_url, on_rabbit, postgres_url

# -- the broker, from the tests' side --------------------------------------------------------


def publish(queue: str, bodies: list[Any], ids: list[str] | None = None) -> None:
    """Publish ``bodies`` (bytes as they are, anything else as JSON) to ``queue``, declared
    durable, persistent and confirmed; message ``i`` has the id ``ids[i]`` (or the random
    one aiormq gives)."""
    import aiormq

    async def work(channel: Any) -> None:
        await channel.queue_declare(queue, durable=True)
        for start in range(0, len(bodies), 1000):
            sends = []
            for i in range(start, min(start + 1000, len(bodies))):
                body = bodies[i]
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                properties = aiormq.spec.Basic.Properties(
                    delivery_mode=2, message_id=None if ids is None else ids[i]
                )
                sends.append(channel.basic_publish(data, routing_key=queue, properties=properties))
            await asyncio.gather(*sends)

    on_rabbit(work)


def ready(queue: str) -> int:
    """The queue's ready messages (a passive declare)."""

    async def work(channel: Any) -> int:
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.message_count)

    return on_rabbit(work)


def take_all(queue: str) -> list[Any]:
    """Every message of ``queue`` (basic.get, acknowledged): the deliveries."""

    async def work(channel: Any) -> list[Any]:
        out = []
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if message.delivery_tag is None:  # Basic.GetEmpty
                return out
            out.append(message)

    return on_rabbit(work)


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (skip the test when it cannot be run here)."""
    try:
        done = subprocess.run(
            [RABBITMQCTL, *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"rabbitmqctl is not usable here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"rabbitmqctl is not usable here: {done.stderr.strip()[:200]}")
    return done.stdout


@pytest.fixture(scope="module")
def ctl() -> None:
    """Skip the test unless ``rabbitmqctl`` can be run here (it closes connections)."""
    rabbitmqctl("list_vhosts", "-q")


def reconnected(src: RabbitSource, timeout: float = 30) -> None:
    """Wait until ``src`` has opened its connection again (on its loop's own event)."""
    link = src._link

    async def wait() -> None:
        while link.reconnects == 0:
            link.clear()
            if link.reconnects == 0:
                await link.changed(None)

    link.call(asyncio.wait_for(wait(), timeout))


def close_all_connections() -> None:
    rabbitmqctl("close_all_connections", "spindle test: connection closed by the broker")


def queue_state(queue: str) -> dict[str, int]:
    """The broker's own figures of ``queue``: ``messages`` counts the ready ones and the
    unacknowledged ones, whatever the state of their consumers' connections."""
    out = rabbitmqctl(
        "list_queues", "-q", "--formatter", "json", "name", "messages", "messages_unacknowledged"
    )
    for row in json.loads(out):
        if row["name"] == queue:
            return {"messages": row["messages"], "unacked": row["messages_unacknowledged"]}
    raise AssertionError(f"no queue {queue}")


def source(queue: str, *, drain: bool = False, bound: int = 1000, **kw: Any) -> RabbitSource:
    opened = open_source(amqp_url(queue), drain=drain, **kw)
    assert isinstance(opened, RabbitSource)
    opened.set_bound(bound)
    return opened


def read_n(src: RabbitSource, n: int) -> list[Message]:
    """Exactly ``n`` messages, read as they come (each read waits for the next delivery)."""
    out: list[Message] = []
    for _ in range(200):
        if len(out) >= n:
            break
        out += src.read(n - len(out), 0.5)
    assert len(out) == n, f"read {len(out)} of {n}"
    return out


def triple(x: dict[str, int]) -> int:
    return x["n"] * 3


# -- the source ------------------------------------------------------------------------------


def test_read_then_acknowledge(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(10)], [f"m{i}" for i in range(10)])
    with source(rabbit_queue) as src:
        msgs = read_n(src, 10)
        assert [m.body for m in msgs] == [{"n": i} for i in range(10)]
        assert [m.key for m in msgs] == [f"m{i}" for i in range(10)]
        assert not any(m.redelivered for m in msgs)
        src.ack([m.token for m in msgs])
        assert src.unacked == 0 and src.stats()["multiple_acks"] == 1
        assert ready(rabbit_queue) == 0
    assert ready(rabbit_queue) == 0  # nothing came back when the source closed


def test_what_was_not_acknowledged_comes_again_redelivered(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(10)], [f"m{i}" for i in range(10)])
    with source(rabbit_queue) as crashed:
        first = read_n(crashed, 10)
        crashed.ack([m.token for m in first[:4]])
    with source(rabbit_queue, drain=True) as again:
        msgs = read_n(again, 6)
        assert [m.key for m in msgs] == [f"m{i}" for i in range(4, 10)]
        assert all(m.redelivered for m in msgs) and again.redelivered == 6
        again.ack([m.token for m in msgs])
        assert again.read(10, 0.1) == []  # drained
    assert ready(rabbit_queue) == 0


def test_out_of_order_acks_never_acknowledge_other_tags(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(10)], [f"m{i}" for i in range(10)])
    with source(rabbit_queue) as src:
        msgs = read_n(src, 10)
        tokens = [m.token for m in msgs]
        src.ack([tokens[6], tokens[3]])  # above the frontier: singly, nothing else
        assert src.stats()["single_acks"] == 2 and src.stats()["multiple_acks"] == 0
        src.ack([tokens[0], tokens[1]])  # the frontier moves to tag 2: multiple=True up to 2
        src.ack([tokens[2]])  # 3 and 4 are done: up to 4, named 3 (4 went singly)
        src.ack([tokens[2], tokens[6], tokens[0]])  # twice: ignored, never sent again
        assert src.stats()["multiple_acks"] == 2 and src.stats()["single_acks"] == 2
        assert src.unacked == 5
        # The channel is alive (an unknown tag would have closed it): ack one more.
        src.ack([tokens[9]])
        assert src.stats()["reconnects"] == 0
    with source(rabbit_queue, drain=True) as again:
        rest = read_n(again, 4)
        assert sorted(m.key for m in rest) == ["m4", "m5", "m7", "m8"]
        assert all(m.redelivered for m in rest)
        again.ack([m.token for m in rest])
        assert again.read(10, 0.1) == []


def test_the_prefetch_is_the_bound(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(300)])
    with source(rabbit_queue, bound=50) as src:
        held = read_n(src, 50)
        assert src.read(100, 0.3) == []  # the broker sends no more than the prefetch
        assert ready(rabbit_queue) == 250 and src.unacked == 50
        src.ack([m.token for m in held[:20]])
        more = read_n(src, 20)
        assert src.read(100, 0.3) == [] and ready(rabbit_queue) == 230
        src.ack([m.token for m in held[20:] + more])


def test_a_stream_run_never_holds_more_than_its_bound(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(3000)])
    seen: list[int] = []

    class Probe(MemorySink):
        takes_messages = True

        def write(self, inputs: list[Any], values: list[Any]) -> None:
            seen.append(src.unacked)  # delivered and not acknowledged: the broker's count
            super().write(inputs, values)

    with source(rabbit_queue, drain=True) as src:
        run = StreamRun(src, Probe(), max_unacked=200, read_size=64)
        run.run(spindle.Pipeline([spindle.thread(triple, workers=2)], on_error="yield"))
        assert src.prefetch == 200 and src.unacked == 0
        assert ready(rabbit_queue) == 0
    assert seen and max(seen) <= 200 and run.peak_unacked <= 200 and run.acked == 3000


def test_bodies_keys_and_malformed_messages(rabbit_queue: str) -> None:
    publish(
        rabbit_queue,
        [{"id": "a-1", "v": 2}, b"{not json", {"v": 5}, b"\xff\xfe"],
        ["i0", "i1", "i2", "i3"],
    )
    with source(rabbit_queue, key="id") as src:
        a, bad, nokey, binary = read_n(src, 4)
        assert a.body == {"id": "a-1", "v": 2} and a.key == "a-1"
        assert type(bad.body) is spindle.Failure and bad.body.error == "MalformedInput"
        assert bad.body.item == "{not json" and bad.key == "i1" and "message i1" in bad.body.message
        assert type(nokey.body) is spindle.Failure and nokey.body.error == "MissingKey"
        assert "key messages by their id" in nokey.body.message
        assert type(binary.body) is spindle.Failure
    with source(rabbit_queue, fmt="text") as src:
        msgs = read_n(src, 4)
        assert msgs[0].body == '{"id":"a-1","v":2}' and msgs[0].redelivered
        assert type(msgs[3].body) is spindle.Failure and "UTF-8" in msgs[3].body.message
        src.ack([m.token for m in msgs])


def test_a_message_without_an_id_is_keyed_by_its_body(rabbit_queue: str) -> None:
    from aiormq.abc import ChannelFrame
    from pamqp import commands
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    from spindle.connectors._keys import content_key

    async def work(channel: Any) -> None:
        # Frames written as they are: aiormq's basic_publish would add a random id.
        plain = await channel.connection.channel(publisher_confirms=False)
        await plain.queue_declare(rabbit_queue, durable=True)
        for body in (b'"x"', b'"x"', b'"y"'):
            properties = commands.Basic.Properties(delivery_mode=2)
            frames = [
                commands.Basic.Publish(routing_key=rabbit_queue),
                ContentHeader(body_size=len(body), properties=properties),
                ContentBody(body),
            ]
            await plain.write_queue.put(
                ChannelFrame.marshall(channel_number=plain.number, frames=frames)
            )
        await plain.queue_declare(rabbit_queue, passive=True)  # after the publishes
        await plain.close()

    on_rabbit(work)
    with source(rabbit_queue) as src:
        msgs = read_n(src, 3)
        assert [m.key for m in msgs] == [content_key('"x"')] * 2 + [content_key('"y"')]
        src.ack([m.token for m in msgs])


def test_drain_waits_for_its_own_messages_then_ends(rabbit_queue: str) -> None:
    with source(rabbit_queue, drain=True) as src:
        assert src.read(10, 0.1) == []  # empty: the end at once
    publish(rabbit_queue, [{"n": i} for i in range(5)])
    with source(rabbit_queue, drain=True) as src:
        msgs = read_n(src, 5)
        ended = threading.Event()
        got: list[list[Message]] = []

        def reader() -> None:
            got.append(src.read(10, 0.1))
            ended.set()

        t = threading.Thread(target=reader)
        t.start()
        # Its own messages are unacknowledged: a lost connection would bring them back,
        # so the drain does not end yet.
        assert not ended.wait(0.5)
        src.ack([m.token for m in msgs])
        assert ended.wait(10)
        t.join(10)
        assert got == [[]]


def test_close_wakes_a_drain_read(rabbit_queue: str) -> None:
    publish(rabbit_queue, [{"n": 1}])
    src = source(rabbit_queue, drain=True)
    read_n(src, 1)  # never acknowledged
    got: list[list[Message]] = []
    t = threading.Thread(target=lambda: got.append(src.read(10, 0.1)))
    t.start()
    src.close()
    t.join(10)
    assert got == [[]] and ready(rabbit_queue) == 1


def test_a_stopped_run_wakes_a_drain_read_waiting_for_its_acknowledgements(
    rabbit_queue: str,
) -> None:
    # A Ctrl-C drops the messages the run had not started: they are never acknowledged,
    # so a drain read waiting for their acknowledgements would wait until close().
    publish(rabbit_queue, [{"n": i} for i in range(3)])
    with source(rabbit_queue, drain=True) as src:
        read_n(src, 3)  # dropped by the stop: never acknowledged
        got: list[list[Message]] = []
        t = threading.Thread(target=lambda: got.append(src.read(10, 0.1)))
        t.start()
        src.stop_reading()
        t.join(10)
        assert not t.is_alive() and got == [[]]
        assert src.read(10, 0.1) == []  # and every read after it
    assert ready(rabbit_queue) == 3  # the connection closed: they wait for another run


# -- the sink --------------------------------------------------------------------------------


def test_the_sink_publishes_confirmed_persistent_results_and_failures(rabbit_queue: str) -> None:
    with open_sink(amqp_url(rabbit_queue)) as sink:
        assert isinstance(sink, RabbitSink)
        msgs = [Message({"n": 1}, "k1", None), Message({"n": 2}, "k2", None)]
        failure = spindle.Failure({"n": 2}, "ValueError", "bad", "Traceback...", 2, "f")
        sink.write(msgs, [3, failure])
        sink.commit()
        sink.write(["plain"], [{"a": 1}])
        sink.commit()
        assert sink.written == 2 and sink.failed == 1
        assert sink.stats()["confirmed"] == 3 and sink.stats()["unconfirmed"] == 0
    results = take_all(rabbit_queue)
    assert [orjson.loads(m.body) for m in results] == [3, {"a": 1}]
    props = results[0].header.properties
    assert props.message_id == "k1" and props.delivery_mode == 2
    from spindle.connectors._keys import content_key

    assert results[1].header.properties.message_id == content_key("plain")
    (failed,) = take_all(f"{rabbit_queue}.failures")
    assert orjson.loads(failed.body) == {
        "key": "k2",
        "input": {"n": 2},
        "error": "ValueError",
        "message": "bad",
        "traceback": "Traceback...",
        "attempts": 2,
    }


def test_a_malformed_message_fails_alone_and_is_acknowledged(rabbit_queue: str) -> None:
    out = f"{rabbit_queue}_out"
    bodies: list[Any] = [{"n": i} for i in range(20)]
    bodies.insert(7, b"{not json")
    publish(rabbit_queue, bodies, [f"m{i}" for i in range(21)])
    try:
        with source(rabbit_queue, drain=True) as src, open_sink(amqp_url(out)) as sink:
            run = StreamRun(src, sink)
            run.run(spindle.Pipeline([spindle.thread(triple)], on_error="yield"))
            assert sink.written == 20 and sink.failed == 1 and run.acked == 21
            assert src.unacked == 0 and ready(rabbit_queue) == 0
        assert sorted(orjson.loads(m.body) for m in take_all(out)) == [3 * i for i in range(20)]
        (failed,) = take_all(f"{out}.failures")
        record = orjson.loads(failed.body)
        assert record["key"] == "m7" and record["error"] == "MalformedInput"
        assert record["input"] == "{not json"
    finally:
        from ._servers import delete_queues

        delete_queues(out, f"{out}.failures")


# -- errors ----------------------------------------------------------------------------------


def test_an_unreachable_broker_is_one_line_without_the_password(rabbit: str) -> None:
    with pytest.raises(InputError, match=r"^cannot connect to amqp://guest:\*\*\*@127\.0\.0\.1:1/"):
        open_source("amqp://guest:secret@127.0.0.1:1/?queue=q")
    with pytest.raises(
        OutputError, match=r"^cannot connect to amqp://guest:\*\*\*@127\.0\.0\.1:1/"
    ):
        open_sink("amqp://guest:secret@127.0.0.1:1/?queue=q")
    with pytest.raises(InputError, match="cannot connect") as bad_login:
        open_source(rabbit.replace("guest:guest", "guest:wrong") + "?queue=q")
    assert "wrong" not in str(bad_login.value)


def test_a_missing_queue_parameter_is_named() -> None:
    with pytest.raises(ConfigError, match=r"add \?queue=NAME to the URL"):
        open_source("amqp://127.0.0.1:1/")
    with pytest.raises(ConfigError, match=r"add \?queue=NAME"):
        open_sink("amqps://u:pw@127.0.0.1:1/vhost")


def test_a_missing_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)  # import aio_pika raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'spindle\[rabbitmq\]'"):
        open_source("amqp://127.0.0.1:1/?queue=q")
    with pytest.raises(ConfigError, match=r"pip install 'spindle\[rabbitmq\]'"):
        open_sink("amqp://127.0.0.1:1/?queue=q")


# -- a connection closed by the broker --------------------------------------------------------


def test_stale_tokens_after_a_reconnection_are_dropped(rabbit_queue: str, ctl: None) -> None:
    publish(rabbit_queue, [{"n": i} for i in range(5)], [f"m{i}" for i in range(5)])
    with source(rabbit_queue) as src:
        old = read_n(src, 5)
        close_all_connections()
        new = read_n(src, 5)  # the same messages, redelivered on the new channel
        assert [m.key for m in new] == [f"m{i}" for i in range(5)]
        assert all(m.redelivered for m in new) and src.stats()["reconnects"] == 1
        assert {m.token[0] for m in new} != {m.token[0] for m in old}
        src.ack([m.token for m in old])  # tags 1-5 of the dead channel: not sent
        assert src.stale_acks == 5 and src.unacked == 5
        src.ack([new[0].token])
    with source(rabbit_queue, drain=True) as again:  # only m0 was acknowledged
        rest = read_n(again, 4)
        assert [m.key for m in rest] == [f"m{i}" for i in range(1, 5)]
        again.ack([m.token for m in rest])


def test_the_sink_publishes_again_what_a_closed_connection_lost(
    rabbit_queue: str, ctl: None
) -> None:
    with open_sink(amqp_url(rabbit_queue)) as sink:
        assert isinstance(sink, RabbitSink)
        sink.write([Message({"n": i}, f"a{i}", None) for i in range(50)], list(range(50)))
        sink.commit()  # confirmed before the broker closes the connection
        gate = threading.Event()

        async def hold() -> None:
            gate.wait(30)  # holds the sink's loop: it sees nothing of the broker meanwhile

        held = asyncio.run_coroutine_threadsafe(hold(), sink._link.loop.loop)
        second = [Message({"n": i}, f"b{i}", None) for i in range(50)]
        writer = threading.Thread(target=sink.write, args=(second, list(range(50))))
        writer.start()  # its publishes go once the loop runs again: onto a closed connection
        close_all_connections()
        gate.set()
        held.result(30)
        writer.join(30)
        sink.commit()  # none of them confirmed: published again on the new connection
        assert sink.stats()["reconnects"] == 1 and sink.stats()["republished"] == 50
        assert sink.stats()["confirmed"] == 100
    ids = [m.header.properties.message_id for m in take_all(rabbit_queue)]
    assert sorted(ids) == sorted([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)])


@pytest.mark.slow
def test_a_connection_closed_mid_run_loses_nothing(
    rabbit_queue: str, pg: Any, table: str, ctl: None
) -> None:
    n = 3000
    publish(rabbit_queue, [{"n": i} for i in range(n)], [f"m{i}" for i in range(n)])
    started = threading.Event()
    release = threading.Event()
    held = threading.Lock()

    def work(x: dict[str, int]) -> int:
        if x["n"] == 1500 and held.acquire(blocking=False):  # the first time only
            started.set()
            release.wait(60)
        return x["n"] * 2

    with source(rabbit_queue, drain=True) as src, PostgresSink(POSTGRES_URL, table) as sink:

        def broker_closes_everything() -> None:
            try:
                if started.wait(60):
                    close_all_connections()
                    reconnected(src)  # message 1500 is acknowledged after: a stale token
            finally:
                release.set()

        closer = threading.Thread(target=broker_closes_everything)
        closer.start()
        try:
            run = StreamRun(src, sink)
            run.run(spindle.Pipeline([spindle.thread(work, workers=4)], on_error="yield"))
        finally:
            started.set()
            closer.join(60)
        assert src.stats()["reconnects"] == 1 and src.stale_acks > 0
        assert run.redelivered > 0 and src.unacked == 0 and ready(rabbit_queue) == 0
    assert pg.execute(f"SELECT count(*), count(DISTINCT key) FROM {table}").fetchone() == (n, n)
    assert pg.execute(f"SELECT sum((result)::int) FROM {table}").fetchone()[0] == n * (n - 1)


# -- spindle map -----------------------------------------------------------------------------

JOB = """
import os

def work(x):
    if x.get("poison"):
        raise ValueError("poisoned")
    stop = os.environ.get("SPINDLE_TEST_STOP_AT")
    if stop is not None and x["n"] == int(stop):
        try:  # the first worker to get there, once
            os.close(os.open(os.environ["SPINDLE_TEST_MARK"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return x["n"] * 2
        fd = os.open(os.environ["SPINDLE_TEST_FIFO"], os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        with open(os.environ["SPINDLE_TEST_RELEASE"], "rb") as release:  # until the test opens it
            release.read()
    return x["n"] * 2

def shout(text):
    return text.upper()
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOB)
    return tmp_path


class Held:
    """A ``spindle map`` in a session of its own, whose job of message ``stop_at`` waits
    (once) until :meth:`release`."""

    def __init__(self, work: Path, tag: str, args: list[str], stop_at: int) -> None:
        self.fifo = work / f"started-{tag}"
        self.release_path = work / f"release-{tag}"
        os.mkfifo(self.fifo)
        os.mkfifo(self.release_path)
        self.reader = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        env = dict(
            os.environ,
            SPINDLE_TEST_FIFO=str(self.fifo),
            SPINDLE_TEST_RELEASE=str(self.release_path),
            SPINDLE_TEST_MARK=str(work / f"mark-{tag}"),
            SPINDLE_TEST_STOP_AT=str(stop_at),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_started(self) -> int:
        """Wait until the held job runs; the pid of the worker process running it."""
        ready_, _, _ = select.select([self.reader], [], [], 90)
        if not ready_:
            self.kill()
            raise AssertionError(f"the held job never started: {self.proc.communicate()[1]}")
        return int(os.read(self.reader, 100))

    def release(self) -> None:
        os.close(os.open(self.release_path, os.O_WRONLY))  # the job's open returns, reads EOF

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # the command and its workers
        self.proc.communicate(timeout=30)

    def close(self) -> None:
        os.close(self.reader)
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def held() -> Iterator[list[Held]]:
    runs: list[Held] = []
    yield runs
    for run in runs:
        run.close()


def test_map_from_a_queue_into_postgres(work: Path, rabbit_queue: str, pg: Any, table: str) -> None:
    n = 2000
    bodies: list[Any] = [{"n": i} for i in range(n)] + [b"{not json", {"n": -1, "poison": True}]
    ids = [f"m{i}" for i in range(n + 2)]
    publish(rabbit_queue, bodies, ids)
    done = spindle_map(
        "jobs:work", amqp_url(rabbit_queue), "-o", postgres_url(table), "--drain", cwd=work
    )
    assert done.returncode == 1, done.stderr  # two failures
    assert pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n
    keys = {r[0] for r in pg.execute(f"SELECT key FROM {table}")}
    fails = dict(pg.execute(f"SELECT key, error FROM {table}_failures").fetchall())
    assert keys == set(ids[:n]) and fails == {f"m{n}": "MalformedInput", f"m{n + 1}": "ValueError"}
    assert pg.execute(f"SELECT sum((result)::int) FROM {table}").fetchone()[0] == n * (n - 1)
    assert ready(rabbit_queue) == 0
    assert f"{n + 2:,} read (0 redelivered), {n + 2:,} acknowledged, 0 left" in done.stderr


def test_map_from_a_file_into_a_queue_and_on(work: Path, rabbit_queue: str) -> None:
    (work / "in.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(100)))
    into = spindle_map(
        "jobs:work", "in.jsonl", "--format", "jsonl", "-o", amqp_url(rabbit_queue), cwd=work
    )
    assert into.returncode == 0, into.stderr
    assert ready(rabbit_queue) == 100
    (work / "in.txt").write_text("x\ny\n")
    words = f"{rabbit_queue}_words"
    try:
        assert spindle_map("jobs:shout", "in.txt", "-o", amqp_url(words), cwd=work).returncode == 0
        # A next spindle map reads what the sink published: JSON bodies, keyed by id.
        on = spindle_map("jobs:shout", amqp_url(words), "-o", "out.jsonl", "--drain", cwd=work)
        assert on.returncode == 0, on.stderr
        lines = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
        assert [line["result"] for line in lines] == ["X", "Y"]
    finally:
        from ._servers import delete_queues

        delete_queues(words, f"{words}.failures")
    results = sorted(orjson.loads(m.body) for m in take_all(rabbit_queue))
    assert results == [2 * i for i in range(100)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["amqp://guest:pw@127.0.0.1:1/?queue=q", "-o", "o.jsonl"],
            "cannot connect to amqp://guest:***@127.0.0.1:1/",
        ),
        (["amqp://127.0.0.1:1/", "-o", "o.jsonl"], "add ?queue=NAME"),
        (["in.txt", "-o", "amqp://guest:pw@127.0.0.1:1/"], "add ?queue=NAME"),
        (
            ["in.txt", "-o", "amqp://guest:pw@127.0.0.1:1/?queue=q"],
            "cannot connect to amqp://guest:***@127.0.0.1:1/",
        ),
    ],
)
def test_bad_urls_are_one_line(work: Path, args: list[str], expected: str) -> None:
    pytest.importorskip("aio_pika", reason="the aio-pika client is not installed")
    refused_in_one_line(work, args, expected)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_kills_and_a_closed_connection_leave_one_row_per_message(
    work: Path, rabbit_queue: str, pg: Any, table: str, held: list[Held], ctl: None
) -> None:
    n = 20_000
    malformed = {i for i in range(n) if i % 1000 == 999}
    bodies = [b"{not json %d" % i if i in malformed else {"n": i} for i in range(n)]
    publish(rabbit_queue, bodies, [f"m{i}" for i in range(n)])
    # A job whose worker is killed under it runs again (WorkerCrashed, then a retry).
    command = ["jobs:work", amqp_url(rabbit_queue), "-o", postgres_url(table), "--retries", "3"]
    for tag, stop_at in (("first", 3000), ("second", 9000)):  # killed while a job runs
        run = Held(work, tag, command, stop_at)
        held.append(run)
        run.wait_started()
        run.kill()
        assert run.proc.returncode == -signal.SIGKILL
    rows = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert 0 < rows < n - len(malformed)  # killed in the middle
    stats = work / "stats.json"
    last = Held(work, "last", [*command, "--drain", "--stats-json", str(stats)], 15_000)
    held.append(last)
    holder = last.wait_started()
    kill_a_worker(last.proc, spare=holder)  # SIGKILL the other worker process
    close_all_connections()  # the broker closes the run's connection while a job runs
    last.release()
    _, err = last.proc.communicate(timeout=300)
    assert last.proc.returncode == 1, err  # the malformed messages failed
    good = [i for i in range(n) if i not in malformed]
    assert pg.execute(f"SELECT count(*), count(DISTINCT key) FROM {table}").fetchone() == (
        len(good),
        len(good),
    )
    assert pg.execute(f"SELECT sum((result)::bigint) FROM {table}").fetchone()[0] == 2 * sum(good)
    wrong = pg.execute(f"SELECT count(*) FROM {table} WHERE key <> 'm' || (result::int / 2)")
    assert wrong.fetchone()[0] == 0
    fails = dict(pg.execute(f"SELECT key, error FROM {table}_failures").fetchall())
    assert fails == {f"m{i}": "MalformedInput" for i in malformed}
    assert queue_state(rabbit_queue) == {"messages": 0, "unacked": 0}
    assert json.loads(stats.read_text())["stages"][0]["restarts"] >= 1  # the killed worker
    row = json.loads(stats.read_text())["connectors"][0]
    source_row = {**row, **row.get("extra", {})}  # the source's own figures
    assert source_row["reconnects"] == 1 and source_row["redelivered"] > n - rows
    assert source_row["read"] > n - rows and source_row["unacked"] == 0
