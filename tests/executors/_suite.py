"""One behaviour suite run over every kind of executor.

A stage's function may run on the pipeline's event loop (io), on threads, or in
worker processes started by fork or spawn, sync or with an event loop each. Users
expect the same behaviour from all of them (order, failures, timeouts, retries,
stopping), except where a kind truly differs; so the tests are written once and run
on every kind, the way CPython's ``test_concurrent_futures`` does it::

    behaviour class  (tests written against ExecutorMixin: self.run, self.stage...)
          +
    kind mixin       (FakeMixin, IoMixin, ThreadMixin, CpuForkMixin, CpuSpawnMixin,
                      CpuAsyncMixin)
          │
          └── create_executor_tests(globals(), Behaviour) ──▶ TestIo<Behaviour>,
                                                              TestCpuSpawn<Behaviour>, ...

A mixin says how to make a stage of its kind and, as data, how the kind differs
(``stuck_job``: what a timeout does to a running job; ``processes``; ...). Tests read
those attributes where a kind differs, so each difference is written in the test
that shows it. Another kind is one more mixin added to :data:`KINDS`; a kind that
``spindle.map`` cannot name (a stage put on a fake executor) overrides
:meth:`ExecutorMixin.stage` and :meth:`ExecutorMixin.map`.

Jobs are :class:`Job` pairs: the plain function for thread and sync cpu workers and
its ``async def`` twin for the event loop and async cpu workers. They live in
``tests/workfns.py`` so that spawned workers can import them.

A test that shows a bug of spindle on some kinds only is marked with
:func:`known_bug`; :func:`create_executor_tests` turns that into a strict xfail on
those kinds. A bug on every kind is a plain strict xfail on the behaviour's test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import pytest
import workfns as jobs

import spindle
from spindle._core.stage import with_executor
from spindle.executors.fake import FakeExecutor

# -- jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One job written twice: a plain function and its ``async def`` twin."""

    plain: Callable[..., Any]
    coroutine: Callable[..., Any]


SQUARE = Job(jobs.square, jobs.async_square)
UNEVEN_SQUARE = Job(jobs.uneven_square, jobs.async_uneven_square)
REPEAT = Job(jobs.repeat, jobs.arepeat)  # a flat map: x % 4 copies of x
TENS = Job(jobs.tens, jobs.atens)  # a flat map: x * 10, then x * 10 + 1
TENS_BUT_3_FAILS = Job(jobs.tens_but_3_fails, jobs.atens_but_3_fails)
FAIL_ON_7S = Job(jobs.fail_on_multiples_of_7, jobs.async_fail_on_multiples_of_7)
HANG_ON_3 = Job(jobs.block_on_3, jobs.async_hang_on_3)
BLOCK_FROM_4 = Job(jobs.block_from_4, jobs.async_block_from_4)
FLAKY = Job(jobs.flaky, jobs.async_flaky)
PERMANENT = Job(jobs.permanent_failure, jobs.async_permanent_failure)
KILL_ON_5 = Job(jobs.kill_self_on_5, jobs.async_kill_self_on_5)
EXIT_ON_5 = Job(jobs.exit_on_5, jobs.async_exit_on_5)
RETURN_LOCK = Job(jobs.return_lock, jobs.async_return_lock)
RAISE_UNBUILDABLE = Job(jobs.raise_unbuildable, jobs.async_raise_unbuildable)
MODEL_SCALE = Job(jobs.model_scale, jobs.async_use_model)
INIT_WITH_TEARDOWN = Job(jobs.init_with_teardown, jobs.async_init_with_teardown)
MARKS_DIR = Job(jobs.marks_dir, jobs.async_marks_dir)


# -- kinds ----------------------------------------------------------------------------

#: What a stage's timeout does to a job still running: cancel its coroutine, abandon
#: its thread (a thread cannot be stopped: the job runs on, a new thread takes its
#: place), or kill its worker process (and start another).
StuckJob = Literal["cancelled", "abandoned", "killed"]

WORKERS = 2  # the machine's cores; more would only slow the tests down
CONCURRENCY = 4  # calls in flight on one event loop: small, so that bounds stay small


class ExecutorMixin:
    """How the behaviour tests make and run a stage of one kind.

    Subclasses set the class attributes; behaviour classes use the methods.
    """

    #: The kind's part of a generated class's name ("CpuSpawn": TestCpuSpawnResults).
    label: ClassVar[str]
    #: The ``spindle`` kind that runs it.
    kind: ClassVar[str]
    #: Stage options that make this kind (worker counts, start method).
    options: ClassVar[dict[str, Any]]
    #: Runs the ``async def`` version of each job.
    asynchronous: ClassVar[bool] = False
    #: Jobs run in worker processes: inputs and results are pickled, a job can crash
    #: its worker, and the worker is replaced.
    processes: ClassVar[bool] = False
    #: One worker runs many calls at once (an event loop in a process): when it
    #: crashes, every call in flight on it fails, not only the one that crashed it.
    calls_share_a_worker: ClassVar[bool] = False
    #: What a timeout does to a job still running.
    stuck_job: ClassVar[StuckJob]
    #: How many times ``init`` runs: once per thread or process, once for the loop.
    workers_with_state: ClassVar[int] = WORKERS

    def fn(self, job: Job) -> Callable[..., Any]:
        return job.coroutine if self.asynchronous else job.plain

    def stage(self, job: Job, **options: Any) -> spindle.Stage:
        """A stage of this kind running ``job``; ``options`` add to the kind's."""
        makers: dict[str, Callable[..., spindle.Stage]] = {
            "io": spindle.io,
            "thread": spindle.thread,
            "cpu": spindle.cpu,
        }
        return makers[self.kind](self.fn(job), **{**self.options, **options})

    def pipeline(
        self,
        job: Job,
        *,
        ordered: bool = True,
        on_error: Literal["raise", "yield"] = "raise",
        buffer: int | None = None,
        **options: Any,
    ) -> spindle.Pipeline:
        """A one-stage pipeline; ``buffer`` is its output buffer (default: spindle's)."""
        more = {} if buffer is None else {"buffer": buffer}
        return spindle.Pipeline(
            [self.stage(job, **options)], ordered=ordered, on_error=on_error, **more
        )

    def run(
        self,
        job: Job,
        items: Iterable[Any],
        *,
        ordered: bool = True,
        on_error: Literal["raise", "yield"] = "raise",
        with_inputs: bool = False,
        **options: Any,
    ) -> spindle.Results:
        """``Pipeline([stage]).run(items)``: the results, lazily."""
        pipeline = self.pipeline(job, ordered=ordered, on_error=on_error, **options)
        return pipeline.run(items, with_inputs=with_inputs)

    def map(self, job: Job, items: Iterable[Any], **options: Any) -> spindle.Results:
        """``spindle.map`` with this kind."""
        return spindle.map(self.fn(job), items, kind=self.kind, **{**self.options, **options})


class IoMixin(ExecutorMixin):
    label = "Io"
    kind = "io"
    options = {"concurrency": CONCURRENCY}
    asynchronous = True
    stuck_job = "cancelled"
    workers_with_state = 1  # the pipeline's event loop


class ThreadMixin(ExecutorMixin):
    label = "Thread"
    kind = "thread"
    options = {"workers": WORKERS}
    stuck_job = "abandoned"


class CpuForkMixin(ExecutorMixin):
    label = "CpuFork"
    kind = "cpu"
    options = {"workers": WORKERS, "start_method": "fork"}
    processes = True
    stuck_job = "killed"


class CpuSpawnMixin(ExecutorMixin):
    label = "CpuSpawn"
    kind = "cpu"
    options = {"workers": WORKERS, "start_method": "spawn"}
    processes = True
    stuck_job = "killed"


class CpuAsyncMixin(ExecutorMixin):
    """``async def`` jobs on worker processes, an event loop in each, started the
    default way (fork here: the test process has a single thread when a run starts)."""

    label = "CpuAsync"
    kind = "cpu"
    options = {"workers": WORKERS, "concurrency": CONCURRENCY}
    asynchronous = True
    processes = True
    calls_share_a_worker = True
    stuck_job = "cancelled"  # in the worker's loop, which goes on


class FakeMixin(ExecutorMixin):
    """``async def`` jobs on :class:`~spindle.executors.fake.FakeExecutor`, which calls
    them inline on the pipeline's loop: the engine (runners, channels, retries, order,
    stopping) with no worker at all. What holds for it must hold for every kind."""

    label = "Fake"
    kind = "io"
    options = {"concurrency": CONCURRENCY}
    asynchronous = True
    stuck_job = "cancelled"
    workers_with_state = 1  # the pipeline's event loop

    def stage(self, job: Job, **options: Any) -> spindle.Stage:
        return with_executor(super().stage(job, **options), FakeExecutor)

    def map(self, job: Job, items: Iterable[Any], **options: Any) -> spindle.Results:
        ordered = options.pop("ordered", True)
        on_error = options.pop("on_error", "raise")
        with_inputs = options.pop("with_inputs", False)
        pipeline = spindle.Pipeline(
            [self.stage(job, **options)], ordered=ordered, on_error=on_error
        )
        return pipeline.run(items, with_inputs=with_inputs)


KINDS: tuple[type[ExecutorMixin], ...] = (
    FakeMixin,
    IoMixin,
    ThreadMixin,
    CpuForkMixin,
    CpuSpawnMixin,
    CpuAsyncMixin,
)
PROCESS_KINDS = tuple(k for k in KINDS if k.processes)


# -- making the test classes -----------------------------------------------------------

_Test = TypeVar("_Test", bound=Callable[..., Any])


def known_bug(*labels: str, reason: str) -> Callable[[_Test], _Test]:
    """Mark a behaviour test as failing, because of a bug of spindle, on the kinds
    whose mixin has one of ``labels``: it becomes a strict xfail there, so the test
    says when the bug is fixed."""

    def mark(test: _Test) -> _Test:
        bugs: dict[str, str] = dict(getattr(test, "known_bugs", {}))
        bugs.update(dict.fromkeys(labels, reason))
        test.known_bugs = bugs  # type: ignore[attr-defined]
        return test

    return mark


def _strip(name: str) -> str:
    return name.removesuffix("Behaviour")


def create_executor_tests(
    namespace: dict[str, Any],
    behaviour: type[ExecutorMixin],
    kinds: Sequence[type[ExecutorMixin]] = KINDS,
) -> None:
    """Put into ``namespace`` (a test module's ``globals()``) one test class per kind:
    ``Test<kind label><behaviour name without "Behaviour">``."""
    module = namespace["__name__"]
    for kind in kinds:
        name = f"Test{kind.label}{_strip(behaviour.__name__)}"
        attrs: dict[str, Any] = {"__module__": module, "__qualname__": name}
        for attr in dir(behaviour):
            test = getattr(behaviour, attr)
            reason = getattr(test, "known_bugs", {}).get(kind.label)
            if attr.startswith("test_") and reason is not None:
                attrs[attr] = pytest.mark.xfail(strict=True, reason=reason)(_own_copy(test))
        namespace[name] = type(name, (behaviour, kind), attrs)


def _own_copy(test: Callable[..., Any]) -> Callable[..., Any]:
    """A test of its own for one class, so that a mark put on it stays there."""

    @functools.wraps(test)
    def copy(*args: Any, **kwargs: Any) -> Any:
        return test(*args, **kwargs)

    return copy
