"""Failure records: what is left of an item whose job failed."""

from __future__ import annotations

import traceback as _tb
from dataclasses import dataclass, field
from typing import Any

from ._errors import JobError, RemoteTraceback

#: Longest ``repr`` of an input kept in messages, so a huge item does not flood a log.
_REPR_LIMIT = 200


def short_repr(value: object, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, never raising."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real failure
        text = f"<{type(value).__name__} with a failing __repr__: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class Failure:
    """An item whose job failed, yielded in its place with ``on_error="yield"``.

    Attributes:
        item: the input the stage received.
        error: the exception's type name (``"ValueError"``, ``"WorkerCrashed"``...).
        message: ``str()`` of the exception.
        traceback: the formatted traceback, from the worker where it ran.
        attempts: how many times the job was tried.
        stage: the name of the stage that failed.
        exception: the exception object itself when it could be brought back
            from the worker (``None`` otherwise); not part of the failure record.
    """

    item: Any
    error: str
    message: str
    traceback: str
    attempts: int = 1
    stage: str = ""
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_exception(
        cls, item: Any, exc: BaseException, *, attempts: int = 1, stage: str = ""
    ) -> Failure:
        text = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(item, type(exc).__name__, str(exc), text, attempts, stage, exc)

    def to_dict(self) -> dict[str, Any]:
        """The record written to a failures file (JSON-ready but for ``item``)."""
        return {
            "input": self.item,
            "error": self.error,
            "message": self.message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "stage": self.stage,
        }

    def to_exception(self) -> BaseException:
        """The exception to raise in the caller for ``on_error="raise"``.

        The original exception (same type) when it survived the trip back, else a
        :class:`JobError`; either way ``__cause__`` carries the worker's traceback.
        """
        exc: BaseException
        if self.exception is not None:
            exc = self.exception
        else:
            exc = JobError(f"{self.error}: {self.message}", self)
        exc.__cause__ = RemoteTraceback(self.traceback)
        where = f" in stage {self.stage!r}" if self.stage else ""
        note = f"spindle: job for item {short_repr(self.item)}{where} failed"
        note += f" after {self.attempts} attempts" if self.attempts > 1 else ""
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        return exc
