"""The Redis ring (the cache's second tier) against real redis-server processes.

Each test starts its own three servers on free ports (a function-scoped fixture, so
the leak check sees them reaped), kills and restarts them to make failures, and waits
for the ring's state by polling its stats or the servers themselves, with a deadline.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache._redis_servers import (
    REDIS_SERVER,
    RedisServers,
    ZooKeeper,
    free_port,
    wait_for,
    zookeeper_missing,
)

from spindle._errors import CacheError, ConfigError, SpindleError

redis = pytest.importorskip(
    "redis", reason="redis-py is not installed: pip install 'spindle[redis]'"
)

from spindle.cache import _ring  # noqa: E402
from spindle.cache._membership import register_node  # noqa: E402
from spindle.cache._ring import RedisRing  # noqa: E402

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

PREFIX = b"spindle:k:"
#: A short health interval, so a server's return is seen within tens of milliseconds.
FAST = {"health_interval": 0.05, "timeout": 0.5}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[RedisServers]:
    group = RedisServers(tmp_path, 3)
    try:
        yield group
    finally:
        group.close()


class Direct:
    """Plain redis-py clients on each server, to look at what the ring wrote."""

    def __init__(self, servers: RedisServers) -> None:
        self.servers = servers
        self.clients = [redis.Redis.from_url(url) for url in servers.urls]

    def by_name(self, name: str) -> Any:
        return self.clients[[self.servers.name(i) for i in range(3)].index(name)]

    def holders(self, key: bytes) -> set[str]:
        return {
            self.servers.name(i)
            for i, c in enumerate(self.clients)
            if self.servers.procs[i] is not None and c.exists(PREFIX + key)
        }

    def close(self) -> None:
        for c in self.clients:
            c.close()


@pytest.fixture
def direct(servers: RedisServers) -> Iterator[Direct]:
    d = Direct(servers)
    try:
        yield d
    finally:
        d.close()


def state(ring: RedisRing, name: str) -> str:
    return str(ring.stats()["nodes"][name]["state"])


def wait_all_up(ring: RedisRing) -> None:
    wait_for(
        lambda: all(n["up"] for n in ring.stats()["nodes"].values()),
        f"every server up: {ring!r}",
    )


def keys(n: int, tag: str = "key") -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


# ---------------------------------------------------------------------- placement


def test_placement_spreads_keys_and_is_the_same_for_every_client(
    servers: RedisServers, direct: Direct
) -> None:
    names = [servers.name(i) for i in range(3)]
    with RedisRing(servers.urls, replicas=0, **FAST) as ring:
        wait_all_up(ring)
        placed = {k: ring.locate(k) for k in keys(3000)}
        for k in placed:
            ring.set(k, k)
    owners = [p[0] for p in placed.values()]
    shares = {name: owners.count(name) / len(owners) for name in names}
    assert all(0.15 < share < 0.52 for share in shares.values()), shares
    # What the servers hold is what locate() said.
    for name in names:
        held = {k[len(PREFIX) :] for k in direct.by_name(name).scan_iter(match=PREFIX + b"*")}
        assert held == {k for k, p in placed.items() if p == [name]}
    # Another ring, listing the servers in another order, puts every key in the same place.
    with RedisRing(list(reversed(servers.urls)), replicas=0, **FAST) as other:
        assert all(other.locate(k) == p for k, p in placed.items())
        assert all(other.get(k) == k for k in placed)


def test_a_server_leaving_moves_only_its_own_keys(servers: RedisServers) -> None:
    gone = servers.name(2)
    with RedisRing(servers.urls, replicas=1, **FAST) as whole:
        placed = {k: whole.locate(k) for k in keys(2000)}
    with RedisRing(servers.urls[:2], replicas=1, **FAST) as smaller:
        for k, before in placed.items():
            after = smaller.locate(k)
            kept = [name for name in before if name != gone]
            assert after[: len(kept)] == kept  # the remaining copies keep their order


def test_each_key_is_on_its_owner_and_its_replicas(servers: RedisServers, direct: Direct) -> None:
    with RedisRing(servers.urls, replicas=1, **FAST) as ring:
        wait_all_up(ring)
        for k in keys(300):
            ring.set(k, b"v-" + k)
        for k in keys(300):
            copies = ring.locate(k)
            assert len(copies) == len(set(copies)) == 2
            assert direct.holders(k) == set(copies)
            assert direct.by_name(copies[1]).get(PREFIX + k) == b"v-" + k
        ring.delete(b"key-7")
        assert direct.holders(b"key-7") == set()
        assert ring.get(b"key-7") is None
    with RedisRing(servers.urls, replicas=2, **FAST) as everywhere:
        everywhere.set(b"all", b"1")
        assert direct.holders(b"all") == {servers.name(i) for i in range(3)}
    with RedisRing(servers.urls, replicas=5, **FAST) as capped:
        assert len(capped.locate(b"x")) == 3  # as many copies as there are servers


# ---------------------------------------------------------------------- failures


def test_a_killed_server_loses_no_replicated_key_and_writes_go_on(
    servers: RedisServers,
) -> None:
    with RedisRing(servers.urls, replicas=1, **FAST) as ring:
        wait_all_up(ring)
        for k in keys(600):
            ring.set(k, b"v-" + k)
        victim = servers.name(0)
        servers.kill(0)
        failed = [k for k in keys(600) if ring.get(k) != b"v-" + k]
        assert failed == []
        stats = ring.stats()["nodes"]
        assert stats[victim]["state"] == "down"
        assert stats[victim]["errors"] >= 1
        assert sum(n["fallbacks"] for n in stats.values()) > 0
        assert "Connection" in stats[victim]["last_error"]
        # Writes go on: new keys, overwrites, deletes.
        for k in keys(200, "new"):
            ring.set(k, b"n-" + k)
        for k in keys(100):
            ring.set(k, b"w-" + k)
        ring.delete(b"key-500")
        assert all(ring.get(k) == b"n-" + k for k in keys(200, "new"))
        assert all(ring.get(k) == b"w-" + k for k in keys(100))
        assert ring.get(b"key-500") is None
        assert ring.stats()["nodes"][victim]["hints"] > 0


def expected_after_restart(key: bytes) -> bytes | None:
    if key == b"key-399":
        return None  # deleted while the server was down
    if key == b"brief":
        return b"ttl"
    return b"new" if int(key.split(b"-")[1]) < 150 else b"old"


def test_a_server_restarted_empty_is_repaired(servers: RedisServers, direct: Direct) -> None:
    victim = servers.name(0)
    with RedisRing(servers.urls, replicas=1, **FAST) as ring:
        wait_all_up(ring)
        for k in keys(400):
            ring.set(k, b"old")
        servers.kill(0)
        assert ring.get(b"key-1") == b"old"  # served from the copies
        for k in keys(150):
            ring.set(k, b"new")  # missed by the victim
        ring.set(b"brief", b"ttl", ttl=60)
        ring.delete(b"key-399")
        servers.start(0)  # same port, empty: --save ""
        wait_for(lambda: state(ring, victim) == "up", "the restarted server repaired and up")
        held = direct.by_name(victim)
        mine = [k for k in [*keys(400), b"brief"] if victim in ring.locate(k)]
        assert mine
        for k in mine:
            assert held.get(PREFIX + k) == expected_after_restart(k), k
        if victim in ring.locate(b"brief"):
            assert 0 < held.pttl(PREFIX + b"brief") <= 60_000
        assert ring.stats()["nodes"][victim]["repairs"] >= len(mine) - 1
        # Its keys are read from it again.
        owned = [k for k in keys(150) if ring.locate(k)[0] == victim]
        gets = ring.stats()["nodes"][victim]["gets"]
        assert all(ring.get(k) == b"new" for k in owned)
        assert ring.stats()["nodes"][victim]["gets"] == gets + len(owned)


def test_a_paused_server_that_kept_its_data_is_repaired_from_hints(
    servers: RedisServers, direct: Direct
) -> None:
    victim = servers.name(1)
    with RedisRing(servers.urls, replicas=1, health_interval=0.05, timeout=0.2) as ring:
        wait_all_up(ring)
        mine = [k for k in keys(300) if victim in ring.locate(k)]
        for k in mine:
            ring.set(k, b"old")
        proc = servers.procs[1]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)  # unresponsive, keeps its data
        try:
            wait_for(lambda: state(ring, victim) == "down", "the paused server marked down")
            for k in mine[:50]:
                ring.set(k, b"new")
            for k in mine[50:60]:
                ring.delete(k)
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: state(ring, victim) == "up", "the paused server repaired and up")
        held = direct.by_name(victim)
        assert [held.get(PREFIX + k) for k in mine[:50]] == [b"new"] * 50
        assert [held.exists(PREFIX + k) for k in mine[50:60]] == [0] * 10
        assert [held.get(PREFIX + k) for k in mine[60:]] == [b"old"] * len(mine[60:])
        # Only the keys it missed were written to it, and the hints are gone.
        assert ring.stats()["nodes"][victim]["repairs"] == 60
        tag = b"%016x" % _ring._slot_of(victim)
        assert all(c.scard(b"spindle:h:" + tag) == 0 for c in direct.clients)


def test_hints_past_their_bound_make_the_server_wiped_and_refilled(
    servers: RedisServers, direct: Direct, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ring, "MAX_HINTS", 5)
    victim = servers.name(2)
    with RedisRing(servers.urls, replicas=1, health_interval=0.05, timeout=0.2) as ring:
        wait_all_up(ring)
        mine = [k for k in keys(200) if victim in ring.locate(k)]
        for k in mine:
            ring.set(k, b"old")
        proc = servers.procs[2]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: state(ring, victim) == "down", "the paused server marked down")
            for k in mine[:30]:
                ring.set(k, b"new")
            for k in mine[30:40]:
                ring.delete(k)
            tag = b"%016x" % _ring._slot_of(victim)
            assert any(c.exists(b"spindle:o:" + tag) for c in direct.clients[:2])
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: state(ring, victim) == "up", "the flagged server resynced and up")
        held = direct.by_name(victim)
        assert [held.get(PREFIX + k) for k in mine[:30]] == [b"new"] * 30
        assert [held.exists(PREFIX + k) for k in mine[30:40]] == [0] * 10
        assert [held.get(PREFIX + k) for k in mine[40:]] == [b"old"] * len(mine[40:])
        assert not any(c.exists(b"spindle:o:" + tag) for c in direct.clients)


def test_a_write_with_every_copy_down_raises_and_a_read_misses(servers: RedisServers) -> None:
    with RedisRing(servers.urls, replicas=0, **FAST) as ring:
        wait_all_up(ring)
        key = next(k for k in keys(100) if ring.locate(k) == [servers.name(0)])
        ring.set(key, b"v")
        servers.kill(0)
        assert ring.get(key) is None
        with pytest.raises(CacheError, match="none of its copies answers"):
            ring.set(key, b"w")


# ---------------------------------------------------------------------- ttl, clear, threads


@pytest.mark.slow  # waits for a key to expire
def test_ttl_is_kept_on_every_copy_and_respected(servers: RedisServers, direct: Direct) -> None:
    with RedisRing(servers.urls, replicas=1, **FAST) as ring:
        ring.set(b"short", b"v", ttl=0.3)
        ring.set(b"long", b"v", ttl=3600)
        ring.set(b"forever", b"v")
        assert ring.get(b"short") == b"v"
        for name in ring.locate(b"short"):
            assert 0 < direct.by_name(name).pttl(PREFIX + b"short") <= 300
        for name in ring.locate(b"long"):
            assert 3_590_000 < direct.by_name(name).pttl(PREFIX + b"long") <= 3_600_000
        for name in ring.locate(b"forever"):
            assert direct.by_name(name).pttl(PREFIX + b"forever") == -1
        wait_for(lambda: ring.get(b"short") is None, "the short key to expire", timeout=10)
        assert direct.holders(b"short") == set()
        assert ring.get(b"long") == b"v"
        for bad in (0, -1, float("nan")):
            with pytest.raises(ConfigError, match="ttl"):
                ring.set(b"k", b"v", ttl=bad)


def test_clear_removes_only_the_rings_keys(servers: RedisServers, direct: Direct) -> None:
    direct.clients[0].set(b"someone-else", b"keep")
    with (
        RedisRing(servers.urls, **FAST) as ring,
        RedisRing(servers.urls, namespace="other", **FAST) as neighbour,
    ):
        for k in keys(100):
            ring.set(k, b"v")
        neighbour.set(b"n", b"keep")
        ring.clear()
        assert all(ring.get(k) is None for k in keys(100))
        assert neighbour.get(b"n") == b"keep"
    assert direct.clients[0].get(b"someone-else") == b"keep"
    assert not any(list(c.scan_iter(match=PREFIX + b"*")) for c in direct.clients)


def test_clear_while_a_server_is_unreachable_wipes_it_when_it_is_back(
    servers: RedisServers, direct: Direct
) -> None:
    victim = servers.name(0)
    with RedisRing(servers.urls, replicas=1, health_interval=0.05, timeout=0.2) as ring:
        wait_all_up(ring)
        for k in keys(100):
            ring.set(k, b"old")
        proc = servers.procs[0]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)  # keeps its keys, answers nothing
        try:
            wait_for(lambda: state(ring, victim) == "down", "the paused server marked down")
            ring.clear()
            ring.set(b"after", b"new")
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: state(ring, victim) == "up", "the paused server wiped and up")
        held = {k[len(PREFIX) :] for k in direct.by_name(victim).scan_iter(match=PREFIX + b"*")}
        assert held == ({b"after"} if victim in ring.locate(b"after") else set())
        assert all(ring.get(k) is None for k in keys(100))


def test_threads_share_one_ring(servers: RedisServers) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in keys(200, f"t{t}"):
                ring.set(k, k)
                assert ring.get(k) == k
        except BaseException as exc:
            errors.append(exc)

    with RedisRing(servers.urls, **FAST) as ring:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sum(n["sets"] for n in ring.stats()["nodes"].values()) >= 6 * 200 * 2


# ---------------------------------------------------------------------- handles, stats, errors


CHILD = """
import pickle, sys
ring = pickle.load(sys.stdin.buffer)
with ring:
    sys.stdout.write(repr(ring.get(b"from-parent")))
    ring.set(b"from-child", b"hello")
"""


def test_a_pickled_ring_reconnects_in_a_child_process(servers: RedisServers) -> None:
    with RedisRing(servers.urls, replicas=1, namespace="pickled", **FAST) as ring:
        ring.set(b"from-parent", b"42")
        data = pickle.dumps(ring)
        assert b"127.0.0.1" in data and len(data) < 2000  # the arguments, not the connections
        done = subprocess.run(
            [sys.executable, "-c", CHILD], input=data, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b"b'42'"
        assert ring.get(b"from-child") == b"hello"


def test_stats_and_repr(servers: RedisServers) -> None:
    with RedisRing(servers.urls, replicas=1, **FAST) as ring:
        wait_all_up(ring)
        for k in keys(50):
            ring.set(k, b"v")
            ring.get(k)
        ring.get(b"absent")
        stats = ring.stats()
        assert stats["members"] == sorted(servers.name(i) for i in range(3))
        assert stats["membership"] == "static" and stats["replicas"] == 1
        nodes = stats["nodes"]
        assert sum(n["gets"] for n in nodes.values()) == 51
        assert sum(n["hits"] for n in nodes.values()) == 50
        assert sum(n["sets"] for n in nodes.values()) == 100
        for n in nodes.values():
            assert n["up"] and n["errors"] == 0
            assert 0 < n["latency_us"]["median"] <= n["latency_us"]["p99"]
        assert repr(ring).startswith("RedisRing(3 servers: 3 up, 0 repairing, 0 down; replicas=1")
    with pytest.raises(CacheError, match="closed"):
        ring.get(b"k")
    ring.close()  # twice is fine


def test_every_server_down_at_start_is_named() -> None:
    urls = [f"redis://127.0.0.1:{free_port()}" for _ in range(3)]
    with pytest.raises(CacheError) as caught:
        RedisRing(urls, timeout=0.2)
    assert isinstance(caught.value, SpindleError)
    for url in urls:
        assert url in str(caught.value)


def test_some_servers_down_at_start_warn_and_the_ring_starts(servers: RedisServers) -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    with (
        pytest.warns(UserWarning, match=dead.replace(".", r"\.")),
        RedisRing([*servers.urls[:2], dead], replicas=1, **FAST) as ring,
    ):
        assert ring.stats()["nodes"][dead + "/0"]["state"] == "down"
        for k in keys(100):
            ring.set(k, k)
        assert all(ring.get(k) == k for k in keys(100))


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        RedisRing([])
    with pytest.raises(ConfigError, match="list"):
        RedisRing("redis://127.0.0.1:1")
    with pytest.raises(ConfigError, match="replicas"):
        RedisRing(["redis://127.0.0.1:1"], replicas=-1)
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisRing(["http://127.0.0.1:1"])
    with pytest.raises(ConfigError, match="twice"):
        RedisRing(["redis://127.0.0.1:1", "redis://127.0.0.1:1/0"])


def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(CacheError, match=r"pip install 'spindle\[redis\]'"):
        RedisRing(["redis://127.0.0.1:1"])


def test_a_missing_zookeeper_extra_says_what_to_install(
    servers: RedisServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kazoo", None)
    monkeypatch.setitem(sys.modules, "kazoo.client", None)
    with pytest.raises(CacheError, match=r"pip install 'spindle\[zookeeper\]'"):
        RedisRing(servers.urls, zookeeper="127.0.0.1:1")


# ---------------------------------------------------------------------- ZooKeeper


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeper]:
    why = zookeeper_missing()
    if why is not None:
        pytest.skip(why)
    pytest.importorskip("kazoo", reason="kazoo is not installed: pip install 'spindle[zookeeper]'")
    server = ZooKeeper(tmp_path)
    try:
        yield server
    finally:
        server.close()


def test_membership_follows_the_servers_registered_in_zookeeper(
    servers: RedisServers, zookeeper: ZooKeeper
) -> None:
    names = [servers.name(i) for i in range(3)]

    def members() -> list[str]:
        return list(ring.stats()["members"])

    first = register_node(zookeeper.hosts, servers.urls[0])
    second = register_node(zookeeper.hosts, servers.urls[1])
    third = None
    try:
        with RedisRing([], zookeeper=zookeeper.hosts, replicas=1, **FAST) as ring:
            assert members() == sorted(names[:2])
            assert ring.stats()["membership"] == f"zookeeper {zookeeper.hosts}/spindle/cache/nodes"
            third = register_node(zookeeper.hosts, servers.urls[2])
            wait_for(lambda: members() == sorted(names), "the third server in the ring")
            wait_all_up(ring)
            for k in keys(300):
                ring.set(k, b"v-" + k)
            second.close()  # leaves the ring: its znode is deleted
            wait_for(lambda: members() == sorted([names[0], names[2]]), "the second server out")
            assert [ring.get(k) for k in keys(300)] == [b"v-" + k for k in keys(300)]
            # While it is out, keys change; back in, it holds no stale value.
            for k in keys(100):
                ring.set(k, b"changed")
            ring.delete(b"key-150")
            second = register_node(zookeeper.hosts, servers.urls[1])
            wait_for(lambda: members() == sorted(names), "the second server back")
            wait_all_up(ring)
            expected = [b"changed"] * 100 + [b"v-" + k for k in keys(300)[100:]]
            expected[150] = None
            assert [ring.get(k) for k in keys(300)] == expected
            with redis.Redis.from_url(servers.urls[1]) as back:
                for k, value in zip(keys(300), expected, strict=True):
                    if names[1] in ring.locate(k):
                        assert back.get(PREFIX + k) == value, k
                    else:
                        assert back.get(PREFIX + k) is None, k
    finally:
        for handle in (first, second, third):
            if handle is not None:
                handle.close()


def test_a_registration_is_removed_when_closed(zookeeper: ZooKeeper) -> None:
    kazoo_client = pytest.importorskip("kazoo.client")
    handle = register_node(zookeeper.hosts, "redis://127.0.0.1:6379")
    client = kazoo_client.KazooClient(hosts=zookeeper.hosts)
    client.start(timeout=10)
    try:
        children = client.get_children("/spindle/cache/nodes")
        assert len(children) == 1 and children[0].startswith("redis%3A%2F%2F127.0.0.1%3A6379-")
        assert handle.znode is not None and handle.znode.endswith(children[0])
        handle.close()
        assert client.get_children("/spindle/cache/nodes") == []
    finally:
        handle.close()
        client.stop()
        client.close()


def test_zookeeper_unreachable_is_named(
    servers: RedisServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kazoo", reason="kazoo is not installed: pip install 'spindle[zookeeper]'")
    from spindle.cache import _membership

    monkeypatch.setattr(_membership, "CONNECT_TIMEOUT", 0.5)
    hosts = f"127.0.0.1:{free_port()}"
    with warnings.catch_warnings(), pytest.raises(CacheError, match=f"ZooKeeper at {hosts}"):
        RedisRing(servers.urls, zookeeper=hosts)
