"""Output writers that the journal can bring back to a committed point after a crash.

Formats: JSON lines (default, orjson), CSV, an SQLite table, and Parquet (needs the
optional ``spindle[parquet]`` extra), plus the failures file (JSON lines that never
refuse a record). Pick one by extension or by name with :func:`open_output`.

How crash safety works (details in ``docs/journal.md`` and in each module):

* every writer can :meth:`~Output.commit` to a *point* (a byte offset for files, the last
  row number for SQLite, the number of part files for Parquet) once its data is durable;
* the journal records that point in the same SQLite transaction that marks the items
  done, after the writer's commit, so the journal never points past durable data;
* on resume the journal hands the point back to :meth:`~Output.open`, which cuts the
  output back to it: a torn last line, or records whose items were not marked done, go,
  and those items run again. Each distinct key therefore ends up exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._base import Output as Output
from ._errors import OutputCorrupt as OutputCorrupt
from ._errors import OutputError as OutputError
from ._errors import OutputExists as OutputExists
from ._errors import UnwritableRecord as UnwritableRecord
from ._files import AppendFileOutput as AppendFileOutput
from ._files import CsvOutput as CsvOutput
from ._files import FailuresOutput as FailuresOutput
from ._files import JsonlOutput as JsonlOutput
from ._parquet import ParquetOutput as ParquetOutput
from ._sqlite import SqliteOutput as SqliteOutput

__all__ = [
    "FORMATS",
    "AppendFileOutput",
    "CsvOutput",
    "FailuresOutput",
    "JsonlOutput",
    "Output",
    "OutputCorrupt",
    "OutputError",
    "OutputExists",
    "ParquetOutput",
    "SqliteOutput",
    "UnwritableRecord",
    "format_for",
    "open_output",
]

#: Format name -> writer class.
FORMATS: dict[str, type[Output[Any]]] = {
    "jsonl": JsonlOutput,
    "csv": CsvOutput,
    "sqlite": SqliteOutput,
    "parquet": ParquetOutput,
}

_ALIASES = {
    "ndjson": "jsonl",
    "jsonlines": "jsonl",
    "db": "sqlite",
    "sqlite3": "sqlite",
    "pq": "parquet",
}

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".db": "sqlite",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def format_for(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format name for ``path``: ``format`` if given, else from the extension."""
    if format is not None:
        name = format.lower().lstrip(".")
        name = _ALIASES.get(name, name)
        if name not in FORMATS:
            raise ConfigError(
                f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}"
            )
        return name
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    hint = " (JSON lines are written to .jsonl)" if suffix == ".json" else ""
    raise ConfigError(
        f"cannot tell the output format of {os.fspath(path)!r} from its extension{hint}; "
        f"use one of {', '.join(sorted(_EXTENSIONS))} or name the format "
        f"({', '.join(FORMATS)})"
    )


def open_output(
    path: str | os.PathLike[str], format: str | None = None, **options: Any
) -> Output[Any]:
    """Make the writer for ``path`` (not opened yet: the journal opens it at its point).

    ``options`` go to the writer: ``fsync`` for all, ``fields`` for CSV, ``table`` for
    SQLite, ``min_rows``/``max_delay``/``compression`` for Parquet, ``default`` for JSON lines.
    """
    cls = FORMATS[format_for(path, format)]
    try:
        return cls(path, **options)
    except TypeError as exc:
        raise ConfigError(f"invalid option for {cls.format} output {path}: {exc}") from exc
