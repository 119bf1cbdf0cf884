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
- ``dispatch``: which worker process gets each batch (cpu). ``"least-loaded"`` (the
  default): the one with the fewest batches pending, so a slow worker gets fewer;
  ``"round-robin"``: the workers in turn, an equal share each; ``"weighted:3,1"`` (or
  ``[3, 1]``): shares in proportion to the weights, one per worker (smooth weighted
  round-robin; without ``workers``, one worker per weight); ``"key:FIELD"``: items
  that are dicts with the same ``FIELD`` go to the same worker, as with ``route``.
  A worker that is starting or being replaced is skipped, its turns going to the
  others. ``route`` is a dispatch policy too: give one of ``route`` and ``dispatch``.
- ``reporter``: a function called in each worker with its state (what ``init``
  returned, or None) that returns a small dict of plain data, e.g. cache hits. Each
  worker reports at most once a second and once more when it stops; the stage's
  entry in a snapshot holds the workers' latest reports merged, as ``report``.
- ``merge_reports``: merges a list of reports into one (default: numbers added up
  key by key, nested dicts too; for other values the last report's). It gets ended
  workers' reports first, then live workers', and must accept its own output.
- ``sections``: keys of the merged report holding lists of rows that belong to the
  whole run (a fetch stage's ``hosts``): the run's snapshot gathers each such key's
  rows over every stage under the same key.
- ``cache``: a :class:`spindle.Cache`, or a size (``"256MB"``) for a new one in shared
  memory: every worker of the stage, in every process, reaches the same cache with
  ``spindle.cache()``, and ``@spindle.memoize`` functions called in a job use it, so
  a key is computed once for the run rather than once per process.
- ``backend``: ``"local"`` (the default) or ``"ray"``: the stage's batches run on
  long-lived Ray actors (cpu and io stages; one actor per CPU of the cluster unless
  ``workers`` says), with the same results, failures, retries and timeouts. Needs
  ``pip install 'spindle[ray]'``.
- ``ray_address``: the Ray cluster to join (``"auto"``, ``"HOST:PORT"``,
  ``"ray://HOST:10001"``); by default the Ray this program is connected to, else a
  local Ray started for the run and shut down at its end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Unpack

from ._core import pipeline as _engine
from ._core.pipeline import OnError, Results, Service
from ._core.stage import Stage, StageOptions, make_stage


class Pipeline(_engine.Pipeline):
    """A sequence of stages run as one bounded pipeline.

    >>> import spindle
    >>> p = spindle.Pipeline([spindle.thread(str.upper), spindle.thread(len)])
    >>> list(p.run(["a", "bb"]))
    [1, 2]
    """

    def run(
        self,
        items: Iterable[Any],
        *,
        with_inputs: bool = False,
        total: int | None = None,
        services: Sequence[Service] = (),
        journal: str | os.PathLike[str] | None = None,
        key: Callable[[Any], Any] | str | None = None,
        output: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        force: bool = False,
    ) -> Results:
        """Run over ``items``; a lazy iterator of results (``(input, result)`` pairs
        with ``with_inputs``). Nothing starts until the first result is asked for.

        ``total`` (the input size, when known) feeds progress bars; ``services`` are
        callables that take the run's ``snapshot`` function and return an async
        context manager, entered on the run's event loop for the whole run (a live
        display, a metrics endpoint, a dashboard: see :mod:`spindle.observe`).

        ``journal`` (a file path) makes the run resumable: the same call made again
        skips the items done before and runs the rest. Each item's key is a digest of
        its value, or ``key(item)``, or the field ``key`` of dict items; an item whose
        key came earlier in ``items`` runs once. A result counts as done once the
        caller has asked for the next one, so a result the caller did not get to handle
        comes again in the next run (at least once). ``output`` keeps the results in a
        file (``.jsonl``, ``.csv``, ``.sqlite``, ``.parquet``) that matches the journal
        after any crash, one record per input. ``retry_failed`` runs the items that
        failed before again; ``force`` forgets the journal's items and starts over.
        ``docs/journal.md`` says more.
        """
        if journal is None and key is None and output is None and not (retry_failed or force):
            return super().run(items, with_inputs=with_inputs, total=total, services=services)
        # The journal loads SQLite and numpy: imported only when a run asks for it.
        from .journal._resumable import JournaledResults, check_journal_arguments

        check_journal_arguments(
            journal, key=key, output=output, retry_failed=retry_failed, force=force
        )
        assert journal is not None
        journaled = JournaledResults(
            self,
            items,
            journal=journal,
            key=key,
            output=output,
            retry_failed=retry_failed,
            force=force,
            with_inputs=with_inputs,
            total=total,
            services=services,
        )
        self._last = journaled._ex
        return journaled


def io(
    fn: Callable[[Any], Any],
    *,
    concurrency: int | None = None,
    workers: int | None = None,
    **options: Unpack[StageOptions],
) -> Stage:
    """A stage running an ``async def`` function on the pipeline's event loop, up to
    ``concurrency`` calls at once (default 100). With ``backend="ray"`` it runs on
    ``workers`` async Ray actors (default: one per CPU of the cluster), each with up to
    ``concurrency`` calls in flight."""
    return make_stage(fn, "io", concurrency=concurrency, workers=workers, **options)


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
    """A stage running a function on ``workers`` processes (default: the cores, or
    one per weight of ``dispatch="weighted:..."``).

    Items are sent in batches whose size adapts to the measured cost per item, unless
    ``batch_size`` fixes it; each batch goes to the worker with the fewest batches
    pending, unless ``dispatch`` names another policy (``"round-robin"``,
    ``"weighted:3,1"``, ``"key:FIELD"``). An ``async def`` function runs on an event
    loop in each process with up to ``concurrency`` calls in flight per process
    (default 100): I/O on every core.
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


__all__ = ["Pipeline", "cpu", "io", "map", "thread"]
