"""Reading plain data of unknown shape into typed records, one table of fields a record.

Observers read data they did not make and cannot trust to be complete: the engine's
snapshot (possibly from an older or partial engine) and reports stored as JSON by an
earlier run. Each record type is read by a :class:`Table` that names, for every field
of the type, the reader that turns whatever stands under that key into the field's
value, with a zero, an empty text or a stated default when the key is missing or holds
something else::

    {"done": 7.0, "queued": "many"}  ──a stage's table, name="stage0"──▶  {"name": "stage0",
                                                                           "kind": "",
                                                                           "done": 7,
                                                                           "queued": 0, ...}

A table reads the fields in its own order, so the records come out in the same key
order every time. mypy does not look into the tables, so a table checks when it is made
that it names exactly the fields of its type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar, cast

__all__ = [
    "MISSING",
    "Reader",
    "Table",
    "float_or_none",
    "int_or_none",
    "maps",
    "text",
    "texts",
    "to_float",
    "to_int",
]

T = TypeVar("T")

Reader = Callable[[Any], object]
"""Turns what stands under a key (or :data:`MISSING`) into a field's value."""

MISSING: Final = object()
"""What a reader is given for a key the data lacks."""


def to_int(value: object) -> int:
    """An int from an int, a bool or a finite float (truncated); 0 from anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def to_float(value: object) -> float:
    """A float from a finite int or float; 0.0 from anything else."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0


def int_or_none(value: object) -> int | None:
    """An int (not a bool) as it is; None from anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_or_none(value: object) -> float | None:
    """A float from a finite int or float (not a bool); None from anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def text(default: str = "") -> Callable[[object], str]:
    """A reader of any value as text (``str(value)``), ``default`` for a missing key."""

    def read(value: object) -> str:
        return default if value is MISSING else str(value)

    return read


def texts(value: object) -> list[str]:
    """Each element of a list as text; an empty list from anything else."""
    return [str(x) for x in value] if isinstance(value, list) else []


def maps(value: object) -> list[Mapping[str, Any]]:
    """The mappings in a list or tuple (other elements are dropped); [] from anything else."""
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, Mapping)]


class Table(Generic[T]):
    """Reads a mapping into a record of type ``kind`` (a TypedDict), field by field.

    ``fields`` maps every field of ``kind`` to its reader, in the order the record's
    keys should have, except the ``optional`` fields: the caller adds those when the
    data has them. Anything that is not a mapping reads as an empty one.
    """

    __slots__ = ("_fields", "_kind")

    def __init__(
        self,
        kind: Callable[..., T],
        fields: Mapping[str, Reader],
        *,
        optional: tuple[str, ...] = (),
    ) -> None:
        declared = set(getattr(kind, "__annotations__", {}))
        named = set(fields) | set(optional)
        if named != declared:
            raise TypeError(
                f"a table of {getattr(kind, '__name__', kind)} must name each of its fields:"
                f" missing {sorted(declared - named)}, unknown {sorted(named - declared)}"
            )
        self._kind = kind
        self._fields = dict(fields)

    def __call__(self, value: object, /, **defaults: object) -> T:
        """The record read from ``value``; ``defaults`` stand in for keys it lacks."""
        src: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
        if defaults:
            src = {**defaults, **src}
        return self._read(src)

    @property
    def keys(self) -> frozenset[str]:
        """The keys the table reads (its ``optional`` fields are not among them)."""
        return frozenset(self._fields)

    def rows(self, value: object) -> list[T]:
        """A record from each mapping in a list (see :func:`maps`)."""
        return [self._read(src) for src in maps(value)]

    def _read(self, src: Mapping[str, Any]) -> T:
        get = src.get
        record = {key: read(get(key, MISSING)) for key, read in self._fields.items()}
        return cast(T, record)  # a T: __init__ checked that the table names its fields

    def __repr__(self) -> str:
        return f"Table({getattr(self._kind, '__name__', self._kind)}: {', '.join(self._fields)})"
