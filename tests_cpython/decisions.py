"""Every CPython test that does not run unchanged against ``spindle.Executor`` or
``spindle.Pool``, and why.

A decision names a test by the CPython class that defines it (``Class.method``, as
:func:`owner_of` gives it: ``ExecutorTest.test_map`` for the ``concurrent.futures``
suite, ``_TestPool.test_map`` for the Pool suite), optionally for some flavours only
(``thread``, ``fork``, ``spawn``), and is one of:

- a **skip**, whose reason starts with ``design:`` (spindle differs on purpose, or the
  test inspects the standard executors' internals or runs them by name) or ``bug:``
  (a gap in spindle that should be fixed; the reason says what fails);
- an **adaptation**: CPython's test body runs unchanged, with some names it looks up
  at run time pointing at spindle's counterparts (the exception spindle documents in
  place of ``BrokenProcessPool``, for instance), or with the child-interpreter scripts
  it runs importing spindle's executor or pool rather than the standard library's.

``docs/cpython-tests.md`` explains each decision at more length. Nothing here is
CPython code: only names, and the wrappers that apply the decisions.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.pool
import os
import re
import unittest
import unittest.mock
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from concurrent.futures import process as futures_process
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from test import _test_multiprocessing  # type: ignore[import-not-found]
from test.support import script_helper  # type: ignore[import-not-found]
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
_POOL_PRIVATE = "design: inspects {attrs}, internals of multiprocessing.Pool"

SKIPS: dict[str, list[Skip]] = {
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
            "'concurrent.futures' logger (the part that asks for BrokenExecutor passes)"
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
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": [
        Skip(_PRIVATE.format(attrs="_executor_manager_thread"))
    ],
    # -- the Pool suite: test._test_multiprocessing (fork, spawn) ----------------------
    "_TestPool.test_make_pool": [Skip(_POOL_PRIVATE.format(attrs="_pool (its processes)"))],
    "_TestPool.test_resource_warning": [
        Skip(
            "design: sets the private _state back to RUN to fake a pool left running; "
            "spindle's pool gives no ResourceWarning: when it is collected, its "
            "executor's finalizer ends the run"
        )
    ],
    "_TestPoolWorkerErrors.test_unpickleable_result": [
        Skip(
            "design: a result that cannot be pickled fails its task with "
            "spindle.Unpicklable, not MaybeEncodingError, whose exc and value attributes "
            "the test reads"
        )
    ],
    "_TestPoolWorkerLifetime.test_pool_worker_lifetime": [
        Skip(_POOL_PRIVATE.format(attrs="_pool and calls _repopulate_pool"))
    ],
    "TestPoolNotLeakOnFailure.test_release_unused_processes": [
        Skip(
            "design: runs multiprocessing.pool.Pool by name, with a context whose "
            "Process fails to start; spindle starts its workers itself, not through "
            "context.Process"
        )
    ],
    "TestStdinBadfiledescriptor.test_pool_in_process": [
        Skip(
            "design: the child process the test starts is spawned, a fresh interpreter "
            "in which multiprocessing.Pool is the standard pool: no substitution "
            "reaches it",
            _only("spawn"),
        )
    ],
}


# -- adaptations -----------------------------------------------------------------------


def _substituting(
    target: ModuleType, why: str, *, builtin: bool = False, **names: Any
) -> Adaptation:
    """Run the test with ``target``'s globals ``names`` pointing at spindle's values
    (``builtin``: names of builtins, which a global of ``target`` then shadows)."""

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        def adapted(self: unittest.TestCase) -> Any:
            with unittest.mock.patch.multiple(target, create=builtin, **names):
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


def _rewriting_scripts(target: ModuleType, why: str, rewrite: Callable[[str], str]) -> Adaptation:
    """Run the test with each script it gives ``target.assert_python_ok`` rewritten by
    ``rewrite``: the code of a ``-c``, or the file that the test wrote and runs."""
    real = target.assert_python_ok

    def rewritten(arg: Any) -> Any:
        if not isinstance(arg, str):
            return arg
        if os.path.isfile(arg):  # a script file (the test removes it)
            path = Path(arg)
            path.write_text(rewrite(path.read_text(encoding="utf-8")), encoding="utf-8")
            return arg
        return rewrite(arg)

    def assert_python_ok(*args: Any, **kwargs: Any) -> Any:
        return real(*map(rewritten, args), **kwargs)

    return _substituting(target, why, assert_python_ok=assert_python_ok)


def _scripts_importing_spindle(why: str) -> Adaptation:
    """Run the test with the scripts it gives ``assert_python_ok`` importing spindle."""
    return _rewriting_scripts(test_shutdown, why, functools.partial(_IMPORT.sub, _spindle_import))


#: How a child-interpreter script of the Pool suite gets ``multiprocessing.Pool``, and
#: what spindle puts there.
_POOL_IMPORTS = (
    (re.compile(r"\bfrom multiprocessing import Pool\b"), "from spindle import Pool"),
    (
        re.compile(r"^(\s*)import multiprocessing$", re.MULTILINE),
        r"\1import multiprocessing, spindle",
    ),
    (re.compile(r"\bmultiprocessing\.Pool\("), "spindle.Pool("),
)


def _spindle_pool(source: str) -> str:
    for pattern, replacement in _POOL_IMPORTS:
        source = pattern.sub(replacement, source)
    return source


def _pool_by_name(why: str, flavors: frozenset[str] = _ALL) -> Adaptation:
    """Run the test with ``multiprocessing.Pool`` building the pool of the test's
    flavour (``self.Pool``: ``spindle.Pool`` with that start method)."""

    def wrap(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)
        def adapted(self: Any) -> Any:  # a test class of pool_tests: it has a Pool
            with unittest.mock.patch.object(multiprocessing, "Pool", self.Pool):
                return test(self)

        return adapted

    return Adaptation(why, wrap, flavors)


_SCRIPT = (
    "the child interpreter imports spindle.Executor (kind='thread' for the thread "
    "flavour) where the script imports the executor from concurrent.futures by name"
)

_POOL_BY_NAME = (
    "the test builds multiprocessing.Pool by name (not self.Pool): that name builds "
    "spindle.Pool with the flavour's start method"
)
_POOL_SCRIPT = "the child interpreter uses spindle.Pool where the script uses multiprocessing.Pool"

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
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": _expect(
        _UNPICKLABLE, BrokenProcessPool=spindle.Unpicklable
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
    # -- the Pool suite: test._test_multiprocessing (fork, spawn) ----------------------
    "_TestPool.test_traceback": _substituting(
        multiprocessing.pool,
        "design: the worker's traceback is the cause as spindle.RemoteTraceback, "
        "not multiprocessing.pool.RemoteTraceback",
        RemoteTraceback=spindle.RemoteTraceback,
    ),
    "_TestPool.test_map_unplicklable": _substituting(
        _test_multiprocessing,
        "design: an argument that cannot be pickled fails its task with "
        "spindle.Unpicklable, not with the error its pickling raised: RuntimeError, "
        "what the argument's __reduce__ raises and map() is expected to, means "
        "spindle.Unpicklable",
        builtin=True,
        RuntimeError=spindle.Unpicklable,
    ),
    "_TestPoolWorkerErrors.test_async_error_callback": _pool_by_name(_POOL_BY_NAME),
    "_TestPoolWorkerLifetime.test_pool_worker_lifetime_early_close": _pool_by_name(_POOL_BY_NAME),
    "_TestPoolWorkerLifetime.test_pool_maxtasksperchild_invalid": _pool_by_name(_POOL_BY_NAME),
    "TestStdinBadfiledescriptor.test_pool_in_process": _pool_by_name(
        _POOL_BY_NAME + " (a forked child inherits it)", _only("fork")
    ),
    "_TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing": (
        _rewriting_scripts(script_helper, _POOL_SCRIPT, _spindle_pool)
    ),
    "MiscTestCase.test_large_pool": _rewriting_scripts(script_helper, _POOL_SCRIPT, _spindle_pool),
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
