"""``spindle fetch``: every URL of a file fetched politely on every core, one JSON line each.

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
writer, the input reader) come from :mod:`spindle.cli` and :mod:`spindle._records`;
``spindle.cli`` is imported when the command runs, since it imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from spindle._core.pipeline import Pipeline
from spindle._core.stage import Stage, make_stage, parse_bytes
from spindle._errors import ConfigError, SpindleError
from spindle._failure import Failure
from spindle._journaled import (
    JournaledMap,
    RecordShape,
    check_journal_options,
    input_identity,
    journal_options,
    open_journal,
)
from spindle._keys import keys_for
from spindle._loading import load_function
from spindle._records import (
    WRITTEN,
    AppendLines,
    Items,
    OutputError,
    RecordWriter,
    WriteFailed,
    encode_line,
    read_items,
)
from spindle._report import Observers, observe_options

from ._errors import FetchFailed
from ._limits import raise_nofile_limit
from ._options import DEFAULT_USER_AGENT, FetchOptions
from ._response import Response
from ._stage import fetch_record, fetch_result, fetch_stage

#: Responses per batch sent to a parse worker: bodies can be megabytes each.
PARSE_BATCH = 16
_DEFAULTS = FetchOptions()


@click.command("fetch")
@click.argument("urls_path", metavar="URLS")
@click.option("-o", "--output", required=True, help="Output file (JSON lines), or - for stdout.")
@click.option(
    "--parse",
    "parse_spec",
    metavar="MODULE:FUNC",
    help="Call FUNC(response) in worker processes; its return value is the record's result.",
)
@click.option(
    "--parse-in",
    type=click.Choice(["fetch", "pool"]),
    help="Where --parse runs: in the fetch workers as responses arrive (the default; "
    "fastest for quick parsers), or in a separate pool of processes (for heavy parsers).",
)
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False),
    help="Save bodies as files in this directory; records get path, size and sha256.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Requests in flight at once, in all.",
)
@click.option(
    "--per-host",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Requests in flight at once to one host:port (halved after 429/503).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Requests per second to one host:port [no limit beyond robots.txt].",
)
@click.option(
    "--robots",
    type=click.Choice(["obey", "ignore"]),
    default="obey",
    show_default=True,
    help="Obey robots.txt (Disallow, Crawl-delay) or ignore it.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Retries after a connection error, a timeout, 429, 500, 502, 503 or 504.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds one request may take, from connect to the last byte.",
)
@click.option(
    "--max-bytes",
    metavar="SIZE",
    default="10MB",
    show_default=True,
    help="Largest body accepted, e.g. 500KB; a larger one fails its URL.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes that fetch (and that parse) [cores]; a host stays on one process.",
)
@click.option(
    "--user-agent", default=DEFAULT_USER_AGENT, help="User-Agent header, for robots.txt too."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds requests in flight get to finish after Ctrl-C or SIGTERM.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress display and no final report.")
@observe_options
@journal_options
def fetch_command(
    urls_path: str,
    output: str,
    parse_spec: str | None,
    parse_in: str | None,
    save_dir: str | None,
    concurrency: int,
    per_host: int,
    rate: float | None,
    robots: str,
    retries: int,
    timeout: float,
    max_bytes: str,
    workers: int | None,
    user_agent: str,
    grace: float,
    quiet: bool,
    stats_json: str | None,
    metrics_port: int | None,
    dashboard_port: int | None,
    dashboard_host: str,
    dashboard_token: str | None,
    journal: str | None,
    retry_failed: bool,
    force: bool,
    output_format: str | None,
) -> None:
    """Fetch every URL listed in URLS (a file, or - for stdin), one per line.

    Blank lines and lines starting with # are skipped. Each URL gives one JSON line
    in OUTPUT; a URL that cannot be fetched (invalid, refused, timed out after its
    retries, too large, disallowed by robots.txt) goes to OUTPUT.failures.jsonl with
    the reason and makes the exit status 1. Any HTTP answer, 404 included, is a
    record: check its status. The final report (and --stats-json, the metrics and
    the --dashboard) shows each host's requests, errors, mean latency and current
    limit. The first Ctrl-C (or SIGTERM) stops taking new URLs and lets requests in
    flight finish for --grace seconds; a second one stops at once.

    With --journal, each URL fetched (or failed) is recorded with its output: the
    same command run again, after a crash or a stop, fetches only the URLs not done
    yet, a URL listed twice is fetched once, and OUTPUT may be .jsonl, .csv, .sqlite
    or .parquet.
    """
    from spindle import cli  # here, not at the top: spindle.cli imports this module

    raise_nofile_limit()  # before workers start, so that they inherit it
    try:
        options = FetchOptions(
            concurrency=concurrency,
            per_host=per_host,
            rate=rate,
            robots=robots == "obey",
            user_agent=user_agent,
            retries=retries,
            connect_timeout=min(_DEFAULTS.connect_timeout, timeout),
            read_timeout=min(_DEFAULTS.read_timeout, timeout),
            total_timeout=timeout,
            max_bytes=_size(max_bytes),
            save_dir=_save_dir(save_dir),
        )
        check_journal_options(
            journal, retry_failed=retry_failed, force=force, output_format=output_format
        )
        if parse_in is not None and parse_spec is None:
            raise ConfigError(f"--parse-in {parse_in} needs --parse MODULE:FUNC")
        # Without a journal the output is JSON lines written as they come: the fetch
        # workers encode the records and, into a regular file, append them too.
        append_to = None
        if journal is None and _regular_file(output):
            append_to = os.path.abspath(output)
        stages = _stages(
            options,
            workers,
            parse_spec,
            parse_in or "fetch",
            lines=journal is None,
            append_to=append_to,
        )
        items = read_items(urls_path, "text")
        if journal is None:
            writer = FetchWriter(output)
        else:
            journaled = open_fetch_journal(
                journal=journal,
                output=output,
                urls_path=urls_path,
                parse_spec=parse_spec,
                retry_failed=retry_failed,
                force=force,
                output_format=output_format,
            )
    except SpindleError as exc:
        raise cli.UsageProblem(str(exc)) from None
    pipeline = Pipeline(stages, ordered=False, on_error="yield", buffer=max(64, 2 * concurrency))
    if not quiet and sys.stderr.isatty():
        items.count_lines()
    view = Observers(
        quiet=quiet,
        stats_json=stats_json,
        metrics_port=metrics_port,
        dashboard_port=dashboard_port,
        host=dashboard_host,
        token=dashboard_token,
    )
    try:
        if journal is None:
            code = cli._drive(
                pipeline, urls(items), writer, view=view, total=items.total, grace=grace
            )
        else:
            code = journaled.run(
                pipeline,
                urls(items),
                view=view,
                total=items.total,
                grace=grace,
                signals=cli._Signals,
            )
    finally:
        items.close()
    sys.exit(code)


def open_fetch_journal(
    *,
    journal: str,
    output: str,
    urls_path: str,
    parse_spec: str | None,
    retry_failed: bool,
    force: bool,
    output_format: str | None,
) -> JournaledMap:
    """The journal of a ``spindle fetch`` command: its URLs are keyed by their text.

    The journal is identified by the URL file and the parse function: other options
    (limits, timeouts) change how the URLs are fetched, not what a record holds.
    """
    fingerprint = f"fetch {input_identity(urls_path)}"
    if parse_spec:
        fingerprint += f" --parse {parse_spec}"
    opened = open_journal(
        journal,
        output,
        fingerprint,
        output_format=output_format,
        retry_failed=retry_failed,
        force=force,
    )
    text_key = keys_for(opened.key_scheme).text
    return JournaledMap(opened, text_key, text_key, FETCH_SHAPE)


def _regular_file(path: str) -> bool:
    """Whether OUTPUT is (or will be created as) a regular file."""
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # the writer reports it


def _size(text: str) -> int:
    size = parse_bytes(text)
    assert size is not None
    return size


def _save_dir(path: str | None) -> str | None:
    """Create the directory now, so that a bad one is a usage error, not N failures."""
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --save-dir {path!r}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to --save-dir {path!r}: permission denied")
    return path


def _stages(
    options: FetchOptions,
    workers: int | None,
    parse_spec: str | None,
    parse_in: str = "fetch",
    *,
    lines: bool = False,
    append_to: str | None = None,
) -> list[Stage]:
    """The stages of a fetch command; with ``lines`` the fetch workers give the
    records as encoded JSON lines (:class:`~spindle._records.JsonLine`), and with
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


def urls(items: Items) -> Iterator[Any]:
    """The URLs of the input, stripped; blank lines and ``#`` comments skipped.
    A line that could not be read (not UTF-8) passes on as its Failure."""
    for line in items:
        if type(line) is Failure:
            yield line
            continue
        url = line.strip().lstrip("\ufeff")
        if url and not url.startswith("#"):
            yield url


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
