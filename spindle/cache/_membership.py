"""Which Redis servers make up the ring: a fixed list, or the servers registered in ZooKeeper.

A :class:`Membership` holds the latest list of server URLs (:meth:`~Membership.members`)
and calls the ring back, from a thread of its own, each time the list changes; the ring
then reads the latest list (so a callback that comes late never installs an old one):

```
 static list ───────────────────────────────▶ members (never changes; the ring's
                                              health checks mark servers down and up)

 ZooKeeper   /spindle/cache/nodes/            kazoo's thread
             ├─ redis%3A%2F%2Fa%3A6379-0000000007   ──ChildrenWatch──▶ on_change()
             └─ redis%3A%2F%2Fb%3A6379-0000000012        (every change, after a
                 (ephemeral, one per registered server)   lost session too)
```

A server is registered with :func:`register_node`: an ephemeral, sequential znode whose
name is the URL, quoted, so the children's names alone give the members (one read, no
read per child) and a registration left by a crashed process cannot block a new one; it
goes away when its ZooKeeper session ends. The handle re-creates its znode when its
session was lost and the client reconnects.

kazoo is imported only when ZooKeeper is used (``pip install 'spindle[zookeeper]'``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any
from urllib.parse import quote, unquote

from .._errors import CacheError

#: Where Redis servers are registered in ZooKeeper, unless told otherwise.
DEFAULT_PATH = "/spindle/cache/nodes"
#: Seconds to wait for ZooKeeper when starting.
CONNECT_TIMEOUT = 10.0

OnChange = Callable[[], None]


class Membership:
    """The servers of the ring (a fixed list here; subclasses may change it)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self._urls = frozenset(urls)

    def start(self, on_change: OnChange) -> None:
        """Start watching; ``on_change()`` is called after each change of :meth:`members`."""

    def members(self) -> frozenset[str]:
        """The URLs of the servers in the ring now."""
        return self._urls

    def describe(self) -> str:
        return "static"

    def close(self) -> None:
        """Stop watching: no call of ``on_change`` starts after this returns."""


class ZooKeeperMembership(Membership):
    """The servers registered under ``path`` in ZooKeeper, plus the fixed ``urls``."""

    def __init__(self, hosts: str, urls: Iterable[str] = (), *, path: str = DEFAULT_PATH) -> None:
        super().__init__(urls)
        self.hosts = hosts
        self.path = path
        self._client: Any = None
        self._lock = threading.Lock()
        self._on_change: OnChange | None = None
        self._latest: frozenset[str] = frozenset()
        self._closed = False

    def start(self, on_change: OnChange) -> None:
        with self._lock:
            self._on_change = on_change
        client = self._client = _connect(self.hosts)
        try:
            client.ensure_path(self.path)
            _kazoo("kazoo.recipe.watchers").ChildrenWatch(client, self.path, self._children)
        except BaseException:
            self.close()
            raise

    def members(self) -> frozenset[str]:
        with self._lock:
            return self._latest | self._urls

    def _children(self, children: list[str]) -> bool:
        """ChildrenWatch's callback (kazoo's thread, or the caller's for the first list)."""
        urls = frozenset(_url_of(name) for name in children)
        with self._lock:
            if self._closed:
                return False  # stop watching
            self._latest = urls
            on_change = self._on_change
        if on_change is not None:
            on_change()
        return True

    def describe(self) -> str:
        return f"zookeeper {self.hosts}{self.path}"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._on_change = None
            client, self._client = self._client, None
        if client is not None:
            client.stop()
            client.close()


class Registration:
    """A Redis server registered in ZooKeeper; ``close()`` removes it.

    Returned by :func:`register_node`. While it is open the server is a member of every
    ring that watches the same ZooKeeper path.
    """

    def __init__(self, client: Any, url: str, path: str) -> None:
        self.url = url
        self._client = client
        self._parent = path
        self._lock = threading.Lock()
        self._znode: str | None = None
        self._lost = False
        self._closed = False
        client.add_listener(self._on_state)
        self._create()

    @property
    def znode(self) -> str | None:
        """The full path of the server's znode (None once closed)."""
        return self._znode

    def _create(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._znode = self._client.create(
                f"{self._parent}/{quote(self.url, safe='')}-",
                self.url.encode(),
                ephemeral=True,
                sequence=True,
                makepath=True,
            )

    def _on_state(self, state: str) -> None:
        """kazoo's connection listener: after a lost session, register again.

        Listeners must not block, so the znode is made on kazoo's handler.
        """
        if state == "LOST":
            self._lost = True
        elif state == "CONNECTED" and self._lost:
            self._lost = False
            self._client.handler.spawn(self._create)

    def close(self) -> None:
        """Remove the server from the ring (its znode) and end the ZooKeeper session."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            znode, self._znode = self._znode, None
        try:
            if znode is not None and self._client.connected:
                self._client.delete(znode)
        except _kazoo("kazoo.exceptions").NoNodeError:
            pass
        finally:
            self._client.remove_listener(self._on_state)
            self._client.stop()  # ends the session: an ephemeral znode goes with it anyway
            self._client.close()

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._znode
        return f"Registration({self.url!r}, {state})"


def register_node(zookeeper: str, url: str, *, path: str = DEFAULT_PATH) -> Registration:
    """Register the Redis server at ``url`` in ZooKeeper (``"HOST:PORT"``).

    Every :class:`~spindle.cache._ring.RedisRing` started with the same ``zookeeper``
    and ``path`` takes the server in while the returned handle is open; ``close()`` (or
    the end of this process, which ends the ZooKeeper session) takes it out.
    """
    client = _connect(zookeeper)
    try:
        return Registration(client, url, path)
    except BaseException:
        client.stop()
        client.close()
        raise


def _url_of(name: str) -> str:
    """The URL a child znode's name stands for (``quote(url)-SEQUENCE``)."""
    return unquote(name.rpartition("-")[0])


def _connect(hosts: str) -> Any:
    """A started kazoo client, or a CacheError naming ``hosts``."""
    client = _kazoo("kazoo.client").KazooClient(hosts=hosts)
    try:
        client.start(timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        client.stop()
        client.close()
        raise CacheError(
            f"cannot reach ZooKeeper at {hosts} within {CONNECT_TIMEOUT:g} s: {exc}"
        ) from exc
    return client


def _kazoo(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CacheError(
            "membership from ZooKeeper needs kazoo: pip install 'spindle[zookeeper]'"
        ) from exc
