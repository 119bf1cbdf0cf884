"""How the journal's log stores a commit's keys: one blob per commit, not a row per key.

Two encodings. Keys that are all 16-byte digests (the default keys) are stored end to
end (``d16``): SQLite itself can cut such a blob into keys (``substr``), so merging it
into the index and looking a batch of keys up in the index run as one statement each,
with no Python per key. Any other keys (text keys of ``--key FIELD``, bytes of other
lengths) are stored with msgpack, which keeps text and bytes apart, and are handled a
key at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from ._base import Key

__all__ = ["DIGESTS", "MSGPACK", "digest_blob", "needle", "pack_keys", "unpack_keys"]

DIGESTS = "d16"
MSGPACK = "msgpack"
_SIZE = 16


def digest_blob(keys: Sequence[Key]) -> bytes | None:
    """The keys end to end if they are all 16-byte digests, else None."""
    try:
        blob = b"".join(keys)  # type: ignore[arg-type]
    except TypeError:  # text keys
        return None
    if len(blob) != _SIZE * len(keys) or (keys and min(map(len, keys)) != _SIZE):
        return None
    return blob


def pack_keys(keys: Sequence[Key], *, digests: bool = False) -> tuple[str, bytes]:
    """Keys as one blob of the log, and its encoding. ``digests``: the caller knows
    every key is a 16-byte digest (each checked when it was claimed)."""
    blob = b"".join(keys) if digests else digest_blob(keys)  # type: ignore[arg-type]
    if blob is not None:
        return DIGESTS, blob
    packed: bytes = msgpack.packb(keys, use_bin_type=True)
    return MSGPACK, packed


def unpack_keys(fmt: str, blob: bytes) -> list[Key]:
    """The keys of one blob of the log."""
    if fmt == DIGESTS:
        return [blob[i : i + _SIZE] for i in range(0, len(blob), _SIZE)]
    keys: list[Key] = msgpack.unpackb(blob, raw=False, use_list=True)
    return keys


def needle(key: Key) -> bytes:
    """Bytes that every blob holding ``key`` contains (bytes as they are, in either
    encoding; text as msgpack writes it), so a scan can find the candidate rows."""
    if isinstance(key, bytes):
        return key
    packed: bytes = msgpack.packb(key, use_bin_type=True)
    return packed
