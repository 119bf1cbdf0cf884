"""The value a stage's ``init`` function returned, as seen from inside a job."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from ._errors import SpindleError

_UNSET: Any = object()
STATE: ContextVar[Any] = ContextVar("spindle_worker_state", default=_UNSET)


def worker_state() -> Any:
    """What this worker's ``init`` function returned (a model, a connection...).

    Each worker runs ``init`` once: each process of a cpu stage, each thread of a
    thread stage, the event loop of an io stage. Call this inside the job.
    """
    value = STATE.get()
    if value is _UNSET:
        raise SpindleError(
            "worker_state() is only available inside a job of a stage created with init="
        )
    return value
