"""The timeout watchdog of sync Ray actors: it kills an actor whose item runs too long.

With a stage ``timeout``, a sync actor notes the item it is running (a small progress
slot, see ``_ray_actor``). One timer per busy actor asks it (``progress``, answered on
a thread of the actor's own) at the item's deadline, and kills the actor when the item
is late; the executor then fails that item with ``Timeout`` and runs the rest of its
batch again. Async actors need none of this: they enforce the timeout themselves, as
deadlines on their loop.

::

    batch sent ── arm() ──▶ timer at +timeout ──▶ still busy? ── progress() ──▶ actor
                              ▲                                                   │
                              ├── oldest batch not started: in timeout/4 ◀────────┤
                              └── item not late yet: at its deadline ◀────────────┤
                                                                                  │
          late, or no answer within 5 s: timed_out; the fleet kills it ◀──────────┘

An actor that does not answer holds the interpreter (a long call into C that keeps
the GIL): which item is late is not known, so its batch runs again item by item.
"""

from __future__ import annotations

import asyncio

from ._ray_fleet import Actor, Fleet

#: Seconds an actor gets to answer ``progress`` before it counts as stuck.
_PROBE_LIMIT = 5.0


class Watchdog:
    """Kills the actors of ``fleet`` whose item has run longer than ``timeout``."""

    def __init__(self, fleet: Fleet, timeout: float) -> None:
        self._fleet = fleet
        self.timeout = timeout

    def arm(self, actor: Actor) -> None:
        """A batch was sent to ``actor``: watch it, unless it is watched already."""
        if actor.timer is None:
            self._watch(actor, self.timeout)

    def _watch(self, actor: Actor, delay: float) -> None:
        loop = self._fleet.loop
        assert loop is not None
        actor.timer = loop.call_later(max(delay, 0.0), self._check, actor)

    def _check(self, actor: Actor) -> None:
        actor.timer = None
        if actor.alive and actor.pending and not self._fleet.closing:
            self._fleet.spawn(self._probe(actor))

    async def _probe(self, actor: Actor) -> None:
        """Is the item ``actor`` is running past its deadline? Kill the actor if so."""
        timeout = self.timeout
        try:
            async with asyncio.timeout(_PROBE_LIMIT):
                ident, index, elapsed = await actor.handle.progress.remote()
        except TimeoutError:
            # No answer: the job holds the interpreter (a long call into C that keeps
            # the GIL). Which item is not known; its batch runs again item by item.
            if actor.alive and actor.pending:
                actor.timed_out = (min(actor.pending), -1)
                self._fleet.kill(actor)
            return
        except self._fleet.ray.exceptions.RayError:
            return  # it died meanwhile: its batches learn of it
        if not actor.alive or not actor.pending or actor.timer is not None:
            return
        if ident != min(actor.pending):
            self._watch(actor, timeout / 4)  # the oldest batch has not started yet
            return
        overdue = elapsed - timeout
        if overdue < 0:
            self._watch(actor, -overdue)
            return
        actor.timed_out = (ident, index)
        self._fleet.kill(actor)
