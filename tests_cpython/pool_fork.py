"""CPython's Pool tests against ``spindle.Pool``, fork start method (as
``test.test_multiprocessing_fork``); see :mod:`tests_cpython.pool_tests`."""

from __future__ import annotations

from .pool_tests import install

CLASSES = install(globals(), "fork")
