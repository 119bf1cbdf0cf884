"""The functions users call: ``map`` and the stage constructors.

Every stage constructor and :func:`map` take the same options (``StageOptions``):

- ``name``: the stage's name in stats, errors and reports (default: the function's).
- ``batch_size``: items per batch sent to a worker (default: adaptive).
- ``buffer``: capacity of the channel feeding the stage.
- ``timeout``: seconds a job may run. An io job is cancelled; a cpu job's worker
  process is killed and replaced; a thread job cannot be stopped, so it is abandoned
  (it fails at once and a new thread takes its place). The job fails with ``Timeout``,
  or is retried.
- ``retries``, ``backoff`` (base or ``(base, cap)`` seconds), ``retry_on``,
  ``permanent``: retry failed jobs with exponential backoff and full jitter. A job
  waiting for its retry holds no worker and no concurrency slot.
- ``init``: a function run once in each worker (each process, each thread, or the
  loop of an io stage) whose return value jobs get from :func:`spindle.worker_state`.
- ``max_jobs_per_worker``, ``max_memory_per_worker`` (bytes, or ``"512MB"``): replace
  a worker process after the batch that reaches the limit (cpu stages).
- ``start_method``: ``"auto"`` (fork when safe), ``"fork"`` or ``"spawn"`` (cpu).
- ``route``: a function of the item giving its key (a host name, a user id): items
  with the same key always go to the same worker process, by consistent hashing, so
  per-key state (limits, connections, caches) lives in one place; when that worker
  is replaced the key moves to the next worker on the ring meanwhile (cpu). A key
  ``(key, i)`` spreads one busy key over workers: the i-th worker in the key's ring
  order (the fetch stage does so for a host that needs no spacing).
- ``reporter``: a function called in each worker with its state (what ``init``
  returned, or None) that returns a small dict of plain data, e.g. cache hits. Each
  worker reports at most once a second and once more when it stops; the stage's
  entry in a snapshot holds the workers' latest reports merged, as ``report``.
- ``merge_reports``: merges a list of reports into one (default: numbers added up
  key by key, nested dicts too; for other values the last report's). It gets ended
  workers' reports first, then live workers', and must accept its own output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Unpack

from ._core.pipeline import OnError, Pipeline, Results
from ._core.stage import Stage, StageOptions, make_stage


def io(
    fn: Callable[[Any], Any], *, concurrency: int | None = None, **options: Unpack[StageOptions]
) -> Stage:
    """A stage running an ``async def`` function on the pipeline's event loop, up to
    ``concurrency`` calls at once (default 100)."""
    return make_stage(fn, "io", concurrency=concurrency, **options)


def thread(
    fn: Callable[[Any], Any], *, workers: int | None = None, **options: Unpack[StageOptions]
) -> Stage:
    """A stage running a blocking function on ``workers`` threads
    (default ``min(32, cores + 4)``)."""
    return make_stage(fn, "thread", workers=workers, **options)


def cpu(
    fn: Callable[[Any], Any],
    *,
    workers: int | None = None,
    concurrency: int | None = None,
    **options: Unpack[StageOptions],
) -> Stage:
    """A stage running a function on ``workers`` processes (default: the cores).

    Items are sent in batches whose size adapts to the measured cost per item, unless
    ``batch_size`` fixes it. An ``async def`` function runs on an event loop in each
    process with up to ``concurrency`` calls in flight per process (default 100):
    I/O on every core.
    """
    return make_stage(fn, "cpu", workers=workers, concurrency=concurrency, **options)


def map(  # the name mirrors the builtin on purpose
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    kind: str = "cpu",
    workers: int | None = None,
    concurrency: int | None = None,
    ordered: bool = True,
    on_error: OnError = "raise",
    with_inputs: bool = False,
    journal: str | os.PathLike[str] | None = None,
    key: Callable[[Any], Any] | str | None = None,
    output: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    force: bool = False,
    **options: Unpack[StageOptions],
) -> Results:
    """Apply ``fn`` to every item, lazily, on processes, threads or an event loop.

    Returns a lazy iterator of results, in input order unless ``ordered=False``.
    ``items`` is read as results are consumed, never all at once. With
    ``on_error="raise"`` the first failure stops the run and is raised (its original
    type, with the worker's traceback as ``__cause__``); with ``"yield"`` a
    :class:`~spindle.Failure` takes the failed item's place. ``options`` are the
    stage options listed in this module's documentation (timeout, retries, init...).

    ``journal=PATH`` makes the run resumable: the same call made again skips what was
    done and runs the rest (``key``, ``output``, ``retry_failed`` and ``force`` are
    described at :meth:`Pipeline.run`).
    """
    stage = make_stage(fn, kind, workers=workers, concurrency=concurrency, **options)
    pipeline = Pipeline([stage], ordered=ordered, on_error=on_error)
    return pipeline.run(
        items,
        with_inputs=with_inputs,
        journal=journal,
        key=key,
        output=output,
        retry_failed=retry_failed,
        force=force,
    )


__all__ = ["cpu", "io", "map", "thread"]
