"""How the cache turns keys and values into bytes, and sizes into numbers.

A key is ``str`` or ``bytes``; the two never meet (``"a"`` and ``b"a"`` are two keys):
its *tagged* form is one byte for the type and the key's bytes, and a tagged form
longer than :data:`MAX_TAGGED` bytes is replaced by a BLAKE2b-256 digest of it, so any
length fits LMDB's key limit. The stored key is the tagged form behind the 8-byte
big-endian XXH3-64 hash of it: records are then spread evenly over the B-tree in hash
order, which is what lets eviction draw random entries with one cursor seek.

A value is a record: a one-byte *tag* saying how the payload is encoded (``bytes`` as
they are, ``str`` as UTF-8, anything else pickled with protocol 5), with its high bit
set when the entry expires; then, for those only, the instant it expires (a
little-endian double, seconds since the epoch); then the payload. An entry without a
TTL costs one byte more than its payload, and a read of it unpacks no time. The second
tier (a Redis ring) stores the tag and the payload only: it keeps the expiry itself.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import struct
from typing import Any

from xxhash import xxh3_64_intdigest

from .._errors import CacheError, ConfigError

#: Payload tags.
BYTES, STR, PICKLE = 0, 1, 2
#: The tag's bit that says an expiry instant follows it.
TTL = 0x80
#: The header of a record that expires: tag | TTL, expiry instant.
TTL_HEADER = struct.Struct("<Bd")
#: The expiry instant, after the tag.
EXPIRES = struct.Struct("<d")
#: The longest tagged key stored as it is (LMDB's limit is 511 bytes, the hash takes 8).
MAX_TAGGED = 400

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_size(size: int | str, *, what: str = "max_bytes") -> int:
    """Bytes from an ``int`` or a string such as ``"256MB"`` (SI: 256,000,000) or
    ``"1.5GiB"`` (binary); units are case-insensitive, the ``B`` may be left out."""
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise ConfigError(f"{what} must be a number of bytes or a string such as '256MB', "
                          f"got {size!r}")
    if isinstance(size, int):
        return size
    match = _SIZE.fullmatch(size)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ConfigError(
            f"{what}={size!r} is not a size: use a number of bytes, or a number and a unit "
            "among B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024)"
        )
    return int(float(match.group(1)) * unit)


def encode_key(key: str | bytes) -> tuple[bytes, bytes, int]:
    """``(stored key, tagged key, hash)`` of a key."""
    if isinstance(key, str):
        tagged = b"s" + key.encode()
    elif isinstance(key, bytes | bytearray | memoryview):
        tagged = b"b" + bytes(key)
    else:
        raise TypeError(f"a cache key is a str or bytes, not {type(key).__name__}: {key!r:.80}")
    if len(tagged) > MAX_TAGGED:
        tagged = b"h" + hashlib.blake2b(tagged, digest_size=32).digest()
    h = xxh3_64_intdigest(tagged)
    return h.to_bytes(8, "big") + tagged, tagged, h


def encode_value(key: object, value: Any) -> tuple[int, bytes]:
    """``(tag, payload)`` of a value; a value pickle refuses is a :class:`CacheError`
    naming the key."""
    kind = type(value)
    if kind is bytes:
        return BYTES, value
    if kind is str:
        return STR, value.encode()
    try:
        return PICKLE, pickle.dumps(value, protocol=5)
    except Exception as exc:
        raise CacheError(
            f"the value for key {show(key)} cannot be cached: pickle refused it "
            f"({type(exc).__name__}: {exc}); cache bytes, str or a picklable object"
        ) from exc


def record(tag: int, payload: bytes, expires: float | None) -> bytes:
    """A record: the tag, the expiry instant when there is one, the payload."""
    if expires is None:
        return bytes((tag,)) + payload
    return TTL_HEADER.pack(tag | TTL, expires) + payload


def decode(tag: int, payload: bytes | memoryview) -> Any:
    """The value of a payload; pickled payloads are unpickled by the caller when it
    holds no lock (:func:`pickle.loads` may run any code)."""
    if tag == BYTES:
        return bytes(payload)
    if tag == STR:
        return str(payload, "utf-8")
    return pickle.loads(payload)


def show(key: object) -> str:
    """A key as error messages show it: its repr, cut at 80 characters."""
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


def human(size: float) -> str:
    """Bytes for people: ``"12.3 MB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover - the loop returns
