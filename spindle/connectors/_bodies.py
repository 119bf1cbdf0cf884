"""A broker message's body as the job's input: JSON or text, or a failure in its place.

Every broker source reads bodies the same way: ``--format jsonl`` parses the body as
JSON, ``--format text`` decodes it as UTF-8, and a body that is neither becomes a
:class:`~spindle.Failure` (``MalformedInput``) that fails alone and is acknowledged once
its failure record is durable. A body keyed by a field it lacks fails as ``MissingKey``.
A broker sink's failure record is one JSON body too (:func:`failure_body`).
"""

from __future__ import annotations

from typing import Any

import orjson

from .._failure import Failure
from ._json import JSON_OPTIONS, json_default
from ._keys import KeyFunction, MissingKey

__all__ = ["decode_body", "encode_result", "failure_body", "keyed_body", "malformed"]


def malformed(raw: bytes, mid: str, why: str) -> Failure:
    """The failure of message ``mid`` whose body ``raw`` could not be read."""
    return Failure(
        raw.decode("utf-8", "replace"), "MalformedInput", f"message {mid}: {why}", "", 0, "input"
    )


def decode_body(raw: bytes, mid: str, as_json: bool) -> Any:
    """The body ``raw`` of message ``mid``: JSON (``as_json``) or text; a
    ``MalformedInput`` failure when it is not."""
    if as_json:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return malformed(raw, mid, f"not valid JSON ({exc})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return malformed(raw, mid, f"not valid UTF-8 ({exc})")


def keyed_body(body: Any, mid: str, key: KeyFunction | None) -> tuple[Any, str]:
    """``(body, key)`` of message ``mid``: its id, or ``key(body)``; a body without the
    key's field becomes a ``MissingKey`` failure (keyed by the id)."""
    if key is None or type(body) is Failure:
        return body, mid
    try:
        return body, key(body)
    except MissingKey as exc:
        return Failure(body, "MissingKey", f"message {mid}: {exc}", "", 0, "input"), mid


def failure_body(key: str, item: Any, failure: Failure) -> bytes:
    """The failure record a broker sink publishes: ``key``, ``input``, ``error``,
    ``message``, ``traceback``, ``attempts`` as JSON (an input JSON cannot carry is
    written as its ``repr``)."""
    record = {
        "key": key,
        "input": item,
        "error": failure.error,
        "message": failure.message,
        "traceback": failure.traceback,
        "attempts": failure.attempts,
    }
    try:
        return orjson.dumps(record, default=json_default, option=JSON_OPTIONS)
    except TypeError:
        record["input"] = repr(item)
        return orjson.dumps(record)


def encode_result(item: Any, value: Any) -> bytes | Failure:
    """The result ``value`` of ``item`` as the JSON a broker sink publishes, or, when
    JSON cannot carry it, the ``Unserializable`` failure to write in its place."""
    try:
        return orjson.dumps(value, default=json_default, option=JSON_OPTIONS)
    except TypeError as exc:
        return Failure(
            item, "Unserializable", f"the result cannot be written as JSON ({exc})", "", 1, "output"
        )
