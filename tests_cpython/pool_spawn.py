"""CPython's Pool tests against ``spindle.Pool``, spawn start method (as
``test.test_multiprocessing_spawn``); see :mod:`tests_cpython.pool_tests`."""

from __future__ import annotations

from .pool_tests import install

CLASSES = install(globals(), "spawn")
