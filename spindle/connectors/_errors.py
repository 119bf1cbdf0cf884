"""Errors of the connectors: one tree for every source and sink.

Every output problem derives from :class:`OutputError`, every input problem from
:class:`InputError`, both :class:`spindle.SpindleError`, so a caller can stop a run on any
output problem with one ``except``, whether the run is journaled or not. Messages name the path
and say what to do, because the person reading them is at a terminal, not in the code.
"""

from __future__ import annotations

from .._errors import SpindleError


class InputError(SpindleError):
    """The input cannot be read (a missing file, a refused permission)."""


class OutputError(SpindleError):
    """An output could not be opened, written or brought back to its last commit point."""


class OutputExists(OutputError):
    """The output already holds data that the journal does not account for.

    Raised instead of overwriting it: the data may belong to another run or to the user.
    """


class OutputCorrupt(OutputError):
    """The output no longer matches what the journal recorded (shorter, or changed)."""


class UnwritableRecord(OutputError):
    """One record cannot be written in the output's format (for example not JSON-serializable).

    The journal turns the item into a failure with this message rather than stopping the run.
    """
