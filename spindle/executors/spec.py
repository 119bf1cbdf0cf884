"""What an executor knows of the stage it runs: a small frozen record.

Executors sit below the pipeline: they do not know what a ``Stage`` is, only this
record, which ``Stage.make_executor()`` builds once per run and hands to the executor
it makes. Everything an executor reads about its work is here, already worked out
(whether the function is async or a generator, how many batches may be in flight,
the largest batch), so that no executor inspects the function again or repeats the
stage's rules, and so that a test can make an executor from a few plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..policies.batching import AdaptiveBatch
from ..policies.dispatch import LEAST_LOADED, Dispatch
from ._reports import MergeFn, ReporterFn

if TYPE_CHECKING:
    from ._worker import WorkerConfig


@dataclass(frozen=True, slots=True)
class WorkSpec:
    """How to run one stage's function: what runs, where, and how many at once."""

    #: The stage's function, called with one item.
    fn: Callable[[Any], Any]
    #: The stage's name, used in failures, messages and worker names.
    name: str
    #: ``"io"``, ``"thread"`` or ``"cpu"``: which kind of stage this runs.
    kind: str
    #: Worker threads or processes (1 for the event loop).
    workers: int
    #: Concurrent calls of an async function, on the loop or in each process.
    concurrency: int
    #: Batches the stage may have in flight at once.
    capacity: int
    #: The largest number of items one batch may hold.
    max_batch: int
    #: ``fn`` is a generator (or async generator) function: 0..n outputs per item.
    flat: bool = False
    #: ``fn`` is ``async def``.
    is_async: bool = False
    #: A fixed batch size, or None to size batches from the measured cost per item.
    batch_size: int | None = None
    #: ``"auto"``, ``"fork"`` or ``"spawn"``: how worker processes start.
    start_method: str = "auto"
    #: Seconds one call may run before it fails with ``Timeout``.
    timeout: float | None = None
    #: Called once in each worker; what it returns is the worker's state.
    init: Callable[[], Any] | None = None
    #: Called once in each worker process, or once in the parent for thread and io
    #: stages, before ``init``: installs what every job of the run reaches (the run's
    #: cache, for ``spindle.cache()``).
    setup: Callable[[], Any] | None = None
    #: Items after which a worker process is replaced.
    max_jobs_per_worker: int | None = None
    #: Bytes of a worker process's own memory after which it is replaced.
    max_memory_per_worker: int | None = None
    #: The key of an item, to send items of one key to the same worker process.
    route: Callable[[Any], Any] | None = None
    #: Which worker process (or Ray actor) gets each batch (see ``policies.dispatch``).
    dispatch: Dispatch = LEAST_LOADED
    #: Makes a worker's report from its state (see ``_reports``).
    reporter: ReporterFn | None = None
    #: Merges the reports of every worker into one.
    merge_reports: MergeFn | None = None
    #: ``"local"`` (this machine) or ``"ray"`` (actors of a Ray cluster; ``workers`` 0:
    #: one per CPU of the cluster).
    backend: str = "local"
    #: The Ray cluster to join (``"auto"``, ``"HOST:PORT"``, ``"ray://..."``); None: the
    #: Ray this process is connected to, or a local one started for the run.
    ray_address: str | None = None

    # -- what the process and Ray executors derive alike -----------------------------

    def batching(self, target: float = 0.02) -> AdaptiveBatch:
        """The adaptive batches of a stage on worker processes or actors, aimed at
        ``target`` seconds of work: single items for an async function (each is one
        call among ``concurrency``), never more than ``max_jobs_per_worker``."""
        batch_size = self.batch_size
        if self.is_async and batch_size is None:
            batch_size = 1
        max_size = self.max_batch
        if self.max_jobs_per_worker is not None:
            max_size = min(max_size, self.max_jobs_per_worker)
            batch_size = min(batch_size, max_size) if batch_size is not None else None
        return AdaptiveBatch(target=target, max_size=max_size, fixed=batch_size)

    def worker_config(self) -> WorkerConfig:
        """What each worker process or actor gets of the stage."""
        from ._worker import WorkerConfig

        return WorkerConfig(
            fn=self.fn,
            flat=self.flat,
            is_async=self.is_async,
            concurrency=max(1, self.concurrency),
            stage=self.name,
            timeout=self.timeout,
            init=self.init,
            setup=self.setup,
            memory_limit=self.max_memory_per_worker,
            reporter=self.reporter,
        )
