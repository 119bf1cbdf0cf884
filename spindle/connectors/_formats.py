"""Formats of the committed outputs, chosen by name or by a path's extension."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from ._files import CsvOutput, JsonlOutput
from ._output import Output
from ._parquet import ParquetOutput
from ._sqlite import SqliteOutput

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
