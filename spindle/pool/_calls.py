"""What a worker runs for :mod:`spindle.pool`: a call given as data.

A task of an executor is ``(fn, args, kwargs)``, a plain tuple: it pickles at C speed
and a batch of tasks with the same function pickles that function once. This module
imports nothing of the engine, so a spawned worker that unpickles ``apply`` loads
only this (the package's ``__init__`` is lazy for the same reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

Task = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def apply(task: Task) -> Any:
    """Run one task: the stage function of an executor."""
    fn, args, kwargs = task
    return fn(*args, **kwargs)


def run_chunk(fn: Callable[..., Any], chunk: Iterable[Any], star: bool) -> list[Any]:
    """Run ``fn`` over a chunk of items (``map`` with a ``chunksize``), as one task."""
    if star:
        return [fn(*args) for args in chunk]
    return [fn(x) for x in chunk]


class CallsStopped(Exception):
    """A chunk of :func:`run_calls` stopped at a call that raised: the results of the
    calls before it, and what it raised (the worker's traceback is this exception's)."""

    def __init__(self, results: list[Any], error: BaseException) -> None:
        super().__init__(results, error)
        self.results = results
        self.error = error


def run_calls(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    """``fn(*args)`` for each call of a chunk that ``Executor.map`` made: the results
    and the seconds they took (how the map sizes its next chunks)."""
    started = time.perf_counter()
    results: list[Any] = []
    try:
        for args in calls:
            results.append(fn(*args))
    except BaseException as exc:  # as a task would: SystemExit too
        raise CallsStopped(results, exc) from exc
    return results, time.perf_counter() - started


class Initializer:
    """``initializer(*initargs)`` as a stage's ``init``: called once in each worker.

    A class rather than a ``functools.partial`` so that what the initializer returns
    is dropped: a stage's ``init`` hands its return value to jobs as the worker's
    state, and may treat a generator or a context manager as a set-up with a
    teardown, which a ``concurrent.futures`` initializer never is.
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    def __call__(self) -> None:
        self.fn(*self.args)
