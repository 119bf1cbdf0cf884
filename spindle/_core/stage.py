"""Stage specifications: what runs, where, and how many at once.

A :class:`Stage` is a plain description; it holds no thread, process or buffer. Each
run of a pipeline turns it into an executor and a runner, so a pipeline can be run
many times.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from .._errors import ConfigError
from ..executors._batch import is_async_fn, is_generator_fn
from ..executors.base import Executor, ExecutorFactory
from ..executors.spec import WorkSpec
from ..policies.dispatch import LEAST_LOADED, Dispatch, DispatchSpec
from ..policies.retry import RetryPolicy

if TYPE_CHECKING:  # spindle.cache (and LMDB) load only for a stage that has a cache
    from ..cache import Cache

Kind = Literal["io", "thread", "cpu"]
KINDS: tuple[str, ...] = ("io", "thread", "cpu")

#: Default number of concurrent calls of an io stage (and per process of an async cpu stage).
DEFAULT_CONCURRENCY = 100
#: Largest batch sent to a worker process; with the default prefetch this bounds the
#: items a cpu stage holds in flight to ``workers * 2 * MAX_CPU_BATCH``.
MAX_CPU_BATCH = 4096
#: The same for a stage on Ray actors: a call to an actor costs the driver about ten
#: times a frame to a local worker. On a local Ray, tiny items ran 1.00-1.07M items/s
#: after the actors' start in fixed batches of 16,384, against 0.85-0.90M in batches of
#: 4,096 (adaptive batches up to 16,384: 0.92-1.04M).
MAX_RAY_BATCH = 16384


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _name_of(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


class StageOptions(TypedDict, total=False):
    """Options every kind of stage accepts (see :func:`spindle.cpu` for their meaning)."""

    name: str | None
    batch_size: int | None
    buffer: int | None
    timeout: float | None
    retries: int
    backoff: float | tuple[float, float]
    retry_on: Any
    permanent: Any
    init: Callable[[], Any] | None
    max_jobs_per_worker: int | None
    max_memory_per_worker: int | str | None
    start_method: str
    route: Callable[[Any], Any] | None
    dispatch: DispatchSpec
    reporter: Callable[[Any], dict[str, Any]] | None
    merge_reports: Callable[[list[dict[str, Any]]], dict[str, Any]] | None
    sections: tuple[str, ...]
    backend: str
    ray_address: str | None
    cache: Any


@dataclass(slots=True)
class StageStats:
    """Counters of one stage, as plain data."""

    name: str
    kind: str
    done: int = 0
    failed: int = 0
    retried: int = 0
    in_flight: int = 0
    queued: int = 0
    workers: int = 0
    restarts: int = 0

    def __repr__(self) -> str:
        def n(v: int) -> str:
            return f"{v:,}"

        return (
            f"{self.name} ({self.kind}): {n(self.in_flight)} running, {n(self.queued)} queued, "
            f"{n(self.done)} done, {n(self.failed)} failed"
            + (f", {n(self.retried)} retried" if self.retried else "")
            + (f", {n(self.restarts)} restarts" if self.restarts else "")
        )


class _StatsSource(Protocol):
    def stats(self) -> StageStats: ...


class _LastRun:
    """Where a stage finds its current or most recent run's counters.

    A run's stage runner attaches itself when the run is made and, when the run is
    over, leaves its final :class:`StageStats` in its place: a stage object lives on
    after its runs, and must not keep a run's buffers and workers' records alive.
    With several runs of one stage at once, the one made last counts.
    """

    __slots__ = ("_final", "_runner")

    def __init__(self) -> None:
        self._runner: _StatsSource | None = None
        self._final: StageStats | None = None

    def attach(self, runner: _StatsSource) -> None:
        self._runner, self._final = runner, None

    def detach(self, runner: _StatsSource) -> None:
        if self._runner is runner:
            self._final, self._runner = runner.stats(), None

    def stats(self, stage: Stage) -> StageStats:
        runner, final = self._runner, self._final
        if runner is not None:
            return runner.stats()
        if final is not None:
            return dataclasses.replace(final)
        return StageStats(name=stage.name, kind=stage.kind)


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. Make one with :func:`spindle.io`, :func:`spindle.thread`
    or :func:`spindle.cpu`."""

    fn: Callable[[Any], Any]
    kind: Kind
    name: str
    workers: int
    concurrency: int
    batch_size: int | None = None
    buffer: int | None = None
    start_method: str = "auto"
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    init: Callable[[], Any] | None = None
    max_jobs_per_worker: int | None = None
    max_memory_per_worker: int | None = None
    route: Callable[[Any], Any] | None = None
    reporter: Callable[[Any], dict[str, Any]] | None = None
    merge_reports: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    #: Keys of the merged report whose rows also go into the run's snapshot, under the
    #: same key, gathered over the stages (see :mod:`spindle._core.snapshot`).
    sections: tuple[str, ...] = ()
    #: Where the stage runs: ``"local"``, or ``"ray"`` (actors of a Ray cluster, at
    #: ``ray_address``; ``workers`` 0 there means one per CPU of the cluster).
    backend: str = "local"
    ray_address: str | None = None
    #: The cache every worker of the stage reaches with ``spindle.cache()``.
    cache: Cache | None = None
    #: Which worker process gets each batch (cpu stages; see ``policies.dispatch``).
    dispatch: Dispatch = LEAST_LOADED
    #: The stage's current or most recent run (see :meth:`stats`).
    _last_run: _LastRun = field(
        default_factory=_LastRun, init=False, repr=False, compare=False, hash=False
    )
    #: Makes this stage's executor in place of the one its kind names; set only by
    #: :func:`with_executor`, for tests that run the engine without workers.
    _executor: ExecutorFactory | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def stats(self) -> StageStats:
        """Counters of this stage in its current run, or in its most recent one once
        that is over (every way of running a stage counts: ``Pipeline.run``,
        ``arun``, and ``spindle.map`` for the stage it makes). Before the stage has
        ever run: every counter zero.

        >>> import spindle
        >>> stage = spindle.thread(str.upper, workers=2)
        >>> stage.stats()
        upper (thread): 0 running, 0 queued, 0 done, 0 failed
        >>> list(spindle.Pipeline([stage]).run(["a", "b"]))
        ['A', 'B']
        >>> stage.stats().done
        2
        """
        return self._last_run.stats(self)

    @property
    def flat(self) -> bool:
        """A generator (or async generator) function: each input gives 0..n outputs."""
        import inspect

        return is_generator_fn(self.fn) or inspect.isasyncgenfunction(self.fn)

    @property
    def is_async(self) -> bool:
        return is_async_fn(self.fn)

    @property
    def capacity(self) -> int:
        """How many batches the stage may have in flight at once."""
        if self.backend == "ray":
            from ..executors.ray import estimated_workers

            workers = self.workers or estimated_workers()  # 0: one actor per CPU
            return workers * (self.concurrency if self.is_async else 2)
        if self.kind == "io":
            return self.concurrency
        if self.kind == "thread":
            return self.workers
        return self.workers * (self.concurrency if self.is_async else 2)

    @property
    def max_batch(self) -> int:
        """The largest number of items one batch may hold."""
        if self.batch_size is not None:
            return self.batch_size
        if self.kind == "io" or (self.kind == "cpu" and self.is_async):
            return 1
        if self.kind == "thread" and self.timeout is not None:
            return 1  # a thread job that times out is abandoned alone, not with a batch
        if self.kind == "thread":
            return 256
        return MAX_RAY_BATCH if self.backend == "ray" else MAX_CPU_BATCH

    @property
    def input_buffer(self) -> int:
        """Capacity of the channel feeding this stage (enough to fill its batches)."""
        if self.buffer is not None:
            return self.buffer
        return max(64, min(self.capacity * self.max_batch, 2 * self.max_batch, 65536))

    def work_spec(self) -> WorkSpec:
        """What an executor needs of this stage, worked out once (each run makes one)."""
        return WorkSpec(
            fn=self.fn,
            name=self.name,
            kind=self.kind,
            workers=self.workers,
            concurrency=self.concurrency,
            capacity=self.capacity,
            max_batch=self.max_batch,
            flat=self.flat,
            is_async=self.is_async,
            batch_size=self.batch_size,
            start_method=self.start_method,
            timeout=self.timeout,
            init=self.init,
            max_jobs_per_worker=self.max_jobs_per_worker,
            max_memory_per_worker=self.max_memory_per_worker,
            route=self.route,
            dispatch=self.dispatch,
            reporter=self.reporter,
            merge_reports=self.merge_reports,
            backend=self.backend,
            ray_address=self.ray_address,
            setup=self._setup(),
        )

    def _setup(self) -> Callable[[], Any] | None:
        """What each worker runs first: installing the stage's cache, so that
        ``spindle.cache()`` gives it there (a reference to ``spindle.cache.install``:
        a spawned worker loads that package, not the engine)."""
        if self.cache is None:
            return None
        from ..cache import install

        return functools.partial(install, self.cache)

    def make_executor(self) -> Executor:
        """A new executor for one run of this stage, of the stage's kind."""
        spec = self.work_spec()
        if self._executor is not None:
            return self._executor(spec)
        # Imported on first use, not with this module: describing stages loads no
        # worker machinery (threads, sockets, cloudpickle).
        from ..executors.loop import LoopExecutor
        from ..executors.processes import ProcessExecutor
        from ..executors.threads import ThreadExecutor

        if self.backend == "ray":
            from ..executors.ray import RayExecutor

            return RayExecutor(spec)
        if self.kind == "io":
            return LoopExecutor(spec)
        if self.kind == "thread":
            return ThreadExecutor(spec)
        return ProcessExecutor(spec)


def with_executor(stage: Stage, factory: ExecutorFactory) -> Stage:
    """A copy of ``stage`` whose runs get their executor from ``factory(spec)``.

    This is how a test runs the pipeline and its stage runners on an executor of its
    own (:class:`~spindle.executors.fake.FakeExecutor`: the function called inline,
    no thread or process) while the stage keeps its kind, its batch sizes and its
    buffers. It is not part of the public API: users choose where a function runs
    with the stage's kind. The copy counts its own runs (see :meth:`Stage.stats`).
    """
    copy = dataclasses.replace(stage)
    object.__setattr__(copy, "_executor", factory)  # a frozen dataclass
    return copy


_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
}


def parse_bytes(value: int | str | None) -> int | None:
    """``"512MB"``, ``"2 GiB"`` or a number of bytes; None stays None."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"a memory size must be positive, got {value}")
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        size = int(float(number) * _MEMORY_UNITS[unit])
    except (KeyError, ValueError):
        raise ConfigError(
            f"cannot read memory size {value!r}: use bytes or a number with KB, MB or GB"
        ) from None
    if size < 1:
        raise ConfigError(f"a memory size must be positive, got {value!r}")
    return size


def make_stage(
    fn: Callable[[Any], Any],
    kind: str,
    *,
    workers: int | None = None,
    concurrency: int | None = None,
    name: str | None = None,
    batch_size: int | None = None,
    buffer: int | None = None,
    start_method: str = "auto",
    timeout: float | None = None,
    retries: int = 0,
    backoff: float | tuple[float, float] = (0.1, 30.0),
    retry_on: Any = None,
    permanent: Any = None,
    init: Callable[[], Any] | None = None,
    max_jobs_per_worker: int | None = None,
    max_memory_per_worker: int | str | None = None,
    route: Callable[[Any], Any] | None = None,
    dispatch: DispatchSpec | None = None,
    reporter: Callable[[Any], dict[str, Any]] | None = None,
    merge_reports: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    sections: tuple[str, ...] = (),
    backend: str = "local",
    ray_address: str | None = None,
    cache: Cache | int | str | None = None,
) -> Stage:
    """Validate arguments and fill in defaults; errors say what to use instead."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not callable(fn):
        raise ConfigError(f"the function of a stage must be callable, got {type(fn).__name__}")
    for label, value in (
        ("workers", workers),
        ("concurrency", concurrency),
        ("batch_size", batch_size),
        ("buffer", buffer),
        ("max_jobs_per_worker", max_jobs_per_worker),
    ):
        _positive(label, value)
    if start_method not in ("auto", "fork", "spawn"):
        raise ConfigError(f"start_method must be 'auto', 'fork' or 'spawn', not {start_method!r}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if init is not None and not callable(init):
        raise ConfigError(f"init must be a function, got {type(init).__name__}")
    if reporter is not None and not callable(reporter):
        raise ConfigError(f"reporter must be a function, got {type(reporter).__name__}")
    if sections and reporter is None:
        raise ConfigError("sections name keys of the reporter's figures: add reporter= as well")
    if merge_reports is not None and (reporter is None or not callable(merge_reports)):
        raise ConfigError(
            "merge_reports takes a function of a list of reports and needs reporter= as well"
        )
    retry = RetryPolicy.make(retries, backoff, retry_on, permanent)
    memory = parse_bytes(max_memory_per_worker)
    asynchronous = is_async_fn(fn)
    label = name or _name_of(fn)
    if kind == "io" and not asynchronous:
        raise ConfigError(
            f"kind='io' runs 'async def' functions on an event loop, but {label!r} is a "
            "plain function: use kind='thread' for a blocking function, or kind='cpu' "
            "for CPU work"
        )
    if kind == "thread" and asynchronous:
        raise ConfigError(
            f"kind='thread' runs blocking functions, but {label!r} is 'async def': use "
            "kind='io' (one event loop) or kind='cpu' (an event loop in each process)"
        )
    if kind != "cpu" and (max_jobs_per_worker or memory):
        raise ConfigError(
            "max_jobs_per_worker and max_memory_per_worker replace worker processes: "
            "they apply to kind='cpu' only"
        )
    if route is not None and (kind != "cpu" or not callable(route)):
        raise ConfigError("route= takes a function of the item and applies to kind='cpu' only")
    policy = Dispatch.parse(dispatch)
    if dispatch is not None and kind != "cpu":
        raise ConfigError(
            f"dispatch={str(policy)!r} chooses among worker processes and applies to "
            "kind='cpu' only"
        )
    if route is not None and policy != LEAST_LOADED:
        raise ConfigError(
            f"route= and dispatch={str(policy)!r} are two ways to choose a worker: give "
            "one (route= is key affinity, as dispatch='key:FIELD' is for a field of dict "
            "items)"
        )
    if policy.policy == "weighted":
        if workers is None:
            workers = len(policy.weights)  # one weight per worker
        policy.check_workers(workers)
    if (route is not None or policy.policy == "key") and not asynchronous and batch_size is None:
        batch_size = 1  # routing is per item: a batch would mix keys
    _check_backend(kind, label, backend, ray_address)
    if backend == "ray":  # actors, each with its own loop for async functions
        w = workers or 0  # 0: one per CPU of the cluster, counted when the run starts
        c = concurrency or (DEFAULT_CONCURRENCY if asynchronous else 1)
    elif kind == "io":
        w, c = 1, concurrency or DEFAULT_CONCURRENCY
    elif kind == "thread":
        w, c = workers or concurrency or min(32, cpu_count() + 4), 1
    else:
        w = workers or cpu_count()
        c = concurrency or (DEFAULT_CONCURRENCY if asynchronous else 1)
    return Stage(
        fn,
        kind,  # type: ignore[arg-type]
        label,
        w,
        c,
        batch_size,
        buffer,
        start_method,
        float(timeout) if timeout is not None else None,
        retry,
        init,
        max_jobs_per_worker,
        memory,
        route,
        reporter,
        merge_reports,
        tuple(sections),
        backend,
        ray_address,
        _cache_of(cache),
        dispatch=policy,
    )


def _cache_of(cache: Cache | int | str | None) -> Cache | None:
    """A stage's ``cache=``: a :class:`~spindle.Cache`, or a size (``"256MB"``, bytes)
    for a new one, in shared memory, removed once the stage is let go of."""
    if cache is None:
        return None
    from ..cache import Cache

    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, bool) or not isinstance(cache, (int, str)):
        raise ConfigError(f"cache= takes a spindle.Cache or a size such as '256MB', not {cache!r}")
    return Cache(cache)


BACKENDS: tuple[str, ...] = ("local", "ray")


def on_backend(stage: Stage, backend: str, ray_address: str | None = None) -> Stage:
    """``stage`` moved to ``backend`` (its worker count kept): for commands that make
    their stages themselves (``spindle fetch``) and take ``--backend``."""
    _check_backend(stage.kind, stage.name, backend, ray_address)
    if (stage.backend, stage.ray_address) == (backend, ray_address):
        return stage
    return dataclasses.replace(stage, backend=backend, ray_address=ray_address)


def _check_backend(kind: str, label: str, backend: str, ray_address: str | None) -> None:
    """``backend`` and ``ray_address`` make sense together, for this kind, with Ray
    installed (looked for, not imported: Ray loads only when a run starts)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be 'local' or 'ray', not {backend!r}")
    if backend == "local":
        if ray_address is not None:
            raise ConfigError("ray_address names the Ray cluster of backend='ray': add it")
        return
    if kind == "thread":
        raise ConfigError(
            f"backend='ray' runs stages on Ray actors, but {label!r} is a thread stage, which "
            "runs in this process: use kind='cpu' for a blocking function on Ray"
        )
    from ..executors.ray import INSTALL_HINT, ray_installed

    if not ray_installed():
        raise ConfigError(
            f"backend='ray' runs stages on a Ray cluster, but Ray is not installed: {INSTALL_HINT}"
        )
