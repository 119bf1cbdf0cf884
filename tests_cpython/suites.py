"""The spindle test classes, built from CPython's own test suites; the list of them.

Two suites, each the test package of the running interpreter, untouched:

- ``concurrent.futures`` (``test.test_concurrent_futures``), against
  :class:`spindle.Executor`, built here;
- ``multiprocessing.pool`` (the Pool tests of ``test._test_multiprocessing``), against
  :class:`spindle.Pool`, built by :mod:`tests_cpython.pool_tests` in ``pool_fork`` and
  ``pool_spawn``, and run as one module here, ``pool``.

CPython writes each group of ``concurrent.futures`` tests once, as a mixin
(``AsCompletedTests``, ``WaitTests``...), and ``util.create_executor_tests`` crosses it
with one mixin per executor (``ThreadPoolMixin``, ``ProcessPoolForkMixin``...) that
names the executor class and its start method. Spindle is plugged in the same way:
three more executor mixins, subclasses of CPython's own, whose ``executor_type`` is
:class:`spindle.Executor` (``kind="thread"`` for the thread flavour, ``mp_context`` fork
or spawn for the process flavours), crossed with the same test mixins by the same
function. The test bodies are CPython's, untouched; what differs for spindle is applied
to the built classes afterwards, by name, from :mod:`tests_cpython.decisions` (a skip
with its reason, or an adaptation), so that each decision is in one place and shows in
the results.

::

    CPython test mixin ──┐
                         ├─ create_executor_tests ─▶ SpindleForkAsCompletedTest ...
    Spindle*Mixin ───────┘                                │
                                       decisions.apply ◀──┘ (skips, adaptations)

The classes are module globals (here, and in ``pool_fork`` and ``pool_spawn`` for the
Pool suite), so that a spawned worker can unpickle a task that refers to one (a bound
class method, as ``test_traceback`` submits).
"""

from __future__ import annotations

import unittest
import unittest.mock
from collections.abc import Iterator
from typing import Any

from test.test_concurrent_futures import (  # type: ignore[import-not-found]
    test_as_completed,
    test_deadlock,
    test_future,
    test_init,
    test_process_pool,
    test_shutdown,
    test_thread_pool,
    test_wait,
    util,
)

import spindle
from spindle.pool import _future

from . import decisions, pool_fork, pool_spawn

__all__ = ["MODULES", "SUITES", "flavor_of", "iter_tests", "suite_of"]

FUTURES = "concurrent.futures"
POOL = "multiprocessing.pool"


class ThreadExecutor(spindle.Executor):
    """``spindle.Executor(kind="thread")``, as a class: CPython's mixins call
    ``executor_type(max_workers=...)`` and some tests read its ``__name__``."""

    def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
        super().__init__(max_workers, kind="thread", **kwargs)


class SpindleThreadMixin(util.ThreadPoolMixin):  # type: ignore[misc]
    """spindle's thread executor where CPython tests ``ThreadPoolExecutor``."""

    flavor = "thread"
    executor_type: Any = ThreadExecutor


class SpindleForkMixin(util.ProcessPoolForkMixin):  # type: ignore[misc]
    """``spindle.Executor(mp_context=get_context("fork"))``."""

    flavor = "fork"
    executor_type: Any = spindle.Executor


class SpindleSpawnMixin(util.ProcessPoolSpawnMixin):  # type: ignore[misc]
    """``spindle.Executor(mp_context=get_context("spawn"))``."""

    flavor = "spawn"
    executor_type: Any = spindle.Executor


THREAD = (SpindleThreadMixin,)
PROCESSES = (SpindleForkMixin, SpindleSpawnMixin)
ALL = THREAD + PROCESSES

#: CPython's test module -> the spindle test classes built from it, in run order.
MODULES: dict[str, list[type[unittest.TestCase]]] = {}
#: The suite -> its modules, in run order (``run.py`` prints a subtotal for each).
SUITES: dict[str, list[str]] = {}


def _cross(module: str, mixin: type, executor_mixins: tuple[type, ...]) -> None:
    """``create_executor_tests`` for spindle's mixins; the classes land in this
    module's globals (importable by name) and in ``MODULES[module]``."""
    before = set(globals())
    util.create_executor_tests(globals(), mixin, executor_mixins=executor_mixins)
    made = [globals()[name] for name in globals() if name not in before]
    MODULES.setdefault(module, []).extend(made)


def _derive(module: str, mixin: type, concrete: type) -> None:
    """A concrete CPython class written for ``ThreadPoolExecutor`` (it has tests of
    its own beside the shared mixin's), with spindle's thread mixin first."""
    name = "SpindleThread" + concrete.__name__.removeprefix("ThreadPool")
    cls = type(name, (mixin, concrete), {"__module__": __name__})
    globals()[name] = cls
    MODULES.setdefault(module, []).append(cls)


def _plain(module: str, concrete: type) -> None:
    """A CPython class with no executor mixin, subclassed so that decisions apply to
    the subclass only."""
    name = "Spindle" + concrete.__name__
    cls = type(name, (concrete,), {"__module__": __name__})
    globals()[name] = cls
    MODULES.setdefault(module, []).append(cls)


class SpindleFutureTests(test_future.FutureTests):  # type: ignore[misc]
    """CPython's tests of ``Future``, each future the test makes spindle's ``Future``
    (the futures spindle's executor returns)."""

    def setUp(self) -> None:
        for module in (test_future, util):  # Future(), and util.create_future's
            patcher = unittest.mock.patch.object(module, "Future", _future.Future)
            patcher.start()
            self.addCleanup(patcher.stop)
        super().setUp()


def _build() -> None:
    _cross("as_completed", test_as_completed.AsCompletedTests, ALL)
    _cross("wait", test_wait.WaitTests, PROCESSES)
    _derive("wait", SpindleThreadMixin, test_wait.ThreadPoolWaitTests)
    _cross("shutdown", test_shutdown.ProcessPoolShutdownTest, PROCESSES)
    _derive("shutdown", SpindleThreadMixin, test_shutdown.ThreadPoolShutdownTest)
    _cross("init", test_init.InitializerMixin, ALL)
    _cross("init", test_init.FailingInitializerMixin, ALL)
    _plain("init", test_init.FailingInitializerResourcesTest)
    _cross("process_pool", test_process_pool.ProcessPoolExecutorTest, PROCESSES)
    _cross("deadlock", test_deadlock.ExecutorDeadlockTest, PROCESSES)
    _derive("thread_pool", SpindleThreadMixin, test_thread_pool.ThreadPoolExecutorTest)
    # Tests of the Future class itself, and of the lighter one spindle's executor returns.
    MODULES["future"] = [test_future.FutureTests, SpindleFutureTests]
    SUITES[FUTURES] = list(MODULES)
    # One module for both start methods: unittest runs each class under the module
    # fixtures of its own module (pool_fork's, then pool_spawn's), as CPython does.
    MODULES["pool"] = [*pool_fork.CLASSES, *pool_spawn.CLASSES]
    SUITES[POOL] = ["pool"]
    for classes in MODULES.values():
        for cls in classes:
            decisions.apply(cls, flavor_of(cls))


def suite_of(module: str) -> str:
    """The suite a module of :data:`MODULES` belongs to."""
    return next(suite for suite, modules in SUITES.items() if module in modules)


def flavor_of(cls: type) -> str:
    """``thread``, ``fork`` or ``spawn``; ``-`` for a class with no executor."""
    return str(getattr(cls, "flavor", "-"))


def iter_tests(module: str) -> Iterator[unittest.TestCase]:
    """Every test of a CPython module's spindle classes, in order."""
    loader = unittest.TestLoader()
    for cls in MODULES[module]:
        for name in loader.getTestCaseNames(cls):
            yield cls(name)


_build()


def setUpModule() -> None:
    util.setup_module()
