"""The ``spindle`` command line."""

from __future__ import annotations

import importlib
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import IO, Any

import click

from ._core.pipeline import ChunkedSource, Pipeline, Results
from ._core.stage import KINDS, make_stage, parse_bytes
from ._errors import SpindleError
from ._failure import Failure
from ._journaled import check_journal_options, journal_options, open_map_journal, status_report
from ._loading import load_function
from ._records import Items, RecordWriter, read_items
from ._report import Observers, Summary, observe_options


class UsageProblem(click.ClickException):
    """A problem with the command's arguments or files: exit status 2."""

    exit_code = 2


class _Commands(click.Group):
    """The command group; a command whose module is heavy is imported when it runs.

    ``spindle fetch`` loads its HTTP client, TLS and URL modules, a few hundred
    milliseconds that ``spindle map`` and ``spindle status`` should not pay at every start.
    """

    LAZY = {"fetch": ("spindle.jobs.fetch._command", "fetch_command")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, name = self.LAZY[cmd_name]
            self.add_command(getattr(importlib.import_module(module), name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spindle")
def main() -> None:
    """Run big streams of jobs on every core: asyncio, threads and processes in one
    bounded pipeline."""


@main.command("map")
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
        if journal is None:
            writer = RecordWriter(output)
        else:
            journaled = open_map_journal(
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
        source.count_lines()
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
            code = _drive(pipeline, source, writer, view=view, total=source.total, grace=grace)
        else:
            code = journaled.run(
                pipeline, source, view=view, total=source.total, grace=grace, signals=_Signals
            )
    finally:
        source.close()
    sys.exit(code)


@main.command("status")
@click.argument("journal", metavar="JOURNAL")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, for scripts.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also draw throughput over run time to this file (.png, .svg; needs matplotlib).",
)
def status_command(journal: str, as_json: bool, plot: str | None) -> None:
    """Show what the journal of a `spindle map` or `spindle fetch` run with --journal
    records: items done, failed and pending, elapsed time, throughput, failures grouped
    by reason, and the last run's report (per-stage counts and latency percentiles,
    retries, restarts), also for a run that was killed."""
    try:
        click.echo(status_report(journal, as_json=as_json, plot=plot))
    except SpindleError as exc:
        raise UsageProblem(str(exc)) from None


class _Signals:
    """First SIGINT/SIGTERM: stop intake and drain; second: stop at once."""

    def __init__(self, results: Results, grace: float) -> None:
        self.results = results
        self.grace = grace
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self.results.stop_intake(self.grace)
        _echo_err(
            f"spindle: stopping: no new jobs; jobs in flight get {self.grace:g} s to finish "
            "(press Ctrl-C again to stop at once)"
        )

    @property
    def exit_status(self) -> int:
        return 143 if self.received == signal.SIGTERM else 130


def _drive(
    pipeline: Pipeline,
    source: Iterator[Any],
    writer: RecordWriter,
    *,
    view: Observers,
    total: int | None,
    grace: float,
) -> int:
    """Run the pipeline, write every record, show progress; return the exit status."""
    summary = Summary(time.monotonic())
    feed: Iterable[Any] = source
    if isinstance(source, Items) and source.chunkable():
        feed = ChunkedSource(source.chunks())  # a file: a block of lines at a time
    results = pipeline.run(feed, with_inputs=True, total=total, services=view.services())
    signals = _Signals(results, grace)
    stopped_at_once = False
    try:
        with signals, writer:
            for inputs, values in results.chunks_with_inputs():
                if Failure not in map(type, values):
                    writer.results(inputs, values)
                else:
                    for item, value in zip(inputs, values, strict=True):
                        if type(value) is Failure:
                            writer.failure(value, item)
                            summary.failed += 1
                        else:
                            writer.result(item, value)
                summary.done += len(values)
    except KeyboardInterrupt:
        stopped_at_once = True
    except SpindleError as exc:
        results.close()
        _echo_err(f"spindle: {exc}")
        return 2
    finally:
        results.close()
    interrupted = stopped_at_once or signals.received is not None
    summary.not_started = results.not_started
    view.finish(results.snapshot())
    _echo_err(summary.line(interrupted=interrupted))
    if interrupted:
        return signals.exit_status if signals.received is not None else 130
    return 1 if summary.failed else 0


def _echo_err(text: str, stream: IO[str] | None = None) -> None:
    click.echo(text, err=True)
