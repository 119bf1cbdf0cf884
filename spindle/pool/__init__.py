"""Drop-in replacements for ``concurrent.futures`` and ``multiprocessing.Pool``.

:class:`Executor` is a ``concurrent.futures.Executor`` and :class:`Pool` has the API of
``multiprocessing.pool.Pool``; both run their tasks on one long-lived spindle run, so
a crashed worker fails only its own task, a task may have a timeout, and small tasks
are batched to the workers.

The names are loaded on first use: a worker process unpickles the function its
tasks go through (``spindle.pool._calls.apply``), which must not load the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import Executor as Executor
    from ._pool import AsyncResult as AsyncResult
    from ._pool import IMapIterator as IMapIterator
    from ._pool import MapResult as MapResult
    from ._pool import Pool as Pool

__all__ = ["AsyncResult", "Executor", "IMapIterator", "MapResult", "Pool"]

_LAZY = {
    "Executor": "._executor",
    "AsyncResult": "._pool",
    "IMapIterator": "._pool",
    "MapResult": "._pool",
    "Pool": "._pool",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
