"""Reading a response body within ``max_bytes``, into memory or into a file.

Bodies are read in chunks and counted as they arrive, so an oversized body is
refused after at most ``max_bytes`` plus one chunk, and a declared
``Content-Length`` over the limit is refused before any of the body is read.
Saved bodies go to a temporary file in the target directory, renamed into place
only when complete, so a file under its final name is always whole; the file
system calls run in a thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import PurePosixPath

from ._transport import TransportResponse, content_length

#: Bytes gathered before one write to disk: fewer thread hops, still a small buffer.
WRITE_BUFFER = 256 * 1024

#: Built-in types only: reading the system's mime.types would make file names
#: depend on the machine.
_MIME = mimetypes.MimeTypes()
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,8}")


class TooLarge(Exception):
    """The body exceeds ``max_bytes``; the message is the failure reason."""


@dataclass(frozen=True, slots=True)
class Saved:
    path: str
    size: int
    sha256: str


def check_length(response: TransportResponse, max_bytes: int) -> None:
    """Refuse a body whose declared length is over the limit, before reading it."""
    length = content_length(response.headers)
    if length is not None and length > max_bytes:
        raise TooLarge(f"too large: Content-Length {length} exceeds max_bytes {max_bytes}")


async def read_body(
    response: TransportResponse, max_bytes: int, *, truncate: bool = False
) -> bytes:
    """The whole body, or :class:`TooLarge` (or the first bytes, if ``truncate``)."""
    if not truncate:
        check_length(response, max_bytes)
    body = await response.read(max_bytes, truncate=truncate)
    if body is None:
        raise TooLarge(f"too large: more than max_bytes {max_bytes} bytes")
    return body


async def save_body(
    response: TransportResponse, max_bytes: int, directory: str, stem: str
) -> Saved:
    """Stream the body to ``directory/stem.ext``, hashing it on the way."""
    check_length(response, max_bytes)
    suffix = extension(response.headers.get("content-type"), response.url.path)
    final = os.path.join(directory, stem + suffix)
    spool = await asyncio.to_thread(_Spool, directory)
    committed = False
    try:
        digest = hashlib.sha256()
        size = 0
        pending = bytearray()
        async for chunk in response.chunks():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"too large: more than max_bytes {max_bytes} bytes")
            digest.update(chunk)
            pending += chunk
            if len(pending) >= WRITE_BUFFER:
                await asyncio.to_thread(spool.write, pending)
                pending.clear()
        await asyncio.to_thread(spool.commit, pending, final)
        committed = True
    finally:
        if not committed:
            spool.discard()
    return Saved(final, size, digest.hexdigest())


def extension(content_type: str | None, path: str) -> str:
    """A file suffix from the Content-Type, else from the URL path, else ``.bin``."""
    if content_type:
        mime = content_type.partition(";")[0].strip().lower()
        if mime and mime != "application/octet-stream":
            guessed = _MIME.guess_extension(mime, strict=False)
            if guessed:
                return guessed
    suffix = PurePosixPath(path).suffix
    if _EXTENSION.fullmatch(suffix):
        return suffix.lower()
    return ".bin"


class _Spool:
    """A temporary file beside its final name; blocking calls, run in a thread."""

    def __init__(self, directory: str) -> None:
        fd, self.temp = tempfile.mkstemp(dir=directory, prefix=".spindle-", suffix=".part")
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytearray) -> None:
        self.file.write(data)

    def commit(self, tail: bytearray, final: str) -> None:
        self.file.write(tail)
        self.file.close()
        os.replace(self.temp, final)

    def discard(self) -> None:
        # Synchronous on purpose: it also runs while the task is being cancelled.
        self.file.close()
        with suppress(FileNotFoundError):
            os.unlink(self.temp)
