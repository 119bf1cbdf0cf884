"""Calling a user's function over a batch of items, in whatever worker runs it.

Shared by the thread executor and the worker process so that a batch means the same
thing everywhere: one entry per item, in order; a failed item leaves ``None`` in its
place and its exception in ``errors``; a generator function's outputs for one item
are gathered into a list (a flat map).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from itertools import islice
from typing import Any


def is_generator_fn(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (or the callable it wraps) returns a generator: a flat-map stage."""
    target = fn if inspect.isroutine(fn) else type(fn).__call__
    return inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(target)


def is_async_fn(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is ``async def`` (a coroutine or an async generator function)."""
    target = fn if inspect.isroutine(fn) else type(fn).__call__
    return any(
        check(f)
        for f in (fn, target)
        for check in (inspect.iscoroutinefunction, inspect.isasyncgenfunction)
    )


def call_batch(
    fn: Callable[[Any], Any], items: list[Any], flat: bool
) -> tuple[list[Any], dict[int, BaseException]]:
    """Apply ``fn`` to each item; return results and the exceptions by index.

    The common case (no failure) runs entirely in C through ``list.extend(map(...))``.
    When an item raises, ``extend`` has kept the results before it (CPython appends as
    it iterates), so the loop records the failure and resumes after that item: no item
    is ever run twice.
    """
    call: Callable[[Any], Any] = (lambda x: list(fn(x))) if flat else fn
    results: list[Any] = []
    errors: dict[int, BaseException] = {}
    n = len(items)
    while True:
        done = len(results)
        try:
            results.extend(map(call, islice(items, done, None)))
        except BaseException as exc:  # SystemExit too, as concurrent.futures does
            i = len(results)
            if i >= n:  # pragma: no cover - raised after the last item: cannot happen
                raise
            errors[i] = exc
            results.append(None)
            continue
        if len(results) != n:  # pragma: no cover - defensive: map stopped early
            raise RuntimeError(f"batch of {n} items produced {len(results)} results")
        return results, errors
