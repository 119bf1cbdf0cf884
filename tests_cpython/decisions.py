"""Every CPython test that does not run unchanged against ``spindle.Executor``, and why.

A decision names a test by the CPython class that defines it (``Class.method``, as
:func:`owner_of` gives it), optionally for some flavours only (``thread``, ``fork``,
``spawn``), and is one of:

- a **skip**, whose reason starts with ``design:`` (spindle differs on purpose, or the
  test inspects the standard executors' internals or runs them by name) or ``bug:``
  (a gap in spindle that should be fixed; the reason says what fails);
- an **adaptation**: CPython's test body runs unchanged, with some names it looks up
  at run time pointing at spindle's counterparts (the exception spindle documents in
  place of ``BrokenProcessPool``, for instance), or with the child-interpreter scripts
  it runs importing spindle's executor rather than ``concurrent.futures``'.

``docs/cpython-tests.md`` explains each decision at more length. Nothing here is
CPython code: only names, and the wrappers that apply the decisions.
"""

from __future__ import annotations

import functools
import os
import re
import unittest
import unittest.mock
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures import process as futures_process
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from test.test_concurrent_futures import (  # type: ignore[import-not-found]
    test_deadlock,
    test_process_pool,
    test_shutdown,
)

import spindle

__all__ = ["ADAPTATIONS", "SKIPS", "apply", "is_adapted", "owner_of"]

_ALL = frozenset({"thread", "fork", "spawn", "-"})


@dataclass(frozen=True)
class Skip:
    """Skip the test in ``flavors``; ``reason`` starts with ``design:`` or ``bug:``."""

    reason: str
    flavors: frozenset[str] = _ALL


@dataclass(frozen=True)
class Adaptation:
    """Run the test as ``wrap(test)`` makes it, for the reason ``why``."""

    why: str
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
    flavors: frozenset[str] = _ALL


def _only(*flavors: str) -> frozenset[str]:
    return frozenset(flavors)


# -- skips -----------------------------------------------------------------------------

_PRIVATE = "design: inspects {attrs}, internals of the standard executor"
_BY_NAME = (
    "design: runs futures.{cls} by name (and inspects its {attrs}): it tests the "
    "standard executor, not the one under test"
)
_SYSTEM_EXIT = (
    "bug: a task (or a result's pickling) that raises SystemExit kills its worker "
    "process, so the future fails with WorkerCrashed, where concurrent.futures sets "
    "the SystemExit on the future"
)
_STALE = (
    "bug: the executor keeps the last task and the last result of a batch alive "
    "until the next one arrives (loop locals that wait holding them)"
)

SKIPS: dict[str, list[Skip]] = {
    # executor.py, run by process_pool (fork, spawn) and thread_pool (thread)
    "ExecutorTest.test_no_stale_references": [Skip(_STALE)],
    "ExecutorTest.test_free_reference": [Skip(_STALE)],
    "ExecutorTest.test_map_timeout": [
        Skip(
            "bug: a quick task sent in one batch with a slow one settles only when the "
            "batch ends, so map(sleep, [0, 0, 6], timeout=5) may yield one result, "
            "not two (fails intermittently)"
        )
    ],
    # test_process_pool.py
    "ProcessPoolExecutorTest.test_killed_child": [
        Skip(
            "design: a killed worker fails only the task it ran (WorkerCrashed) and is "
            "replaced, where the standard pool breaks; the test also needs _processes"
        )
    ],
    "ProcessPoolExecutorTest.test_saturation": [
        Skip(_PRIVATE.format(attrs="_max_workers and _processes"))
    ],
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": [
        Skip(_PRIVATE.format(attrs="_max_workers and _processes"))
    ],
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": [
        Skip(_PRIVATE.format(attrs="_max_workers and _processes"))
    ],
    "ProcessPoolExecutorTest.test_max_tasks_per_child": [
        Skip(
            "design: spindle accepts max_tasks_per_child with fork (a replacement "
            "worker is always spawned), where ProcessPoolExecutor raises ValueError",
            _only("fork"),
        ),
        Skip(_PRIVATE.format(attrs="_processes"), _only("spawn")),
    ],
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": [
        Skip(_PRIVATE.format(attrs="_mp_context"))
    ],
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": [
        Skip(
            "bug: a worker keeps the arguments of its last task alive until it gets "
            "another one, so their finalizers do not run when the task ends",
            _only("fork"),
        ),
        Skip(
            "bug: a spawned worker does not have the parent's multiprocessing authkey, "
            "so a multiprocessing.Manager proxy sent to it cannot connect "
            "(AuthenticationError: digest sent was rejected)",
            _only("spawn"),
        ),
    ],
    # test_thread_pool.py
    "ThreadPoolExecutorTest.test_default_workers": [Skip(_PRIVATE.format(attrs="_max_workers"))],
    "ThreadPoolExecutorTest.test_saturation": [
        Skip(_PRIVATE.format(attrs="_max_workers and _threads"))
    ],
    "ThreadPoolExecutorTest.test_idle_thread_reuse": [Skip(_PRIVATE.format(attrs="_threads"))],
    "ThreadPoolExecutorTest.test_hang_global_shutdown_lock": [
        Skip(
            "design: runs futures.ThreadPoolExecutor and ProcessPoolExecutor by name: "
            "it tests the standard executors, not the one under test"
        )
    ],
    # test_shutdown.py
    "ProcessPoolShutdownTest.test_processes_terminate": [Skip(_PRIVATE.format(attrs="_processes"))],
    "ProcessPoolShutdownTest.test_context_manager_shutdown": [
        Skip(_BY_NAME.format(cls="ProcessPoolExecutor", attrs="_processes"))
    ],
    "ProcessPoolShutdownTest.test_del_shutdown": [
        Skip(
            _BY_NAME.format(
                cls="ProcessPoolExecutor",
                attrs="_processes, _call_queue and _executor_manager_thread",
            )
        )
    ],
    "ProcessPoolShutdownTest.test_shutdown_no_wait": [
        Skip(
            _BY_NAME.format(
                cls="ProcessPoolExecutor",
                attrs="_processes, _call_queue and _executor_manager_thread",
            )
        )
    ],
    "ThreadPoolShutdownTest.test_threads_terminate": [Skip(_PRIVATE.format(attrs="_threads"))],
    "ThreadPoolShutdownTest.test_context_manager_shutdown": [
        Skip(_BY_NAME.format(cls="ThreadPoolExecutor", attrs="_threads"))
    ],
    "ThreadPoolShutdownTest.test_del_shutdown": [
        Skip(_BY_NAME.format(cls="ThreadPoolExecutor", attrs="_threads"))
    ],
    "ThreadPoolShutdownTest.test_shutdown_no_wait": [
        Skip(_BY_NAME.format(cls="ThreadPoolExecutor", attrs="_threads"))
    ],
    "ThreadPoolShutdownTest.test_thread_names_assigned": [
        Skip(_BY_NAME.format(cls="ThreadPoolExecutor", attrs="_threads and thread_name_prefix"))
    ],
    "ThreadPoolShutdownTest.test_thread_names_default": [
        Skip(_BY_NAME.format(cls="ThreadPoolExecutor", attrs="_threads"))
    ],
    # test_init.py
    "FailingInitializerMixin.test_initializer": [
        Skip(
            "design: polls the private _broken and expects a CRITICAL record on the "
            "'concurrent.futures' logger",
            _only("thread"),
        ),
        Skip(
            "bug: when the initializer fails, the future of the task submitted first is "
            "cancelled (CancelledError, no cause) instead of failing with "
            "BrokenExecutor (the test then also polls the private _broken)",
            _only("fork", "spawn"),
        ),
    ],
    "FailingInitializerResourcesTest.test_spawn": [
        Skip(
            "design: runs ProcessPoolSpawnFailingInitializerTest, the standard "
            "executor's (spindle's counterpart cannot pass: it polls _broken)"
        )
    ],
    "FailingInitializerResourcesTest.test_forkserver": [
        Skip(
            "design: runs ProcessPoolForkserverFailingInitializerTest, the standard "
            "executor's; spindle has no forkserver start method"
        )
    ],
    # test_deadlock.py
    "ExecutorDeadlockTest.test_exit_during_func_exec_on_worker": [Skip(_SYSTEM_EXIT)],
    "ExecutorDeadlockTest.test_exit_during_result_pickle_on_worker": [Skip(_SYSTEM_EXIT)],
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": [
        Skip(
            "bug: a result whose unpickling raises SystemExit in the parent kills the "
            "run's event-loop thread: the future never settles and shutdown() hangs"
        )
    ],
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": [
        Skip(_PRIVATE.format(attrs="_executor_manager_thread"))
    ],
}


# -- adaptations -----------------------------------------------------------------------


def _substituting(target: ModuleType, why: str, **names: Any) -> Adaptation:
    """Run the test with ``target``'s globals ``names`` pointing at spindle's values."""

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        def adapted(self: unittest.TestCase) -> Any:
            with unittest.mock.patch.multiple(target, **names):
                return test(self)

        return adapted

    return Adaptation(why, wrap)


def _expect(why: str, **names: Any) -> Adaptation:
    return _substituting(test_deadlock, why, **names)


_CRASHED = (
    "design: a dead worker fails only its own task, with WorkerCrashed, not BrokenProcessPool"
)
_UNPICKLABLE = "design: what cannot be pickled or unpickled fails its own task, with Unpicklable"

#: ``from concurrent.futures import X`` in a child-interpreter script, and what spindle
#: puts there: its executor, or its thread executor for the thread flavour's names.
_IMPORT = re.compile(r"from concurrent\.futures import (\w+)")
_THREAD_NAMES = {"ThreadExecutor", "ThreadPoolExecutor"}


def _spindle_import(match: re.Match[str]) -> str:
    name = match.group(1)
    kind = ', kind="thread"' if name in _THREAD_NAMES else ""
    # multiprocessing too: test_hang_gh83386's script uses it without importing it
    # (CPython never runs that branch: it skips the test for ProcessPoolExecutor).
    executor = f"functools.partial(spindle.Executor{kind})"
    return f"import functools, multiprocessing, spindle; {name} = {executor}"


def _scripts_importing_spindle(why: str) -> Adaptation:
    """Run the test with the scripts it gives ``assert_python_ok`` importing spindle."""
    real = test_shutdown.assert_python_ok

    def assert_python_ok(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_IMPORT.sub(_spindle_import, a) if isinstance(a, str) else a for a in args)
        return real(*args, **kwargs)

    return _substituting(test_shutdown, why, assert_python_ok=assert_python_ok)


_SCRIPT = (
    "the child interpreter imports spindle.Executor (kind='thread' for the thread "
    "flavour) where the script imports the executor from concurrent.futures by name"
)

ADAPTATIONS: dict[str, Adaptation] = {
    # test_deadlock.py: spindle's documented errors in place of the standard pool's.
    "ExecutorDeadlockTest.test_error_at_task_pickle": _expect(
        _UNPICKLABLE, PicklingError=spindle.Unpicklable
    ),
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": _expect(
        _UNPICKLABLE, BrokenProcessPool=spindle.Unpicklable
    ),
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    "ExecutorDeadlockTest.test_error_during_result_pickle_on_worker": _expect(
        _UNPICKLABLE, PicklingError=spindle.Unpicklable
    ),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": _expect(
        _UNPICKLABLE, BrokenProcessPool=spindle.Unpicklable
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    "ExecutorDeadlockTest.test_crash_big_data": _expect(
        _CRASHED, BrokenProcessPool=spindle.WorkerCrashed
    ),
    # test_process_pool.py
    "ProcessPoolExecutorTest.test_traceback": _substituting(
        futures_process,
        "design: the worker's traceback is the cause as spindle.RemoteTraceback, "
        "not concurrent.futures.process._RemoteTraceback",
        _RemoteTraceback=spindle.RemoteTraceback,
    ),
    "ProcessPoolExecutorTest.test_python_finalization_error": _substituting(
        test_process_pool,
        "design: an executor whose run cannot start raises BrokenExecutor, the base "
        "class, not BrokenProcessPool",
        BrokenProcessPool=BrokenExecutor,
    ),
    # test_shutdown.py: scripts run in a child interpreter.
    "ExecutorShutdownTest.test_interpreter_shutdown": _scripts_importing_spindle(_SCRIPT),
    "ExecutorShutdownTest.test_submit_after_interpreter_shutdown": _scripts_importing_spindle(
        _SCRIPT
    ),
    "ExecutorShutdownTest.test_hang_gh83386": _scripts_importing_spindle(_SCRIPT),
    "ThreadPoolShutdownTest.test_cancel_futures_wait_false": _scripts_importing_spindle(_SCRIPT),
}


# -- applying them ---------------------------------------------------------------------


def owner_of(cls: type, method: str) -> str:
    """The CPython class that defines a test method of ``cls``, as ``Class.method``."""
    for klass in cls.__mro__:
        if method in vars(klass) and not klass.__module__.startswith("tests_cpython"):
            return f"{klass.__name__}.{method}"
    return f"{cls.__name__}.{method}"


def is_adapted(method: Any) -> bool:
    """Whether a test method is an adaptation (see :data:`ADAPTATIONS`)."""
    return getattr(method, "__spindle_adapted__", None) is not None


def apply(cls: type[unittest.TestCase], flavor: str) -> None:
    """Put the decisions for ``flavor`` on ``cls``, one of spindle's test classes
    (never on a CPython class: its other users must not see them)."""
    if not cls.__module__.startswith("tests_cpython"):
        return
    run_bugs = bool(os.environ.get("SPINDLE_CPYTHON_RUN_BUGS"))  # run.py --run-bugs
    for name in unittest.TestLoader().getTestCaseNames(cls):
        owner = owner_of(cls, name)
        test = getattr(cls, name)
        skip = next((s for s in SKIPS.get(owner, ()) if flavor in s.flavors), None)
        if skip is not None and run_bugs and skip.reason.startswith("bug:"):
            skip = None
        if skip is not None:
            setattr(cls, name, unittest.skip(skip.reason)(test))
            continue
        adaptation = ADAPTATIONS.get(owner)
        if adaptation is not None and flavor in adaptation.flavors:
            adapted = adaptation.wrap(test)
            adapted.__spindle_adapted__ = adaptation.why  # type: ignore[attr-defined]
            setattr(cls, name, adapted)
