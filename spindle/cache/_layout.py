"""Where a key lives: the ring's servers placed by consistent hashing, a key's copies.

```
  URL ──_name_of──▶ name ──_slot_of──▶ slot ──▶ vnodes points on the ring (HashRing)
  redis://u:pw@Host:6379/0   redis://host:6379/0   blake2b, 64 bits

  key ──blake2b──▶ its point on the ring
                     │ walk on from there: the first
                     ▼ 1 + replicas distinct servers are its copies, the owner first
```

A server's place on the ring comes from its URL without credentials
(``redis://host:port/db``), so every client, in every process and on every machine,
puts a key on the same servers, and a server that joins or leaves moves only the keys
next to its points. Every client must name a server the same way.

A :class:`_Layout` is never changed: a membership change builds a new one, swapped in
with one assignment, so a reader holds one consistent view for as long as it needs.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._errors import CacheError
from ..policies.dispatch import HashRing
from ._nodes import _Node


def _name_of(url: str, args: Mapping[str, Any]) -> str:
    """A server's name, the same in every client: ``url`` (parsed into ``args`` by
    redis-py) without its credentials or options."""
    if "path" in args:
        return f"unix://{args['path']}?db={args.get('db', 0)}"
    scheme = "rediss" if url.lower().startswith("rediss:") else "redis"
    host = str(args.get("host", "localhost")).lower()
    return f"{scheme}://{host}:{args.get('port', 6379)}/{args.get('db', 0)}"


def _slot_of(name: str) -> int:
    """A server's id on the ring: a 64-bit hash of its name, the same everywhere."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


class _Layout:
    """The ring as it stands: the member servers and their places. Never changed: a
    membership change builds a new one, swapped in with one assignment."""

    __slots__ = ("_why_empty", "members", "nodes", "ring")

    def __init__(self, nodes: Iterable[_Node], points: int, why_empty: str) -> None:
        self.nodes = {node.slot: node for node in nodes}
        self.members = tuple(sorted(self.nodes.values(), key=lambda n: n.name))
        self.ring = HashRing(self.nodes, points=points) if self.nodes else None
        self._why_empty = why_empty

    def walk(self, key: bytes) -> Iterator[int]:
        if self.ring is None:
            raise CacheError(self._why_empty)
        return self.ring.walk(key)

    def copies(self, key: bytes, n: int) -> list[_Node]:
        nodes = self.nodes
        return [nodes[slot] for slot in itertools.islice(self.walk(key), n)]
