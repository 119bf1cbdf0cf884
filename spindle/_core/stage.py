"""Stage specifications: what runs, where, and how many at once.

A :class:`Stage` is a plain description; it holds no thread, process or buffer. Each
run of a pipeline turns it into an executor and a runner, so a pipeline can be run
many times.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import ConfigError
from ..executors._batch import is_async_fn, is_generator_fn
from ..executors.base import Executor

Kind = Literal["io", "thread", "cpu"]
KINDS: tuple[str, ...] = ("io", "thread", "cpu")

#: Default number of concurrent calls of an io stage (and per process of an async cpu stage).
DEFAULT_CONCURRENCY = 100
#: Largest batch sent to a worker process; with the default prefetch this bounds the
#: items a cpu stage holds in flight to ``workers * 2 * MAX_CPU_BATCH``.
MAX_CPU_BATCH = 4096


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
        return 256 if self.kind == "thread" else MAX_CPU_BATCH

    @property
    def input_buffer(self) -> int:
        """Capacity of the channel feeding this stage (enough to fill its batches)."""
        if self.buffer is not None:
            return self.buffer
        return max(64, min(self.capacity * self.max_batch, 2 * self.max_batch, 65536))

    def make_executor(self) -> Executor:
        from ..executors.loop import LoopExecutor
        from ..executors.processes import ProcessExecutor
        from ..executors.threads import ThreadExecutor

        if self.kind == "io":
            return LoopExecutor(
                self.fn, concurrency=self.concurrency, flat=self.flat, stage=self.name
            )
        if self.kind == "thread":
            return ThreadExecutor(
                self.fn,
                workers=self.workers,
                flat=self.flat,
                stage=self.name,
                batch_size=self.batch_size,
            )
        return ProcessExecutor(
            self.fn,
            workers=self.workers,
            flat=self.flat,
            is_async=self.is_async,
            stage=self.name,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            start_method=self.start_method,
        )


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
) -> Stage:
    """Validate arguments and fill in defaults; errors say what to use instead."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not callable(fn):
        raise ConfigError(f"the function of a stage must be callable, got {type(fn).__name__}")
    for label, value in (("workers", workers), ("concurrency", concurrency)):
        _positive(label, value)
    _positive("batch_size", batch_size)
    _positive("buffer", buffer)
    if start_method not in ("auto", "fork", "spawn"):
        raise ConfigError(f"start_method must be 'auto', 'fork' or 'spawn', not {start_method!r}")
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
    if kind == "io":
        w, c = 1, concurrency or DEFAULT_CONCURRENCY
    elif kind == "thread":
        w, c = workers or concurrency or min(32, cpu_count() + 4), 1
    else:
        w = workers or cpu_count()
        c = concurrency or (DEFAULT_CONCURRENCY if asynchronous else 1)
    return Stage(fn, kind, label, w, c, batch_size, buffer, start_method)  # type: ignore[arg-type]
