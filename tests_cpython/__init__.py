"""CPython's own test suites, run against spindle: ``concurrent.futures``' against
:class:`spindle.Executor`, ``multiprocessing``'s Pool tests against :class:`spindle.Pool`.

The tests are not copied: :mod:`tests_cpython.suites` imports the test classes of the
``test.test_concurrent_futures`` package of the running interpreter and mixes spindle's
executor into them, as that package's ``create_executor_tests`` does for the standard
executors; :mod:`tests_cpython.pool_tests` does the same for the Pool tests of
``test._test_multiprocessing``, through its ``install_tests_in_module_dict``.
``python tests_cpython/run.py`` runs them; ``docs/cpython-tests.md`` lists every test
that is skipped or adapted, and why.

This is a package (not under ``tests/``) so that spawned workers can import the test
classes by name, which they need to unpickle a task such as a bound class method.
"""
