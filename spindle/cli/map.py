"""``spindle map MODULE:FUNC INPUT -o OUTPUT``: a function applied to every line of a file."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import click

from .._api import Pipeline
from .._errors import ConfigError
from .._loading import load_function
from ..connectors import RecordWriter, read_items
from ..executors._batch import is_generator_fn
from ..journal import JournaledRun, KeyFunction, field_key, keys_for
from ._driver import JournalTarget, PlainTarget, Target
from ._options import (
    RunOptions,
    StageChoice,
    input_identity,
    run_options,
    stage_options,
    usage_errors,
)


@click.command("map")
@click.argument("function", metavar="MODULE:FUNC")
@click.argument("input_path", metavar="INPUT")
@stage_options
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
@run_options
@click.option(
    "--key",
    metavar="FIELD",
    help="With --journal and --format jsonl: items are identified by this field "
    "[a hash of the whole input].",
)
def map_command(
    function: str,
    input_path: str,
    stage: StageChoice,
    ordered: bool,
    fmt: str,
    run: RunOptions,
    key: str | None,
) -> None:
    """Apply MODULE:FUNC to every line of INPUT (a file, or - for stdin).

    MODULE is a module name or a path to a .py file. Each output line is a JSON
    object {"input": ..., "result": ...}; failures go to OUTPUT.failures.jsonl and
    make the exit status 1. The first Ctrl-C (or SIGTERM) stops reading input and
    lets jobs in flight finish for --grace seconds; a second one stops at once.
    """
    with usage_errors():
        run.check_journal(**{"--key": key is not None})
        fn = load_function(function)
        pipeline = Pipeline([stage.make(fn)], ordered=ordered, on_error="yield")
        source = read_items(input_path, fmt)
        target: Target
        if run.journal is None:
            target = PlainTarget(RecordWriter(run.output))
        else:
            target = open_map_journal(
                run, fn=fn, spec=function, input_path=input_path, fmt=fmt, key=key
            )
    run.run(pipeline, source, target)


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
    run: RunOptions,
    *,
    fn: Callable[..., Any],
    spec: str,
    input_path: str,
    fmt: str,
    key: str | None,
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
    opened = run.open_journal(map_fingerprint(fn, spec, input_path, fmt, key))
    keys = keys_for(opened.key_scheme)
    fallback: KeyFunction = keys.json if fmt == "jsonl" else keys.text
    key_fn = field_key(key) if key is not None else fallback
    return JournalTarget(JournaledRun(opened, key_fn, fallback))
