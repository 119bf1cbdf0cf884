"""The one error hierarchy of spindle.

Every error spindle raises on its own account derives from :class:`SpindleError`.
Errors raised by a user's function are re-raised as they were (same type), with the
worker's traceback text attached as ``__cause__`` (a :class:`RemoteTraceback`), the
way ``concurrent.futures`` does it, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SpindleError(Exception):
    """Base class of every error that spindle raises on its own account."""


class ConfigError(SpindleError, ValueError):
    """An argument or option is invalid; the message says which and what to use."""


class JobError(SpindleError):
    """A job failed and its original exception could not be brought back.

    Raised in place of the user's exception when that exception could not be
    pickled in the worker; the :attr:`failure` holds the type name, message and
    traceback text.
    """

    def __init__(self, message: str, failure: object | None = None) -> None:
        super().__init__(message)
        self.failure = failure


class Permanent(Exception):
    """Raise (or subclass) this in a job for a failure that must not be retried."""


class WorkerCrashed(SpindleError):
    """The worker process running a job died (killed by a signal, or exited)."""


class Timeout(SpindleError):
    """A job ran longer than its stage's ``timeout``."""


class Unpicklable(SpindleError):
    """An input or a result could not be pickled to cross a process boundary."""


class MalformedInput(SpindleError):
    """An input record could not be parsed (for example a line that is not JSON)."""


class PipelineClosed(SpindleError):
    """The pipeline was stopped (by ``close()``, Ctrl-C or a failure) before the item ran."""


class CacheError(SpindleError):
    """The cache could not do what was asked: no server of the cache answers, or a
    package it needs is not installed (the message says which and what to do).

    Also a value the cache cannot hold (one pickle refuses, named by its key, or one
    larger than the whole budget, with both sizes), a handle used after ``close()``,
    or a cache's directory that is gone or damaged.
    """


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker.

    It is set as the ``__cause__`` of a re-raised job exception so the original
    traceback is printed under "The above exception was the direct cause of...".
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
