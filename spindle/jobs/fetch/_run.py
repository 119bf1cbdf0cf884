"""A fetch run: its stages, its input of URLs, and what it writes.

``spindle fetch`` fetches every URL of a file politely on every core, one JSON line each.

::

    URLS ─▶ lines ─▶ fetch stage ─────▶ [parse stage] ─▶ OUTPUT
     (blank, # skipped)  workers routed     cpu workers      │
                         by host:port   (--parse-in pool)    └─▶ OUTPUT.failures.jsonl

Without ``--parse`` each output line is the fetch record (``url``, ``final_url``,
``status``, ``headers``, ``elapsed``, ``attempts``, and ``text`` or ``body_base64``,
or with ``--save-dir`` the file's ``path``, ``size`` and ``sha256``). With
``--parse`` the user's function gets a :class:`Response` and its return value goes
in the record's ``result`` in place of the body; a generator's values become a list,
so a URL is always one line. By default (``--parse-in fetch``) the function runs in
the fetch workers as each response arrives, as a crawler does: the body never leaves
the process that fetched it, which saves pickling it twice and is the fastest for a
parser of a few milliseconds; requests in flight in that process wait while it runs.
With ``--parse-in pool`` the fetch workers hand the metadata and the Response to a
second cpu stage of its own processes, which keeps fetching smooth under a heavy
parser at the cost of moving every body through the parent. Every URL ends as
exactly one record or one failure; a failed fetch's failure record carries the bare
reason as its ``message``.

Bodies can be large, so the parse stage takes small fixed batches and a buffer
sized from ``--concurrency``, and so is the output buffer: the bodies held at
once are a small multiple of ``--concurrency`` (each at most ``--max-bytes``),
whatever the number of URLs.

The engine pieces (the run loop with its signals and exit statuses, the record
writer, the input reader) come from :mod:`spindle.cli` and :mod:`spindle.connectors`;
``spindle.cli`` is imported when the command runs, since it imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..._core.stage import Stage, make_stage
from ..._errors import ConfigError
from ..._failure import Failure
from ..._loading import load_function
from ...connectors import (
    WRITTEN,
    AppendLines,
    OutputError,
    RecordWriter,
    Source,
    WriteFailed,
    encode_line,
)
from ...journal import RecordShape
from ._errors import FetchFailed
from ._options import FetchOptions
from ._response import Response
from ._stage import fetch_record, fetch_result, fetch_stage

__all__ = [
    "FETCH_SHAPE",
    "PARSE_BATCH",
    "FetchWriter",
    "ParseRecord",
    "UrlSource",
    "fetch_stages",
]

#: Responses per batch sent to a parse worker: bodies can be megabytes each.
PARSE_BATCH = 16


def fetch_stages(
    options: FetchOptions,
    workers: int | None,
    parse_spec: str | None,
    parse_in: str = "fetch",
    *,
    lines: bool = False,
    append_to: str | None = None,
) -> list[Stage]:
    """The stages of a fetch command; with ``lines`` the fetch workers give the
    records as encoded JSON lines (:class:`~spindle.connectors.JsonLine`), and with
    ``append_to`` they append those lines to that file themselves (:class:`AppendLines`)."""
    lines = lines or append_to is not None
    if parse_spec is None:
        job: Callable[[str], Any] = fetch_line if lines else fetch_record
        if append_to is not None:
            job = AppendLines(append_to, job)
        return [fetch_stage(options, workers=workers, job=job, name="fetch")]
    fn = load_function(parse_spec)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"--parse {parse_spec}: the function is 'async def'; a parse function is a "
            "plain function (def) that takes a Response, run in worker processes"
        )
    if parse_in == "fetch":
        job = functools.partial(fetch_and_parse, ParseRecord(fn), lines)
        if append_to is not None:
            job = AppendLines(append_to, job)
        return [fetch_stage(options, workers=workers, job=job, name="fetch")]
    parse = make_stage(
        ParseRecord(fn),
        "cpu",
        workers=workers,
        name=getattr(fn, "__name__", "parse"),
        batch_size=PARSE_BATCH,
        buffer=max(64, options.concurrency),
    )
    return [fetch_stage(options, workers=workers, job=fetch_for_parse, name="fetch"), parse]


class UrlSource(Source):
    """The URLs of a file of lines, stripped; blank lines and ``#`` comments skipped.
    A line that could not be read (not UTF-8) passes on as its Failure."""

    def __init__(self, lines: Source) -> None:
        self.lines = lines
        self.total = lines.total

    def count(self) -> int | None:
        """The lines of the file (blank ones and comments too: close enough for a bar)."""
        self.total = self.lines.count()
        return self.total

    def __next__(self) -> Any:
        for line in self.lines:
            if type(line) is Failure:
                return line
            url = line.strip().lstrip("\ufeff")
            if url and not url.startswith("#"):
                return url
        raise StopIteration

    def close(self) -> None:
        self.lines.close()


async def fetch_for_parse(url: str) -> tuple[dict[str, Any], Response]:
    """The fetch job with ``--parse``: the record without its body, and the Response."""
    result = await fetch_result(url)
    meta: dict[str, Any] = {
        "url": result.url,
        "final_url": result.final_url,
        "status": result.status,
        "headers": result.headers,
        "elapsed": result.elapsed,
        "attempts": result.attempts,
    }
    if result.saved:
        meta.update(path=result.path, size=result.size, sha256=result.sha256)
    return meta, result.response()


async def fetch_and_parse(parse: ParseRecord, lines: bool, url: str) -> Any:
    """The fetch job with ``--parse-in fetch``: fetch, then parse in this process
    (and with ``lines``, encode the record here too)."""
    record = parse(await fetch_for_parse(url))
    return encode_line(record) if lines else record


async def fetch_line(url: str) -> Any:
    """The fetch job of a command writing JSON lines: the record, encoded here."""
    return encode_line((await fetch_result(url)).to_record())


class ParseRecord:
    """Runs in a parse worker: the user's function on the Response, into the record."""

    def __init__(self, fn: Callable[[Response], Any]) -> None:
        self.fn = fn

    def __call__(self, fetched: tuple[dict[str, Any], Response]) -> dict[str, Any]:
        meta, response = fetched
        value = self.fn(response)
        if inspect.isgenerator(value):
            value = list(value)  # one line per URL: a generator's values stay together
        return {**meta, "result": value}


class FetchWriter(RecordWriter):
    """Writes each record as it is (it names its URL) and failures with their reason."""

    unwritable_hint = "the parse function must return str, numbers, lists, dicts or dataclasses"

    def record(self, item: Any, value: Any) -> Any:
        return value

    def failure(self, failure: Failure, item: Any) -> None:
        super().failure(_with_reason(failure, item), item)

    def results(self, inputs: list[Any], values: list[Any]) -> None:
        if values[-1] is WRITTEN and all(value is WRITTEN for value in values):
            self.written += len(values)  # appended by the workers
            return
        for item, value in zip(inputs, values, strict=True):
            self.result(item, value)

    def result(self, item: Any, value: Any) -> None:
        if value is WRITTEN:
            self.written += 1
        elif type(value) is WriteFailed:
            raise OutputError(value.message)
        else:
            super().result(item, value)


def _with_reason(failure: Failure, item: Any) -> Failure:
    """A failed fetch's message is ``"URL: reason"``; the record names the URL already."""
    if failure.error != "FetchFailed":
        return failure
    exc = failure.exception
    if isinstance(exc, FetchFailed):
        return dataclasses.replace(failure, message=exc.reason)
    prefix = f"{item}: "
    if failure.message.startswith(prefix):
        return dataclasses.replace(failure, message=failure.message[len(prefix) :])
    return failure


def _as_written(item: Any, value: Any) -> Any:
    return value


#: A fetch record is written as it is; a failure with its bare reason.
FETCH_SHAPE = RecordShape(_as_written, _with_reason)
