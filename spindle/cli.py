"""The ``spindle`` command line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import click

from ._core.pipeline import Pipeline
from ._core.stage import KINDS, make_stage
from ._errors import SpindleError
from ._failure import Failure
from ._loading import load_function
from ._records import RecordWriter, read_items
from ._report import Progress, Summary


class UsageProblem(click.ClickException):
    """A problem with the command's arguments or files: exit status 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
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
    quiet: bool,
) -> None:
    """Apply MODULE:FUNC to every line of INPUT (a file, or - for stdin).

    MODULE is a module name or a path to a .py file. Each output line is a JSON
    object {"input": ..., "result": ...}; failures go to OUTPUT.failures.jsonl and
    make the exit status 1.
    """
    try:
        fn = load_function(function)
        stage = make_stage(
            fn, kind, workers=workers, concurrency=concurrency, batch_size=batch_size
        )
        source = read_items(input_path, fmt)
        writer = RecordWriter(output)
    except SpindleError as exc:
        raise UsageProblem(str(exc)) from None
    pipeline = Pipeline([stage], ordered=ordered, on_error="yield")
    code = _drive(pipeline, source, writer, quiet=quiet, total=source.total)
    sys.exit(code)


def _drive(
    pipeline: Pipeline,
    source: Iterator[Any],
    writer: RecordWriter,
    *,
    quiet: bool,
    total: int | None,
) -> int:
    """Run the pipeline, write every record, show progress; return the exit status."""
    summary = Summary(time.monotonic())
    results = pipeline.run(source, with_inputs=True)
    progress = Progress(results.stats, total=total, enabled=not quiet)
    interrupted = False
    try:
        with progress, writer:
            for item, value in results:
                if type(value) is Failure:
                    writer.failure(value, item)
                    summary.failed += 1
                else:
                    writer.result(item, value)
                summary.done += 1
                if not summary.done & 1023:
                    progress.tick()
    except KeyboardInterrupt:
        interrupted = True
    except SpindleError as exc:
        results.close()
        _echo_err(f"spindle: {exc}")
        return 2
    finally:
        results.close()
    _echo_err(summary.line(interrupted=interrupted))
    if interrupted:
        return 130
    return 1 if summary.failed else 0


def _echo_err(text: str, stream: IO[str] | None = None) -> None:
    click.echo(text, err=True)
