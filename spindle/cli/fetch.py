"""``spindle fetch URLS -o OUTPUT``: every URL of a file fetched politely on every core.

The fetch run's pieces (its stages, the input of URLs, the records it writes) are
:mod:`spindle.jobs.fetch`'s; this module turns the command's options into them and hands
them to the driver that every command shares.
"""

from __future__ import annotations

import os
import stat

import click

from .._api import Pipeline
from .._core.stage import parse_bytes
from .._errors import ConfigError
from ..connectors import read_items
from ..jobs.fetch._limits import raise_nofile_limit
from ..jobs.fetch._options import DEFAULT_USER_AGENT, FetchOptions
from ..jobs.fetch._run import FETCH_SHAPE, FetchWriter, UrlSource, fetch_stages
from ..journal import JournaledRun, keys_for
from ._driver import JournalTarget, PlainTarget, Target
from ._options import (
    BackendChoice,
    RunOptions,
    backend_options,
    input_identity,
    option,
    run_options,
    usage_errors,
)

_DEFAULTS = FetchOptions()


@click.command("fetch")
@click.argument("urls_path", metavar="URLS")
@click.option(
    "--parse",
    "parse_spec",
    metavar="MODULE:FUNC",
    help="Call FUNC(response) in worker processes; its return value is the record's result.",
)
@option(
    "--parse-in",
    click.Choice(["fetch", "pool"]),
    help="Where --parse runs: in the fetch workers as responses arrive (the default; "
    "fastest for quick parsers), or in a separate pool of processes (for heavy parsers).",
)
@option(
    "--save-dir",
    click.Path(file_okay=False),
    help="Save bodies as files in this directory; records get path, size and sha256.",
)
@option("--concurrency", click.IntRange(min=1), 100, "Requests in flight at once, in all.")
@option(
    "--per-host",
    click.IntRange(min=1),
    8,
    "Requests in flight at once to one host:port (halved after 429/503).",
)
@option(
    "--rate",
    click.FloatRange(min=0, min_open=True),
    help="Requests per second to one host:port [no limit beyond robots.txt].",
)
@option(
    "--robots",
    click.Choice(["obey", "ignore"]),
    "obey",
    "Obey robots.txt (Disallow, Crawl-delay) or ignore it.",
)
@option(
    "--retries",
    click.IntRange(min=0),
    3,
    "Retries after a connection error, a timeout, 429, 500, 502, 503 or 504.",
)
@option(
    "--timeout",
    click.FloatRange(min=0, min_open=True),
    120.0,
    "Seconds one request may take, from connect to the last byte.",
)
@option(
    "--max-bytes",
    default="10MB",
    help="Largest body accepted, e.g. 500KB; a larger one fails its URL.",
    metavar="SIZE",
)
@option(
    "--workers",
    click.IntRange(min=1),
    help="Processes that fetch (and that parse) [cores]; a host stays on one process.",
)
@option("--user-agent", default=DEFAULT_USER_AGENT, help="User-Agent header, for robots.txt too.")
@backend_options
@run_options
def fetch_command(
    urls_path: str,
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
    backend: BackendChoice,
    run: RunOptions,
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
    raise_nofile_limit()  # before workers start, so that they inherit it
    with usage_errors():
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
        run.check_journal()
        if parse_in is not None and parse_spec is None:
            raise ConfigError(f"--parse-in {parse_in} needs --parse MODULE:FUNC")
        # Without a journal the output is JSON lines written as they come: the fetch
        # workers encode the records and, into a regular file, append them too.
        append_to = None
        # On Ray the workers may be on other machines: records come back to this one.
        if run.journal is None and backend.backend == "local" and _regular_file(run.output):
            append_to = os.path.abspath(run.output)
        stages = fetch_stages(
            options,
            workers,
            parse_spec,
            parse_in or "fetch",
            lines=run.journal is None,
            append_to=append_to,
        )
        stages = backend.apply(stages)
        source = UrlSource(read_items(urls_path, "text"))
        target: Target
        if run.journal is None:
            target = PlainTarget(FetchWriter(run.output))
        else:
            target = open_fetch_journal(run, urls_path=urls_path, parse_spec=parse_spec)
    pipeline = Pipeline(stages, ordered=False, on_error="yield", buffer=max(64, 2 * concurrency))
    run.run(pipeline, source, target)


def open_fetch_journal(run: RunOptions, *, urls_path: str, parse_spec: str | None) -> JournalTarget:
    """The journal of a ``spindle fetch`` command: its URLs are keyed by their text.

    The journal is identified by the URL file and the parse function: other options
    (limits, timeouts) change how the URLs are fetched, not what a record holds.
    """
    fingerprint = f"fetch {input_identity(urls_path)}"
    if parse_spec:
        fingerprint += f" --parse {parse_spec}"
    opened = run.open_journal(fingerprint)
    text_key = keys_for(opened.key_scheme).text
    return JournalTarget(JournaledRun(opened, text_key, text_key, shape=FETCH_SHAPE))


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
