"""The cache shared in memory by the worker processes of one machine.

::

    cache = spindle.Cache("256MB")           # LMDB on /dev/shm, shared by every process
    cache.set("k", b"v", ttl=60)
    cache.get_or_set("k", compute)           # one process computes, the others wait

    spindle.cache.install(cache)             # the current run's cache, in this process
    spindle.cache().get("k")                 # ... as a job reaches it

    @spindle.memoize(ttl=3600)
    def parse(url: str) -> dict: ...

``spindle.cache`` is this package, and calling it returns the current cache (see
:func:`current`): the package is callable so that the name means the same whether
``spindle.cache`` was reached as the function or imported as the package.
``docs/architecture.md`` ("The shared cache") has the design and the figures.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from .._errors import CacheError as CacheError
from ._cache import Cache as Cache
from ._cache import CacheStats as CacheStats
from ._current import Installed as Installed
from ._current import current as current
from ._current import install as install
from ._current import installed as installed
from ._current import memoize as memoize

__all__ = [
    "Cache",
    "CacheError",
    "CacheStats",
    "Installed",
    "current",
    "install",
    "installed",
    "memoize",
]


class _CallablePackage(types.ModuleType):
    """The type of ``spindle.cache``: calling the package returns the current cache."""

    def __call__(self) -> Cache:
        return current()


sys.modules[__name__].__class__ = _CallablePackage

if TYPE_CHECKING:

    def cache() -> Cache:
        """The current run's cache (``spindle.cache()``): see :func:`current`."""
        ...

else:
    #: What ``spindle`` exports lazily as ``cache``: this package, which is callable.
    cache = sys.modules[__name__]
