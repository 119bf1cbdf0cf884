"""Executors: where a stage's function runs (event loop, threads, processes).

They share one small interface, :class:`~spindle.executors.base.Executor`, so the
stage runner does not care where a function runs.
"""
