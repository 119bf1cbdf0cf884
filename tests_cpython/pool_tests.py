"""The spindle test classes built from the Pool tests of CPython's ``test._test_multiprocessing``.

CPython writes its ``multiprocessing`` tests once, as classes that reach what they
test through class attributes (``self.Pool``, ``self.Process``...), and
``install_tests_in_module_dict(globals(), start_method)`` crosses each with one mixin
per type (``ProcessesMixin``, whose ``Pool`` is ``multiprocessing.Pool``;
``ThreadsMixin``; ``ManagerMixin``) in a module of its own per start method
(``test.test_multiprocessing_fork``, ``..._spawn``), whose ``setUpModule`` sets that
start method and whose ``tearDownModule`` checks for processes and threads left over.

Spindle is plugged in the same way. :func:`install` calls that function for one start
method, keeps its classes that hold Pool tests (:data:`POOL_TESTS`), and subclasses
each with a spindle mixin first, whose ``Pool`` is ``spindle.Pool`` with that start
method's context; the module fixtures are CPython's. ``pool_fork`` and ``pool_spawn``
are the two modules, as in CPython::

    _TestPool, TestInitializers... ─ install_tests_in_module_dict(scratch, "fork")
                                          │ WithProcessesTestPool, TestInitializers...
    SpindleForkPoolMixin ─────────────────┴─▶ SpindleForkTestPool... in pool_fork
    (Pool = spindle.Pool, fork context)        │
                             decisions.apply ◀─┘ (skips, adaptations; from suites.py)

Only the ``processes`` type runs: the ``threads`` type tests
``multiprocessing.dummy.Pool`` and the ``manager`` type a manager's pool proxy, which
spindle has no counterpart of. The classes are globals of their module, so that a
spawned worker can unpickle a task that refers to one (``test_traceback`` submits a
bound class method).
"""

from __future__ import annotations

import functools
import multiprocessing
import unittest
from typing import Any

from test import _test_multiprocessing  # type: ignore[import-not-found]

import spindle

__all__ = ["POOL_TESTS", "SpindleForkPoolMixin", "SpindleSpawnPoolMixin", "install"]

#: The classes of ``install_tests_in_module_dict`` that hold Pool tests, and which of
#: their tests are about the pool (``None``: all of them; the others do not run).
POOL_TESTS: dict[str, tuple[str, ...] | None] = {
    "WithProcessesTestPool": None,
    "WithProcessesTestPoolWorkerErrors": None,
    "WithProcessesTestPoolWorkerLifetime": None,
    "TestInitializers": ("test_pool_initializer",),
    "TestPoolNotLeakOnFailure": None,
    "TestStdinBadfiledescriptor": ("test_pool_in_process",),
    "MiscTestCase": ("test_large_pool",),
}


class SpindleForkPoolMixin:
    """``spindle.Pool(..., context=get_context("fork"))`` where CPython tests
    ``multiprocessing.Pool`` (the tests that build ``multiprocessing.Pool`` by name
    get this one through an adaptation of ``decisions.py``)."""

    flavor = "fork"
    Pool = staticmethod(
        functools.partial(spindle.Pool, context=multiprocessing.get_context("fork"))
    )


class SpindleSpawnPoolMixin:
    """``spindle.Pool(..., context=get_context("spawn"))``."""

    flavor = "spawn"
    Pool = staticmethod(
        functools.partial(spindle.Pool, context=multiprocessing.get_context("spawn"))
    )


_MIXINS: dict[str, type] = {"fork": SpindleForkPoolMixin, "spawn": SpindleSpawnPoolMixin}


def install(globs: dict[str, Any], start_method: str) -> list[type[unittest.TestCase]]:
    """Put the spindle Pool test classes for ``start_method`` and CPython's module
    fixtures for it in ``globs`` (a module's globals); the classes, in run order."""
    module = globs["__name__"]
    built: dict[str, Any] = {"__name__": module}
    _test_multiprocessing.install_tests_in_module_dict(built, start_method)
    mixin = _MIXINS[start_method]
    loader = unittest.TestLoader()
    classes: list[type[unittest.TestCase]] = []
    for cpython_name, wanted in POOL_TESTS.items():
        base = built[cpython_name]
        name = f"Spindle{start_method.capitalize()}{cpython_name.removeprefix('WithProcesses')}"
        namespace: dict[str, Any] = {"__module__": module, "__qualname__": name}
        if wanted is not None:  # not a Pool test: hidden from the loader
            namespace.update(
                (test, None) for test in loader.getTestCaseNames(base) if test not in wanted
            )
        cls = type(name, (mixin, base), namespace)
        globs[name] = cls
        classes.append(cls)
    globs["setUpModule"] = built["setUpModule"]
    globs["tearDownModule"] = built["tearDownModule"]
    return classes
