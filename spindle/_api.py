"""The functions users call: ``map`` and the stage constructors."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from typing import Any

from ._core.pipeline import OnError, Pipeline, Results
from ._core.stage import Stage, make_stage


def io(
    fn: Callable[[Any], Any],
    *,
    concurrency: int | None = None,
    name: str | None = None,
    buffer: int | None = None,
) -> Stage:
    """A stage running an ``async def`` function on the pipeline's event loop, up to
    ``concurrency`` calls at once (default 100)."""
    return make_stage(fn, "io", concurrency=concurrency, name=name, buffer=buffer)


def thread(
    fn: Callable[[Any], Any],
    *,
    workers: int | None = None,
    name: str | None = None,
    batch_size: int | None = None,
    buffer: int | None = None,
) -> Stage:
    """A stage running a blocking function on ``workers`` threads
    (default ``min(32, cores + 4)``)."""
    return make_stage(
        fn, "thread", workers=workers, name=name, batch_size=batch_size, buffer=buffer
    )


def cpu(
    fn: Callable[[Any], Any],
    *,
    workers: int | None = None,
    concurrency: int | None = None,
    name: str | None = None,
    batch_size: int | None = None,
    buffer: int | None = None,
    start_method: str = "auto",
) -> Stage:
    """A stage running a function on ``workers`` processes (default: the cores).

    Items are sent in batches whose size adapts to the measured cost per item, unless
    ``batch_size`` fixes it. An ``async def`` function runs on an event loop in each
    process with up to ``concurrency`` calls in flight per process (default 100):
    I/O on every core.
    """
    return make_stage(
        fn,
        "cpu",
        workers=workers,
        concurrency=concurrency,
        name=name,
        batch_size=batch_size,
        buffer=buffer,
        start_method=start_method,
    )


def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    kind: str = "cpu",
    workers: int | None = None,
    concurrency: int | None = None,
    ordered: bool = True,
    on_error: OnError = "raise",
    batch_size: int | None = None,
    with_inputs: bool = False,
) -> Results:
    """Apply ``fn`` to every item, lazily, on processes, threads or an event loop.

    Returns a lazy iterator of results, in input order unless ``ordered=False``.
    ``items`` is read as results are consumed, never all at once. With
    ``on_error="raise"`` the first failure stops the run and is raised (its original
    type, with the worker's traceback as ``__cause__``); with ``"yield"`` a
    :class:`~spindle.Failure` takes the failed item's place.
    """
    stage = make_stage(fn, kind, workers=workers, concurrency=concurrency, batch_size=batch_size)
    pipeline = Pipeline([stage], ordered=ordered, on_error=on_error)
    return pipeline.run(items, with_inputs=with_inputs)


__all__ = ["cpu", "io", "map", "thread"]
_ = builtins  # the builtin map stays reachable as builtins.map inside this package
