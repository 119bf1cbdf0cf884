"""The cache of the current run: one per process, and ``memoize`` through it.

A run made with a cache installs it in every worker process (and in the caller's
process, for thread and io stages) with :func:`install`; a job reaches it with
``spindle.cache()``. It is one value per process, not per thread or task: the
threads of a thread stage, the tasks of an io stage and the job code in a process
worker must all see the cache the run installed, including threads started before.

``memoize`` without an installed cache calls the function: caching must never change
what a program computes, only how often, so code that memoizes runs the same in a
test, a notebook or a run without a cache. Pass ``required=True`` to have it raise
instead, where running uncached would be a mistake worth knowing about.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from .._errors import CacheError, ConfigError
from ._cache import Cache

P = ParamSpec("P")
R = TypeVar("R")

_guard = threading.Lock()
_installed: list[Cache | None] = [None]


class Installed:
    """What :func:`install` returns. Used as a context manager, it puts back the cache
    that was installed before when the block ends."""

    def __init__(self, cache: Cache | None, previous: Cache | None) -> None:
        self.cache = cache
        self.previous = previous

    def __enter__(self) -> Cache | None:
        return self.cache

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _guard:
            if _installed[0] is self.cache:
                _installed[0] = self.previous

    def __repr__(self) -> str:
        return f"Installed({self.cache!r})"


def install(cache: Cache | None) -> Installed:
    """Make ``cache`` the current cache of this process (None: no cache).

    ``install(c)`` alone keeps it until the next ``install`` (what a worker does at
    start); ``with install(c):`` restores the previous one when the block ends.
    """
    if cache is not None and not isinstance(cache, Cache):
        raise ConfigError(f"install() takes a spindle.Cache or None, not {type(cache).__name__}")
    with _guard:
        previous = _installed[0]
        _installed[0] = cache
    return Installed(cache, previous)


def installed() -> Cache | None:
    """The current cache of this process, or None."""
    return _installed[0]


def current() -> Cache:
    """The cache of the current run (what ``spindle.cache()`` returns).

    Raises :class:`~spindle.CacheError` outside a run made with a cache, unless one
    was installed with :func:`install`.
    """
    cache = _installed[0]
    if cache is None:
        raise CacheError(
            "no cache is installed in this process: spindle.cache() works inside a run "
            "made with a cache, or after spindle.cache.install(spindle.Cache(...))"
        )
    return cache


@overload
def memoize(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def memoize(
    *, ttl: float | None = None, required: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def memoize(
    fn: Callable[P, R] | None = None, /, *, ttl: float | None = None, required: bool = False
) -> Any:
    """Cache a function's results in the current cache (``spindle.cache()``).

    ``@memoize`` or ``@memoize(ttl=60)``. The key is the function's module and
    qualified name and a BLAKE2b digest of its pickled arguments (keyword arguments
    in name order), so arguments that pickle alike share an entry; a set or a dict
    with the same items built in another order may not. The call goes through
    :meth:`Cache.get_or_set`: on a miss one process of the machine computes, the
    others wait for its result. Results must be picklable (``bytes`` and ``str`` are
    stored as they are).

    Without an installed cache the function is called as it is (the module's
    docstring says why); with ``required=True`` that is a :class:`~spindle.CacheError`.
    Arguments that cannot be pickled are a :class:`~spindle.CacheError` naming the
    function. Coroutine functions are refused: their results are not values yet.
    """
    if ttl is not None and not ttl > 0:
        raise ConfigError(f"ttl must be > 0 seconds or None, got {ttl!r}")

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
            raise ConfigError(f"memoize does not wrap async functions ({f.__qualname__})")
        name = f"{f.__module__}.{f.__qualname__}"
        prefix = b"spindle.memoize:" + name.encode() + b":"

        @functools.wraps(f)
        def memoized(*args: P.args, **kwargs: P.kwargs) -> R:
            cache = _installed[0]
            if cache is None:
                if required:
                    current()  # raises, saying how to install one
                return f(*args, **kwargs)
            try:
                blob = pickle.dumps((args, sorted(kwargs.items())), protocol=5)
            except Exception as exc:
                raise CacheError(
                    f"memoize: the arguments of {name} cannot be pickled to make a key "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            key = prefix + hashlib.blake2b(blob, digest_size=16).digest()
            return cache.get_or_set(key, functools.partial(f, *args, **kwargs), ttl=ttl)

        return memoized

    return decorate if fn is None else decorate(fn)
