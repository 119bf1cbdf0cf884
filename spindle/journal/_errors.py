"""Errors of the journal, all :class:`spindle.SpindleError`."""

from __future__ import annotations

from .._errors import SpindleError


class JournalError(SpindleError):
    """The journal could not be opened, read or written."""


class JournalMismatch(JournalError):
    """The journal belongs to another command (function, input or output).

    Resuming from it would skip items that were never run for this command, so spindle
    refuses; the message says to use a new journal path or ``--force``.
    """


class JournalCorrupt(JournalError):
    """The file is not a spindle journal, or is damaged. It is never overwritten."""


class JournalLocked(JournalError):
    """Another spindle run is using the journal right now."""
