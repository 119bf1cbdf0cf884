"""Redis Streams against the local server: a consumer group as a source, XADD as a sink."""

from __future__ import annotations

import sys
import threading
from typing import Any

import orjson
import pytest

import spindle
from spindle import ConfigError
from spindle.connectors import (
    InputError,
    MemorySink,
    Message,
    RedisStreamSink,
    RedisStreamSource,
    StreamRun,
    open_sink,
    open_source,
)

from ._servers import redis_url, unique


def add(client: Any, stream: str, bodies: list[Any]) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for body in bodies:
        pipe.xadd(stream, {"data": orjson.dumps(body)})
    ids: list[bytes] = pipe.execute()
    return ids


def source(stream: str, group: str, drain: bool = False, **params: str) -> RedisStreamSource:
    opened = open_source(redis_url(stream, group=group, **params), drain=drain)
    assert isinstance(opened, RedisStreamSource)
    return opened


def pending(client: Any, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def triple(x: dict[str, int]) -> int:
    return x["n"] * 3


def test_a_group_is_created_and_read_then_acknowledged(redis_client: Any, stream: str) -> None:
    ids = add(redis_client, stream, [{"n": i} for i in range(10)])
    with source(stream, "g", consumer="c") as src:
        msgs = src.read(4, 0.1)
        assert [m.body for m in msgs] == [{"n": i} for i in range(4)]
        assert [m.key for m in msgs] == [i.decode() for i in ids[:4]]
        assert not any(m.redelivered for m in msgs)
        assert pending(redis_client, stream, "g") == 4
        src.ack([m.token for m in msgs])
        assert pending(redis_client, stream, "g") == 0
        assert src.lag() is not None


def test_a_consumer_reads_its_own_pending_messages_first(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(10)])
    with source(stream, "g", consumer="same") as crashed:
        first = crashed.read(6, 0.1)  # read, never acknowledged: the process died
    add(redis_client, stream, [{"n": 10}])
    with source(stream, "g", consumer="same") as again:
        msgs = again.read(4, 0.1)
        assert [m.body["n"] for m in msgs] == [0, 1, 2, 3] and all(m.redelivered for m in msgs)
        msgs += again.read(100, 0.1)
        assert [m.body["n"] for m in msgs] == [0, 1, 2, 3, 4, 5]  # the rest of its own
        new = again.read(100, 0.1)
        assert [m.body["n"] for m in new] == [6, 7, 8, 9, 10] and not new[0].redelivered
        again.ack([m.token for m in msgs + new])
    assert len(first) == 6 and pending(redis_client, stream, "g") == 0


def test_another_consumers_idle_messages_are_claimed(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(20)])
    with source(stream, "g", consumer="dead") as dead:
        taken = dead.read(8, 0.1)  # then it crashed
    assert len(taken) == 8
    sink = MemorySink()
    with source(stream, "g", consumer="alive", claim_idle="0", drain=True) as alive:
        run = StreamRun(alive, sink)
        run.run(spindle.Pipeline([spindle.thread(triple)], on_error="yield"))
        assert alive.claimed == 8 and run.redelivered == 8
    assert sorted(x["n"] for x, _ in sink.results) == list(range(20))
    assert pending(redis_client, stream, "g") == 0
    consumers = {c["name"]: c["pending"] for c in redis_client.xinfo_consumers(stream, "g")}
    assert consumers == {b"dead": 0, b"alive": 0}


def test_a_claim_skips_the_consumers_own_messages_in_flight(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(5)])
    with source(stream, "g", consumer="c", claim_idle="0") as src:
        msgs = src.read(5, 0.1)
        assert len(msgs) == 5
        assert src.read(5, 0.05) == []  # claimable (idle 0) but in flight here
        src.ack([m.token for m in msgs])


def test_without_claims_others_messages_stay_with_them(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(3)])
    with source(stream, "g", consumer="a") as a:
        a.read(3, 0.1)
    with source(stream, "g", consumer="b", claim_idle="off", drain=True) as b:
        assert b.read(10, 0.1) == []
    assert pending(redis_client, stream, "g") == 3


def test_messages_deleted_while_pending_are_skipped(redis_client: Any, stream: str) -> None:
    ids = add(redis_client, stream, [{"n": i} for i in range(4)])
    with source(stream, "g", consumer="c") as crashed:
        crashed.read(4, 0.1)
    redis_client.xdel(stream, ids[0], ids[2])
    with source(stream, "g", consumer="c", drain=True) as again:
        msgs = again.read(10, 0.1)
        assert [m.body["n"] for m in msgs] == [1, 3]
        again.ack([m.token for m in msgs])
        assert again.read(10, 0.1) == []
        assert again.deleted == 2
    assert pending(redis_client, stream, "g") == 0


def test_bodies_text_json_field_maps_keys_and_malformed(redis_client: Any, stream: str) -> None:
    redis_client.xadd(stream, {"data": b'{"id": "a-1", "v": 2}'})
    redis_client.xadd(stream, {"data": b"{not json"})
    redis_client.xadd(stream, {"id": "f", "size": "3"})
    redis_client.xadd(stream, {"data": b'{"v": 5}'})
    with open_source(redis_url(stream, group="g"), key="id") as src:
        a, bad, fields, nokey = src.read(10, 0.1)
        assert a.body == {"id": "a-1", "v": 2} and a.key == "a-1"
        assert type(bad.body) is spindle.Failure and bad.body.error == "MalformedInput"
        assert bad.body.item == "{not json" and bad.key == bad.token.decode()
        assert fields.body == {"id": "f", "size": "3"} and fields.key == "f"
        assert type(nokey.body) is spindle.Failure and nokey.body.error == "MissingKey"
        assert "key messages by their id" in nokey.body.message
        src.ack([m.token for m in (a, bad, fields, nokey)])
    with open_source(redis_url(stream, group="g2"), fmt="text") as src:
        assert src.read(1, 0.1)[0].body == '{"id": "a-1", "v": 2}'


def test_acknowledging_from_another_thread_while_reading(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(3000)])
    acked = threading.Event()
    with source(stream, "g", consumer="c", drain=True) as src:
        batches: list[list[Message]] = []
        while msgs := src.read(100, 0.1):
            batches.append(msgs)

        def ack_all() -> None:
            for b in batches:
                src.ack([m.token for m in b])
            acked.set()

        t = threading.Thread(target=ack_all)
        t.start()
        assert src.read(100, 0.1) == []  # reading meanwhile finds nothing to claim or read
        t.join(30)
        assert acked.is_set()
    assert pending(redis_client, stream, "g") == 0


def test_the_unacknowledged_messages_never_exceed_the_bound(redis_client: Any, stream: str) -> None:
    add(redis_client, stream, [{"n": i} for i in range(3000)])
    seen: list[int] = []

    class Probe(MemorySink):
        takes_messages = True

        def write(self, inputs: list[Any], values: list[Any]) -> None:
            seen.append(pending(redis_client, stream, "g"))  # XPENDING, as the broker says
            super().write(inputs, values)

    with source(stream, "g", consumer="c", drain=True) as src:
        run = StreamRun(src, Probe(), max_unacked=200, read_size=64)
        run.run(spindle.Pipeline([spindle.thread(triple, workers=2)], on_error="yield"))
    assert seen and max(seen) <= 200 and run.peak_unacked <= 200
    assert pending(redis_client, stream, "g") == 0 and run.acked == 3000


def test_the_sink_adds_results_and_failures(redis_client: Any, stream: str) -> None:
    with open_sink(redis_url(stream)) as sink:
        assert isinstance(sink, RedisStreamSink)
        msgs = [Message({"n": 1}, "k1", b"1-1"), Message({"n": 2}, "k2", b"1-2")]
        failure = spindle.Failure({"n": 2}, "ValueError", "bad", "Traceback...", 2, "f")
        sink.write(msgs, [3, failure])
        sink.write(["plain"], [{"a": 1}])
        assert sink.written == 2 and sink.failed == 1
    entries = redis_client.xrange(stream)
    assert next(e[1][b"key"] for e in entries) == b"k1"
    assert orjson.loads(entries[0][1][b"data"]) == 3
    assert orjson.loads(entries[1][1][b"data"]) == {"a": 1}
    ((_fid, f),) = redis_client.xrange(f"{stream}:failures")
    assert f[b"key"] == b"k2" and f[b"error"] == b"ValueError" and f[b"attempts"] == b"2"
    assert orjson.loads(f[b"input"]) == {"n": 2}


def test_the_sink_trims_with_maxlen(redis_client: Any, stream: str) -> None:
    with open_sink(redis_url(stream, maxlen="100")) as sink:
        for i in range(30):
            sink.write(list(range(i * 100, i * 100 + 100)), list(range(100)))
    assert redis_client.xlen(stream) < 3000


def test_a_url_missing_a_parameter_names_it() -> None:
    with pytest.raises(ConfigError, match=r"add &group=NAME"):
        open_source("redis://127.0.0.1:6379/0?stream=s")
    with pytest.raises(ConfigError, match=r"add \?stream=NAME"):
        open_sink("redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="claim_idle='x' is not a number"):
        open_source("redis://127.0.0.1:6379/0?stream=s&group=g&claim_idle=x")


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    pytest.importorskip("redis")
    url = f"redis://:hunter2@127.0.0.1:1/0?stream={unique('s')}&group=g"
    with pytest.raises(InputError) as info:
        open_source(url)
    text = str(info.value)
    assert "hunter2" not in text and "\n" not in text
    assert text.startswith("cannot connect to redis://:***@127.0.0.1:1/0?stream=")


def test_a_missing_client_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'spindle\[redis\]'"):
        open_source("redis://127.0.0.1:6379/0?stream=s&group=g")
