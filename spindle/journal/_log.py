"""How the journal's log stores a commit's keys: one blob per commit, not a row per key.

msgpack keeps text keys (``--key FIELD``) and bytes keys (digests) apart, so a key comes
back as what went in, and it packs and unpacks a list in compiled code.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from ._base import Key

__all__ = ["pack_keys", "unpack_keys"]


def pack_keys(keys: Sequence[Key]) -> bytes:
    """Keys as one blob of the log."""
    blob: bytes = msgpack.packb(keys, use_bin_type=True)
    return blob


def unpack_keys(blob: bytes) -> list[Key]:
    """The keys of one blob of the log."""
    keys: list[Key] = msgpack.unpackb(blob, raw=False, use_list=True)
    return keys
