"""Files of lines as a source: text or JSON lines, from a path or standard input.

A regular file is read a block of lines at a time (:meth:`Items.chunks`), parsed in one
pass when every line of the block is well formed; a pipe or a terminal is read line by
line, so that each line runs as soon as it arrives. A line that is not UTF-8, or not
JSON with ``--format jsonl``, becomes a :class:`~spindle.Failure` in its place
(``MalformedInput``): it fails alone and the run goes on.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Generator, Iterable, Iterator
from typing import IO, Any

import orjson

from .._failure import Failure
from ._base import Source
from ._errors import InputError


class Items(Source):
    """Records read lazily from a file or stdin; a bad line becomes a Failure."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.total: int | None = None
        if path == "-":
            self._file: IO[bytes] = sys.stdin.buffer
            self._owned = False
        else:
            try:
                self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise InputError(f"cannot read input {path!r}: {exc.strerror or exc}") from exc
            self._owned = True
        self._gen = self._read()

    def count(self) -> int | None:
        """Count the lines of a regular file quickly (for a progress bar's total)."""
        if not self._owned or not os.path.isfile(self.path):
            return None
        n = 0
        last = b"\n"
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
        self.total = n + (last != b"\n")
        return self.total

    def __next__(self) -> Any:
        return next(self._gen)

    def _read(self) -> Generator[Any, None, None]:
        for n, raw in enumerate(self._file, 1):
            yield from self._parse(raw, n)

    def _parse(self, raw: bytes, n: int) -> Iterator[Any]:
        """The record of line ``n``: nothing for a blank JSON line, a Failure if bad."""
        line = raw.rstrip(b"\r\n")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield _malformed(line.decode("utf-8", "replace"), n, f"not valid UTF-8 ({exc})")
            return
        if self.fmt != "jsonl":
            yield text
            return
        if not text.strip():
            return
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield _malformed(text, n, f"not valid JSON ({exc})")

    def chunkable(self) -> bool:
        """Whether :meth:`chunks` may be used: a regular file, which never blocks.

        A pipe or a terminal is read line by line instead, so that each line runs as
        soon as it arrives rather than when a block of them has filled.
        """
        try:
            return stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        except (OSError, ValueError, io.UnsupportedOperation):
            return False

    def chunks(self, *, keep_bytes: bool = False, size_hint: int = 1 << 16) -> Iterator[list[Any]]:
        """The records in lists, a block of lines at a time (see :meth:`chunkable`).

        A block whose lines are all well-formed is parsed in one pass, and comes as
        :class:`Lines` marked ``clean``; one with a bad line is parsed line by line, so
        that each bad line becomes its own Failure. With ``keep_bytes``, a clean block of
        text lines also carries their bytes (``Lines.raw``).
        """
        jsonl = self.fmt == "jsonl"
        n = 0
        while lines := self._file.readlines(size_hint):
            try:
                if not jsonl and keep_bytes:
                    stripped = [line.rstrip(b"\r\n") for line in lines]
                    block = Lines(map(bytes.decode, stripped))
                    block.clean, block.raw = True, stripped
                    n += len(lines)
                    yield block
                    continue
                texts = [line.rstrip(b"\r\n").decode("utf-8") for line in lines]
                if not jsonl:
                    n += len(lines)
                    yield texts
                    continue
                if "" not in texts:
                    values = Lines(map(orjson.loads, texts))
                    values.clean = True
                    n += len(lines)
                    yield values
                    continue
            except (UnicodeDecodeError, orjson.JSONDecodeError):
                pass
            chunk: list[Any] = []
            for raw in lines:
                n += 1
                chunk.extend(self._parse(raw, n))
            yield chunk

    def close(self) -> None:
        self._gen.close()
        if self._owned:
            self._file.close()


class Lines(list[Any]):
    """A block of records from :meth:`Items.chunks`.

    ``clean``: every line parsed (no Failure among them), so a consumer need not look.
    ``raw``: with ``chunks(keep_bytes=True)``, the bytes of each text line, which a keyer may
    digest as they are rather than encode each line back (the same bytes: the lines
    were decoded from valid UTF-8).
    """

    __slots__ = ("clean", "raw")

    def __init__(self, records: Iterable[Any] = ()) -> None:
        super().__init__(records)
        self.clean = False
        self.raw: list[bytes] | None = None


def _malformed(text: str, n: int, why: str) -> Failure:
    return Failure(text, "MalformedInput", f"line {n}: {why}", "", 0, "input")


def read_items(path: str, fmt: str) -> Items:
    return Items(path, fmt)
