"""A served job, what waits for it, and how its outcome is told over HTTP.

Every item a request brings becomes a :class:`Job`. The job goes into the served run as
the *tag* of its item, so the run hands it back beside its result and nothing has to be
looked up by id on the way back. A request waits on a :class:`Waiter`, one per request,
not one per job: an NDJSON batch of a thousand items is woken once per chunk of results,
not a thousand times.

::

    request ──items──▶ Job, Job, ... (waiter = the request's) ──▶ the run
                                                                   │
    request ◀── waiter.wake() ◀── finish(jobs, values) on the loop ◀┘
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import orjson

from .._failure import Failure
from ..connectors._json import JSON_OPTIONS, json_default

__all__ = ["Job", "Waiter", "encode_outcome", "new_id", "status_of"]

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"

#: The failures that are the server's doing, not the job's: the job was accepted and
#: never got its answer because the server stopped.
STOPPED = "ServerStopping"

_counter = itertools.count()
_PREFIX = os.urandom(5).hex()


def new_id() -> str:
    """A job id: unique in this server process and across its restarts (a random
    prefix per process, then a counter), and short."""
    return f"{_PREFIX}{next(_counter):x}"


class Waiter:
    """What one request waits on: woken once whenever any of its jobs finishes."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    async def wait(self) -> None:
        """Wait until woken, then be ready to wait again (bound it with
        ``asyncio.timeout``)."""
        if not self.future.done():
            await self.future
        self.future = self.loop.create_future()


class Job:
    """One item of a request: its id (jobs submitted to ``/jobs``; None for ``/run``),
    its state, and its result or :class:`~spindle.Failure` once finished."""

    __slots__ = ("accepted", "id", "idem", "item", "state", "value", "waiters")

    def __init__(
        self, item: Any, waiter: Waiter | None, job_id: str | None = None, idem: str | None = None
    ) -> None:
        self.item = item
        self.id = job_id
        self.idem = idem
        self.state = QUEUED
        self.value: Any = None
        self.waiters: list[Waiter] | Waiter | None = waiter
        self.accepted = time.time()

    @property
    def finished(self) -> bool:
        return self.state is DONE or self.state is FAILED

    def watch(self, waiter: Waiter) -> None:
        """Wake ``waiter`` too when the job finishes (a ``GET /jobs/{id}?wait=``)."""
        current = self.waiters
        if current is None:
            self.waiters = waiter
        elif isinstance(current, list):
            current.append(waiter)
        else:
            self.waiters = [current, waiter]

    def unwatch(self, waiter: Waiter) -> None:
        current = self.waiters
        if current is waiter:
            self.waiters = None
        elif isinstance(current, list) and waiter in current:
            current.remove(waiter)

    def finish(self, value: Any) -> None:
        """Record the outcome and wake whoever waits (on the server's loop)."""
        self.value = value
        self.state = FAILED if type(value) is Failure else DONE
        self.item = None  # the input is not needed any more; its result may be kept
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            if isinstance(waiters, list):
                for w in waiters:
                    w.wake()
            else:
                waiters.wake()


def status_of(failure: Failure) -> int:
    """The HTTP status of a failed job: 504 past its timeout, 503 when the server
    stopped before it finished, 500 when its worker died under it, else 422."""
    error = failure.error
    if error == "Timeout":
        return 504
    if error == STOPPED:
        return 503
    if error == "WorkerCrashed":
        return 500
    return 422


def failure_body(failure: Failure, traceback: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": failure.error,
        "message": failure.message,
        "attempts": failure.attempts,
    }
    if traceback:
        body["traceback"] = failure.traceback
    return body


def encode_outcome(value: Any, traceback: bool = False) -> tuple[int, bytes]:
    """A finished job's HTTP status and JSON body: ``{"result": ...}``, or the failure
    (``error``, ``message``, ``attempts``, and ``traceback`` when asked for). A result
    that JSON cannot carry is a 500 naming its type."""
    if type(value) is Failure:
        return status_of(value), orjson.dumps(failure_body(value, traceback))
    try:
        return 200, orjson.dumps({"result": value}, default=json_default, option=JSON_OPTIONS)
    except TypeError as exc:
        return 500, orjson.dumps(
            {"error": "UnencodableResult", "message": f"the result is not JSON: {exc}"}
        )


def describe(job: Job, traceback: bool = False) -> tuple[int, bytes]:
    """``GET /jobs/{id}``: the job's state, with its result or failure once finished."""
    body: dict[str, Any] = {"id": job.id, "state": job.state}
    if job.state is DONE:
        body["result"] = job.value
    elif job.state is FAILED:
        body.update(failure_body(job.value, traceback))
    try:
        return 200, orjson.dumps(body, default=json_default, option=JSON_OPTIONS)
    except TypeError as exc:
        body["result"] = None
        body["state"] = FAILED
        body.update(error="UnencodableResult", message=f"the result is not JSON: {exc}")
        return 200, orjson.dumps(body, default=str)
