"""JSON as spindle writes it: one encoding for every output of results.

Results are written as JSON lines by the plain sink (:mod:`._writer`), by the journaled
outputs (:mod:`._files`) and by fetch workers that encode their records where they run
(:class:`JsonLine`). They share :func:`json_default`, so a set, bytes or a dataclass in a
result is written the same way whichever path the run takes.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson

#: Options of every JSON encoding of results: numpy arrays and dicts with non-string keys
#: are common in results, and orjson handles them natively.
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_default(value: Any) -> Any:
    """What orjson cannot encode by itself: sets as lists, bytes as text (or base64),
    dataclasses as dicts."""
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


#: The options of a whole line.
LINE_OPTIONS = JSON_OPTIONS | orjson.OPT_APPEND_NEWLINE


class JsonLine(bytes):
    """A whole output line, already encoded, written as it is.

    A job whose result is the record itself (``spindle fetch``'s) can encode it where
    it runs, in a worker process: the parent, which writes every record, then only
    moves bytes, and the encoding of large records (fetched pages) is spread over
    the workers.
    """

    __slots__ = ()


def encode_line(record: Any) -> Any:
    """``record`` as a :class:`JsonLine`, exactly as the plain sink would write it; the
    record itself when it cannot be written as JSON (the writer then fails it
    with its usual message)."""
    try:
        return JsonLine(orjson.dumps(record, default=json_default, option=LINE_OPTIONS))
    except TypeError:
        return record
