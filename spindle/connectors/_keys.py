"""Record keys of keyed sinks: what makes a record exactly once in a database.

A keyed sink (PostgreSQL's ``ON CONFLICT (key)``) writes each key once, however often its
message is delivered. A broker's message brings its key (its id, or ``--key FIELD`` of its
body); a plain item (a line of a file) is keyed here:

- ``--key FIELD``: that field of a JSON object, strings as they are, other values as
  their canonical JSON text (so ``5`` and ``"5"`` are one key);
- otherwise a digest of the content, as the journal keys its items (XXH3-128 of the text
  of a line, of the canonical JSON of anything else), written as 32 hex digits.

An item that lacks the field fails alone with :class:`MissingKey` and is recorded under
its digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import xxhash

from .._failure import Failure
from ._base import Message, message_inputs
from ._errors import InputError
from ._json import json_default

__all__ = ["MissingKey", "content_key", "field_key", "key_function", "keyed"]

#: A record's key, from its input.
KeyFunction = Callable[[Any], str]

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class MissingKey(InputError):
    """An input has no usable key field (``--key FIELD``): that item fails."""


def content_key(value: Any) -> str:
    """A digest of ``value``: of a string's UTF-8 text, of anything else's canonical
    JSON (or, failing that, its ``repr``)."""
    if type(value) is str:
        data = value.encode("utf-8", "surrogatepass")
    else:
        try:
            data = orjson.dumps(value, default=json_default, option=_SORTED)
        except TypeError:
            data = repr(value).encode("utf-8", "surrogatepass")
    return xxhash.xxh3_128_hexdigest(data)


def field_key(field: str, without: str = "inputs by their content") -> KeyFunction:
    """The key function of ``--key FIELD``: that field of a JSON object (see the module
    docstring); a missing or null field raises :class:`MissingKey`, whose message says
    how things are keyed ``without`` the option."""

    def key(value: Any) -> str:
        if not isinstance(value, dict):
            raise MissingKey(
                f"--key {field}: the input is not a JSON object with a field {field!r}"
            )
        found = value.get(field)
        if found is None:
            what = "is null" if field in value else "is missing"
            raise MissingKey(
                f"--key {field}: the field {field!r} {what} in this input; every input "
                f"needs it (or leave out --key to key {without})"
            )
        if type(found) is str:
            return found
        return orjson.dumps(found, default=json_default, option=_SORTED).decode()

    return key


def key_function(field: str | None) -> KeyFunction:
    """``--key FIELD``'s key function, or the content digest without one."""
    return content_key if field is None else field_key(field)


def keyed(
    inputs: list[Any], values: list[Any], key: KeyFunction
) -> tuple[list[str], list[Any], list[Any]]:
    """The keys, inputs and values of a chunk for a keyed sink.

    A stream run's inputs are :class:`Message` objects, which bring their keys; plain
    items are keyed with ``key``. An item whose key cannot be made fails (its value
    becomes a ``MissingKey`` failure) and is keyed by its content.
    """
    if inputs and type(inputs[0]) is Message:
        return [m.key for m in inputs], message_inputs(inputs), values
    if key is content_key:
        return list(map(content_key, inputs)), inputs, values
    keys: list[str] = []
    out = values
    for i, item in enumerate(inputs):
        try:
            keys.append(key(item))
        except MissingKey as exc:
            keys.append(content_key(item))
            if type(values[i]) is not Failure:
                if out is values:
                    out = list(values)
                out[i] = Failure(item, "MissingKey", str(exc), "", 0, "output")
    return keys, inputs, out
