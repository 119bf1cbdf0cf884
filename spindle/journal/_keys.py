"""Item keys: how a journal tells one input from another, and a repeat from a new one.

By default a key is a 16-byte digest of the input: of the line itself for text input, of
the canonical JSON (``orjson.dumps(value, option=OPT_SORT_KEYS)``) for JSON input.
``--key FIELD`` keys each JSON object by one of its fields instead (strings as they are,
other values as their JSON text); an input without it fails with :class:`MissingKey`
and is recorded under its digest, which cannot equal a field key (bytes, not text).

The digest is XXH3-128 (xxhash): not a cryptographic hash, which keys do not need, and
a third of the cost of BLAKE2b for short lines, which matters when a job takes
microseconds. A journal stores its scheme (``meta.keys``) and a run keys its input with
the journal's scheme, so journals made before XXH3 (BLAKE2b, format 1) keep their keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import xxhash

from .._errors import SpindleError
from ..connectors import json_default
from ._base import DEFAULT_KEY_SCHEME, Key

__all__ = [
    "DEFAULT_SCHEME",
    "SCHEMES",
    "KeyFunction",
    "Keys",
    "MissingKey",
    "TextKey",
    "ValueKey",
    "field_key",
    "keys_for",
]

#: An item's key: the journal's identity of an input.
KeyFunction = Callable[[Any], Key]

_DECIMAL = b"%d"
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _blake2b_128(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


#: Digest schemes by the name a journal stores.
SCHEMES: dict[str, Callable[[bytes], bytes]] = {
    "xxh3-128": xxhash.xxh3_128_digest,
    "blake2b-128": _blake2b_128,
}
DEFAULT_SCHEME = DEFAULT_KEY_SCHEME


class MissingKey(SpindleError):
    """An input has no usable key field (``--key FIELD``): that item fails."""


class TextKey:
    """The default key of a text line: a digest of the line itself.

    ``many`` keys a whole batch of lines with no Python code per line.
    """

    __slots__ = ("digest",)

    def __init__(self, digest: Callable[[bytes], bytes]) -> None:
        self.digest = digest

    def __call__(self, line: str) -> bytes:
        return self.digest(line.encode("utf-8", "surrogatepass"))

    def many(self, lines: list[str]) -> list[bytes]:
        raw: list[bytes] | None = getattr(lines, "raw", None)
        if raw is not None:  # the bytes the lines were decoded from: the same digests
            return list(map(self.digest, raw))
        try:
            return list(map(self.digest, map(str.encode, lines)))
        except UnicodeEncodeError:  # a lone surrogate: the same key, the long way
            return list(map(self, lines))


class ValueKey:
    """The default key of any item: text as a line, anything else as its canonical JSON,
    else its ``repr``.

    ``many`` keys a batch of strings, or of ints, with no Python code per item (an int's
    canonical JSON is its decimal text; beyond 64 bits orjson refuses it, and its
    ``repr`` is that same text).
    """

    __slots__ = ("digest", "json", "text")

    def __init__(
        self, digest: Callable[[bytes], bytes], text: TextKey, json: Callable[[Any], bytes]
    ) -> None:
        self.digest = digest
        self.text = text
        self.json = json

    def __call__(self, value: Any) -> bytes:
        if type(value) is str:
            return self.text(value)
        try:
            return self.json(value)
        except TypeError:
            return self.digest(repr(value).encode("utf-8", "surrogatepass"))

    def many(self, values: list[Any]) -> list[bytes]:
        kinds = set(map(type, values))
        if kinds == {str}:
            return self.text.many(values)
        if kinds == {int}:  # b"%d" % x is str(x).encode(), made as bytes at once
            return list(map(self.digest, map(_DECIMAL.__mod__, values)))
        return list(map(self, values))


class Keys(NamedTuple):
    """The default key functions of one digest scheme."""

    scheme: str
    #: A text line.
    text: TextKey
    #: A JSON value, by its canonical JSON.
    json: KeyFunction
    #: Any item: text as a line, anything else as canonical JSON, else its ``repr``.
    value: KeyFunction


def keys_for(scheme: str) -> Keys:
    """The key functions of ``scheme`` (a name from :data:`SCHEMES`)."""
    digest = SCHEMES[scheme]
    text = TextKey(digest)

    def json_key(value: Any) -> bytes:
        return digest(orjson.dumps(value, default=json_default, option=_SORTED))

    return Keys(scheme, text, json_key, ValueKey(digest, text, json_key))


def field_key(field: str) -> KeyFunction:
    """The key function of ``--key FIELD``: that field of a JSON object.

    Strings are keys as they are; other values are their canonical JSON text (so ``5``
    and ``"5"`` are the same key). A missing or null field raises :class:`MissingKey`.
    """

    def key(value: Any) -> Key:
        if not isinstance(value, dict):
            raise MissingKey(
                f"--key {field}: the input is a JSON {_json_type(value)}, not an object with "
                f"a field {field!r}"
            )
        found = value.get(field)
        if found is None:
            what = "is null" if field in value else "is missing"
            raise MissingKey(
                f"--key {field}: the field {field!r} {what} in this input; every input "
                "needs it (or run without --key to key inputs by their content)"
            )
        if type(found) is str:
            return found
        return orjson.dumps(found, default=json_default, option=_SORTED).decode()

    return key


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number", list: "array"}
    return names.get(type(value), type(value).__name__)
