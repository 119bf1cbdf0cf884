"""``spindle map MODULE:FUNC INPUT -o OUTPUT``: a function applied to every line of a file."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import click

from .._api import Pipeline
from .._core.stage import KINDS, make_stage, parse_bytes
from .._errors import ConfigError, SpindleError
from .._loading import load_function
from ..connectors import RecordWriter, read_items
from ..executors._batch import is_generator_fn
from ..journal import JournaledRun, KeyFunction, field_key, keys_for, open_journal
from ._driver import JournalTarget, PlainTarget, Target, drive
from ._observers import Observers, observe_options
from ._options import check_journal_options, input_identity, journal_options
from ._usage import UsageProblem


@click.command("map")
@click.argument("function", metavar="MODULE:FUNC")
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", required=True, help="Output file (JSON lines), or - for stdout.")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="cpu",
    show_default=True,
    help="cpu: processes; thread: a thread pool; io: an event loop (async def).",
)
@click.option("--workers", type=click.IntRange(min=1), help="Processes or threads [cores].")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Calls in flight at once for async functions [100].",
)
@click.option(
    "--ordered/--unordered", default=True, show_default=True, help="Keep output in input order."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="text: each line is a string; jsonl: each line is JSON.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Items per batch sent to a process [adaptive]."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a job may run before it fails with Timeout (or is retried).",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Retries of a failed job, with exponential backoff and jitter.",
)
@click.option(
    "--max-jobs-per-worker",
    type=click.IntRange(min=1),
    help="Replace a worker process after this many jobs (cpu).",
)
@click.option(
    "--max-memory-per-worker",
    metavar="SIZE",
    help="Replace a worker process whose memory exceeds SIZE, e.g. 512MB (cpu).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds jobs in flight get to finish after Ctrl-C or SIGTERM.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress display and no final report.")
@observe_options
@journal_options
@click.option(
    "--key",
    metavar="FIELD",
    help="With --journal and --format jsonl: items are identified by this field "
    "[a hash of the whole input].",
)
def map_command(
    function: str,
    input_path: str,
    output: str,
    kind: str,
    workers: int | None,
    concurrency: int | None,
    ordered: bool,
    fmt: str,
    batch_size: int | None,
    timeout: float | None,
    retries: int,
    max_jobs_per_worker: int | None,
    max_memory_per_worker: str | None,
    grace: float,
    quiet: bool,
    stats_json: str | None,
    metrics_port: int | None,
    dashboard_port: int | None,
    dashboard_host: str,
    dashboard_token: str | None,
    journal: str | None,
    key: str | None,
    retry_failed: bool,
    force: bool,
    output_format: str | None,
) -> None:
    """Apply MODULE:FUNC to every line of INPUT (a file, or - for stdin).

    MODULE is a module name or a path to a .py file. Each output line is a JSON
    object {"input": ..., "result": ...}; failures go to OUTPUT.failures.jsonl and
    make the exit status 1. The first Ctrl-C (or SIGTERM) stops reading input and
    lets jobs in flight finish for --grace seconds; a second one stops at once.
    """
    try:
        check_journal_options(
            journal, key=key, retry_failed=retry_failed, force=force, output_format=output_format
        )
        fn = load_function(function)
        stage = make_stage(
            fn,
            kind,
            workers=workers,
            concurrency=concurrency,
            batch_size=batch_size,
            timeout=timeout,
            retries=retries,
            max_jobs_per_worker=max_jobs_per_worker,
            max_memory_per_worker=parse_bytes(max_memory_per_worker),
        )
        source = read_items(input_path, fmt)
        target: Target
        if journal is None:
            target = PlainTarget(RecordWriter(output))
        else:
            target = open_map_journal(
                journal=journal,
                output=output,
                fn=fn,
                spec=function,
                input_path=input_path,
                fmt=fmt,
                key=key,
                retry_failed=retry_failed,
                force=force,
                output_format=output_format,
            )
    except SpindleError as exc:
        raise UsageProblem(str(exc)) from None
    pipeline = Pipeline([stage], ordered=ordered, on_error="yield")
    if not quiet and sys.stderr.isatty():
        source.count()
    view = Observers(
        quiet=quiet,
        stats_json=stats_json,
        metrics_port=metrics_port,
        dashboard_port=dashboard_port,
        host=dashboard_host,
        token=dashboard_token,
    )
    with source:
        code = drive(pipeline, source, target, view=view, grace=grace)
    sys.exit(code)


def map_fingerprint(
    fn: Callable[..., Any], spec: str, input_path: str, fmt: str, key: str | None
) -> str:
    """What ``spindle map`` identifies a journal by: function, input, input format, key."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    function = f"{module}:{name}" if module and name else spec
    source = input_identity(input_path)
    text = f"map {function} {source} --format {fmt}"
    return text + (f" --key {key}" if key is not None else "")


def open_map_journal(
    *,
    journal: str,
    output: str,
    fn: Callable[..., Any],
    spec: str,
    input_path: str,
    fmt: str,
    key: str | None,
    retry_failed: bool,
    force: bool,
    output_format: str | None,
) -> JournalTarget:
    """Open the journal of a ``spindle map`` command: raises ``SpindleError`` on any
    problem with its paths or options (the command exits with status 2)."""
    if is_generator_fn(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"{spec} is a generator function (several results per input), but a journaled "
            "run records one result per input: return a list instead"
        )
    if key is not None and fmt != "jsonl":
        raise ConfigError(
            f"--key {key} takes a field of each JSON object: add --format jsonl "
            "(text lines are keyed by their content)"
        )
    opened = open_journal(
        journal,
        output,
        map_fingerprint(fn, spec, input_path, fmt, key),
        output_format=output_format,
        retry_failed=retry_failed,
        force=force,
    )
    keys = keys_for(opened.key_scheme)
    fallback: KeyFunction = keys.json if fmt == "jsonl" else keys.text
    key_fn = field_key(key) if key is not None else fallback
    return JournalTarget(JournaledRun(opened, key_fn, fallback))
