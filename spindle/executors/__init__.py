"""Executors: where a stage's function runs (event loop, threads, processes).

They share one small interface, :class:`~spindle.executors.base.Executor`, so the
stage runner does not care where a function runs. Each is made from a
:class:`~spindle.executors.spec.WorkSpec`, the few facts of a stage it needs: this
package sits below the pipeline and imports nothing from it. ``fake`` holds an
executor for tests that calls the function inline.
"""
