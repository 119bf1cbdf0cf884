"""The ring's health thread: servers marked down and up, and repaired when they come back.

A server is marked down as soon as a command to it fails to reach it (by any caller);
the health thread PINGs every member each ``health_interval`` and repairs those that
answer again before they are read:

```
  health thread ── PING every health_interval ── down node answers ──▶ repairing:
        1. resynced whole if it has no sentinel key (new, or restarted empty), and
           wiped first if what it holds may be stale (its hints overflowed: a flag on
           another server; or it left the ring: a key on itself), under a lock key on
           it: every key of which it holds a copy is copied from the others (SET NX)
        2. its hint sets on the other servers are popped and replayed (SET or DEL,
           with the remaining PTTL), and the hints it holds for others likewise
        3. up: it is read again
```

Decisions and limits:

- **A server that comes back** (the health check sees it answer) is not read until
  it is repaired; writes go to it at once. A server whose hints overflowed (past
  ``MAX_HINTS``, see :mod:`spindle.cache._ring`) is flagged and resynced whole instead,
  as is one that restarted empty (it has no sentinel key). The repair runs in the
  health thread of every client that sees the server come back (the resync under a
  lock key, so one client does it).
- **At start** (:meth:`_Health.probe`) every member is asked at once whether it
  answers, has its sentinel, left the ring, and holds hints or flags for the others;
  the servers that missed writes are repairing from the first round.
- **Not covered**: a value written during the milliseconds its key is being replayed
  can be overwritten on the returning server by the older copy, until the key is
  next written or expires; a server that restarts empty and is back before any
  client noticed it was gone is seen by its missing sentinel only when a client
  starts (reads of its keys miss until then, they never return a wrong value).
  Hints popped by a client that dies before writing them are lost.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._errors import CacheError
from ._layout import _Layout
from ._nodes import _PING, BATCH, DOWN, REPAIRING, UP, _Keys, _Node, _pack

# The ring's logger: one name for everything the ring reports, whichever module does.
log = logging.getLogger("spindle.cache._ring")

#: Milliseconds a resync holds its lock key on the server it fills: a resync whose
#: client died is taken over after this.
RESYNC_LOCK_MS = 60_000


class _Health:
    """The health thread of one ring, and the state changes of its servers.

    ``current_layout()`` is the ring's layout as it stands; ``lock`` is the ring's lock
    over node states (the ring takes it too, to mark a server back in the ring as
    repairing); ``copies`` is the number of servers holding each key (1 + replicas);
    ``errors`` are the exceptions that mean a server cannot be reached. Thread-safe;
    :meth:`stop` joins the thread.
    """

    def __init__(
        self,
        current_layout: Callable[[], _Layout],
        *,
        keys: _Keys,
        copies: int,
        errors: tuple[type[BaseException], ...],
        lock: threading.Lock,
        interval: float,
    ) -> None:
        self._current_layout = current_layout
        self._keys = keys
        self._copies = copies
        self._errors = errors
        self._lock = lock
        self._interval = interval
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spindle-cache-health", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Check every server now, not at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread (a repair under way stops at its next batch) and join it."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    # ------------------------------------------------------------------ states

    def mark_down(self, node: _Node, exc: BaseException) -> None:
        """``node`` could not be reached: skipped by reads and writes until it answers."""
        node.errors += 1
        node.last_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if node.state == DOWN:
                return
            node.state = DOWN
        log.warning(
            "Redis server %s is down (%s); its keys are read from their copies", node.name, exc
        )

    def _set_state(self, node: _Node, state: str, *, expect: str) -> bool:
        with self._lock:
            if node.state != expect:
                return False
            node.state = state
            return True

    # ------------------------------------------------------------------ at start

    def probe(self) -> None:
        """At start: which servers answer, and which need a repair before being read.

        Called by the ring's constructor (a warning names the servers that do not
        answer, and points at the ring's caller); the layout must have members.
        """
        members = self._current_layout().members
        keys = self._keys
        found: dict[_Node, list[Any]] = {}
        unreachable: dict[_Node, str] = {}
        for node in members:
            others = [m for m in members if m is not node]
            payload = _PING + _pack(b"EXISTS", keys.sentinel) + _pack(b"EXISTS", keys.left)
            for m in others:
                payload += _pack(b"SCARD", keys.hint_prefix + m.tag)
                payload += _pack(b"EXISTS", keys.flag_prefix + m.tag)
            try:
                found[node] = node.call(payload, 3 + 2 * len(others))
            except Exception as exc:
                if not isinstance(exc, self._errors):
                    raise CacheError(f"Redis server {node.name} refused a command: {exc}") from exc
                node.last_error = f"{type(exc).__name__}: {exc}"
                node.state = DOWN
                unreachable[node] = str(exc)
        if not found:
            lines = "; ".join(f"{n.name} ({why})" for n, why in unreachable.items())
            raise CacheError(f"no Redis server of the ring answers: {lines}")
        if unreachable:
            warnings.warn(
                "Redis servers down at start (their keys are read from their copies): "
                + ", ".join(n.name for n in unreachable),
                stacklevel=3,
            )
        owed: set[_Node] = set()
        for node, answers in found.items():
            if not answers[1] or answers[2]:
                owed.add(node)  # no sentinel (new, or restarted empty), or it left the ring
            others = [m for m in members if m is not node]
            for i, m in enumerate(others):
                if answers[3 + 2 * i] or answers[4 + 2 * i]:
                    owed.add(m)  # it missed writes while it was down
        for node in found:
            node.state = REPAIRING if node in owed else UP
        if owed:
            self._wake.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        """The health thread: PING every server each interval; repair those that return."""
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            for node in self._current_layout().members:
                if self._stopping:
                    return
                try:
                    self._check(node)
                except Exception as exc:  # an error reply: keep checking the others
                    node.errors += 1
                    node.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("checking Redis server %s failed: %s", node.name, exc)
            if self._stopping:
                return

    def _check(self, node: _Node) -> None:
        state = node.state
        if state != REPAIRING:
            try:
                node.call(_PING)
            except self._errors as exc:
                if state == UP:
                    self.mark_down(node, exc)
                else:
                    node.last_error = f"{type(exc).__name__}: {exc}"
                return
            if state == UP:
                return
            if not self._set_state(node, REPAIRING, expect=DOWN):
                return
            log.info("Redis server %s answers again; repairing it", node.name)
        try:
            repaired = self._repair(node)
        except self._errors as exc:
            self.mark_down(node, exc)
            return
        if repaired and self._set_state(node, UP, expect=REPAIRING):
            log.info("Redis server %s is up", node.name)

    # ------------------------------------------------------------------ repair

    def _repair(self, node: _Node) -> bool:
        """Bring ``node`` up to date; False when another client is resyncing it.

        Errors from ``node`` propagate (the caller marks it down); a server it copies
        from that fails is marked down and passed over.
        """
        keys = self._keys
        others = [n for n in self._current_layout().members if n is not node and n.state != DOWN]
        flag = keys.flag_prefix + node.tag
        has_sentinel, left = node.call(
            _pack(b"EXISTS", keys.sentinel) + _pack(b"EXISTS", keys.left), 2
        )
        flagged = [h for h in others if self._ask(h, _pack(b"EXISTS", flag))]
        wipe = bool(flagged or left)  # what it holds may be stale: start again
        if wipe or not has_sentinel:
            token = os.urandom(8).hex().encode()
            lock = _pack(b"SET", keys.resync_lock, token, b"NX", b"PX", b"%d" % RESYNC_LOCK_MS)
            (taken,) = node.call(lock)
            if taken is None:
                return False  # another client resyncs it; look again next round
            try:
                if wipe:
                    for batch in node.scan(keys.prefix + b"*"):
                        node.call(_pack(b"UNLINK", *batch))
                    for h in flagged:
                        self._ask(h, _pack(b"DEL", flag))
                    node.call(_pack(b"DEL", keys.left))
                for h in others:
                    self._resync_from(h, node)
                    if self._stopping:
                        return False
                node.call(_pack(b"SET", keys.sentinel, node.name.encode()))
            finally:
                (held,) = node.call(_pack(b"GET", keys.resync_lock))
                if held == token:
                    node.call(_pack(b"DEL", keys.resync_lock))
        for h in others:  # the writes it missed, remembered on the others
            self._replay(h, node, keys.hint_prefix + node.tag)
        for m in others:  # the writes others missed, remembered on it
            if m.state == UP:
                self._replay(node, m, keys.hint_prefix + m.tag)
        return True

    def _ask(self, node: _Node, command: bytes) -> Any:
        """One command to a server a repair reads from: None if it fails (marked down)."""
        try:
            return node.call(command)[0]
        except self._errors as exc:
            self.mark_down(node, exc)
            return None

    def _read_from(self, source: _Node, payload: bytes, replies: int = 1) -> list[Any]:
        """A repair's command to a server it copies from: one that fails is marked down
        and the repair passes over it (:class:`_SourceLost`)."""
        try:
            return source.call(payload, replies)
        except self._errors as exc:
            self.mark_down(source, exc)
            raise _SourceLost(source.name) from exc

    def _scan_source(self, source: _Node, pattern: bytes) -> Iterator[list[bytes]]:
        """``source.scan(pattern)`` for a repair: ``source`` failing is :class:`_SourceLost`
        (only its own commands raise here, not the caller's between two batches)."""
        try:
            yield from source.scan(pattern)
        except self._errors as exc:
            self.mark_down(source, exc)
            raise _SourceLost(source.name) from exc

    def _resync_from(self, source: _Node, target: _Node) -> None:
        """Copy to ``target`` every key on ``source`` of which both hold a copy (SET NX:
        a key written to ``target`` since it came back is newer)."""
        layout, prefix = self._current_layout(), self._keys.prefix
        cut = len(prefix)
        try:
            for batch in self._scan_source(source, prefix + b"*"):
                keys = [
                    k[cut:]
                    for k in batch
                    if {source, target} <= set(layout.copies(k[cut:], self._copies))
                ]
                if keys:
                    self._copy(source, target, keys, only_new=True)
                if self._stopping:
                    return
        except _SourceLost:
            return

    def _replay(self, holder: _Node, target: _Node, hint: bytes) -> None:
        """Pop the hint set ``hint`` on ``holder`` and write each key's value there (or
        its absence) to ``target``."""
        try:
            while not self._stopping:
                (keys,) = self._read_from(holder, _pack(b"SPOP", hint, b"%d" % BATCH))
                if not keys:
                    return
                self._copy(holder, target, keys, only_new=False)
        except _SourceLost:
            return

    def _copy(self, source: _Node, target: _Node, keys: Sequence[bytes], *, only_new: bool) -> None:
        """Copy ``keys`` (the caller's keys, unprefixed) from ``source`` to ``target``
        with their remaining time to live; a key gone from ``source`` is deleted on
        ``target`` unless ``only_new``."""
        prefix = self._keys.prefix
        ask = b"".join(_pack(b"GET", prefix + k) + _pack(b"PTTL", prefix + k) for k in keys)
        answers = self._read_from(source, ask, 2 * len(keys))
        out: list[bytes] = []
        for i, key in enumerate(keys):
            value, ttl = answers[2 * i], answers[2 * i + 1]
            pkey = prefix + key
            if value is None or ttl == -2:
                if not only_new:
                    out.append(_pack(b"DEL", pkey))
                continue
            args = [b"SET", pkey, value]
            if ttl > 0:
                args += (b"PX", b"%d" % ttl)
            if only_new:
                args.append(b"NX")
            out.append(_pack(*args))
        if out:
            target.call(b"".join(out), len(out))
            target.repairs += len(out)


class _SourceLost(Exception):
    """A server a repair was copying from failed; it is marked down."""
