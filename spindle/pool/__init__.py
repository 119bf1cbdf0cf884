"""Drop-in replacements for ``concurrent.futures`` and ``multiprocessing.Pool``.

:class:`Executor` is a ``concurrent.futures.Executor`` and :class:`Pool` has the API of
``multiprocessing.pool.Pool``; both run their tasks on one long-lived spindle run, so
a crashed worker fails only its own task, a task may have a timeout, and small tasks
are batched to the workers.

The names are loaded on first use: a worker process unpickles the function its
tasks go through (``spindle.pool._calls.apply``), which must not load the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names as _lazy_names

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


__getattr__, __dir__ = _lazy_names(__name__, _LAZY, globals(), __all__)
