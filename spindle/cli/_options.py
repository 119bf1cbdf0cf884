"""Options that several commands share: the journal's, and how a journal names its input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..journal._driver import refuse_without_journal

_F = TypeVar("_F", bound=Callable[..., Any])

_JOURNAL_OPTIONS = [
    click.option(
        "--journal",
        metavar="PATH",
        help="Record which items are done in this file; the same command run again resumes.",
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        help="With --journal: run the items that failed before again.",
    ),
    click.option(
        "--force",
        is_flag=True,
        help="With --journal: discard the journal's items and its outputs, and start over.",
    ),
    click.option(
        "--output-format",
        type=click.Choice(["jsonl", "csv", "sqlite", "parquet"]),
        help="With --journal: the format of OUTPUT [from its extension].",
    ),
]


def journal_options(command: _F) -> _F:
    """Add ``--journal``, ``--retry-failed``, ``--force`` and ``--output-format`` to a
    command (``spindle map`` and ``spindle fetch`` resume the same way)."""
    for option in reversed(_JOURNAL_OPTIONS):
        command = option(command)
    return command


def check_journal_options(
    journal: str | None,
    *,
    key: str | None = None,
    retry_failed: bool = False,
    force: bool = False,
    output_format: str | None = None,
) -> None:
    """The journal's options make sense only with ``--journal``."""
    if journal is None:
        refuse_without_journal(
            [
                ("--key", key is not None),
                ("--retry-failed", retry_failed),
                ("--force", force),
                ("--output-format", output_format is not None),
            ],
            "--journal PATH (a file that records which items are done, so that rerunning "
            "the command resumes)",
        )


def input_identity(path: str) -> str:
    """How a journal's fingerprint names its input: the absolute path, or ``-``."""
    return "-" if path == "-" else str(Path(path).absolute())
