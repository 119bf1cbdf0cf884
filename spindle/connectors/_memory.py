"""In-memory source and sink: fakes for tests, and handy in a notebook."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from .._failure import Failure
from ._base import Sink, Source


class MemorySource(Source):
    """The items of an iterable, as a :class:`Source`.

    ``chunk`` makes it chunkable, a list of that many items at a time, as a file is.
    """

    def __init__(self, items: Iterable[Any], *, chunk: int | None = None) -> None:
        self._it = iter(items)
        self._chunk = chunk
        self.closed = False
        if isinstance(items, list | tuple | range):
            self.total = len(items)

    def __next__(self) -> Any:
        return next(self._it)

    def chunkable(self) -> bool:
        return self._chunk is not None

    def chunks(self, *, keep_bytes: bool = False) -> Iterator[list[Any]]:
        if self._chunk is None:
            yield from super().chunks(keep_bytes=keep_bytes)
            return
        while chunk := list(islice(self._it, self._chunk)):
            yield chunk

    def close(self) -> None:
        self.closed = True


class MemorySink(Sink):
    """Keeps ``(input, result)`` pairs in :attr:`results` and ``(input, Failure)`` pairs
    in :attr:`failures`, in the order they were written."""

    def __init__(self) -> None:
        self.results: list[tuple[Any, Any]] = []
        self.failures: list[tuple[Any, Failure]] = []
        self.closed = False

    def write(self, inputs: list[Any], values: list[Any]) -> None:
        if self.closed:
            raise RuntimeError("write() after close()")
        for item, value in zip(inputs, values, strict=True):
            if type(value) is Failure:
                self.failures.append((item, value))
                self.failed += 1
            else:
                self.results.append((item, value))
                self.written += 1

    def close(self) -> None:
        self.closed = True
