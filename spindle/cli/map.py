"""``spindle map MODULE:FUNC INPUT -o OUTPUT``: a function applied to every line of a file,
or to every message of a broker's stream.

INPUT is a file (or ``-``) or a broker's or database's URL (``redis://``, ``amqp://``,
``nats://``, ``postgresql://``); OUTPUT a file (or ``-``) or such a URL::

    file   ──▶ file                 PlainTarget (RecordWriter), or JournalTarget (--journal)
    file   ──▶ database, stream     PlainTarget with a keyed sink (each key once)
    broker ──▶ anything             StreamTarget: acknowledged once committed in the sink
    query  ──▶ file                 PlainTarget, or JournalTarget (--journal: resumes)
    query  ──▶ database, stream     PlainTarget with a keyed sink (keyed by the query's key)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import click

from .._api import Pipeline
from .._errors import ConfigError
from .._loading import load_function
from ..connectors import (
    AckSource,
    DurableLines,
    PostgresQuerySource,
    RecordWriter,
    Sink,
    Source,
    StreamRun,
    acknowledges,
    is_url,
    open_sink,
    open_source,
    read_items,
)
from ..executors._batch import is_generator_fn
from ..journal import JournaledRun, KeyFunction, field_key, keys_for
from ._driver import JournalTarget, PlainTarget, StreamTarget, Target
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
    default=None,
    help="text: each line (or message) is a string; jsonl: each is JSON "
    "[text for files, jsonl for brokers].",
)
@run_options
@click.option(
    "--key",
    metavar="FIELD",
    help="Identify items by this field of each JSON input (with --journal, or a database "
    "or broker) [a hash of the whole input; a message's id].",
)
@click.option(
    "--drain",
    is_flag=True,
    help="With a broker or queue-table INPUT: stop once it is empty and every result is "
    "durable and acknowledged [run until Ctrl-C].",
)
def map_command(
    function: str,
    input_path: str,
    stage: StageChoice,
    ordered: bool,
    fmt: str | None,
    run: RunOptions,
    key: str | None,
    drain: bool,
) -> None:
    """Apply MODULE:FUNC to every line of INPUT (a file, or - for stdin), or to every
    message of a broker (INPUT a redis://, amqp:// or nats:// URL), or to every row of a
    PostgreSQL query (postgresql://...?query=SQL&key=COLUMN, resumable with --journal)
    or queue table (postgresql://...?table=NAME).

    MODULE is a module name or a path to a .py file. Each output line is a JSON
    object {"input": ..., "result": ...}; failures go to OUTPUT.failures.jsonl and
    make the exit status 1. OUTPUT may also be a redis://, amqp://, nats:// or
    postgresql:// URL.
    The first Ctrl-C (or SIGTERM) stops reading input and lets jobs in flight finish
    for --grace seconds; a second one stops at once.
    """
    streams = is_url(input_path) or is_url(run.output)
    fmt = fmt or ("jsonl" if is_url(input_path) else "text")
    with usage_errors():
        if drain and not is_url(input_path):
            raise ConfigError(
                "--drain applies to a broker or queue-table INPUT (a URL), not a file"
            )
        if fmt != "jsonl" and (stage.dispatch or "").strip().startswith("key:"):
            raise ConfigError(
                f"--dispatch {stage.dispatch} routes JSON objects by a field: add --format jsonl"
            )
        if not streams:
            run.check_journal(**{"--key": key is not None})
        fn = load_function(function)
        pipeline = Pipeline([stage.make(fn)], ordered=ordered, on_error="yield")
        source: Source
        target: Target
        if streams:
            source, target = open_streams(run, fn, function, input_path, fmt, key, drain)
        else:
            source = read_items(input_path, fmt)
            if run.journal is None:
                target = PlainTarget(RecordWriter(run.output))
            else:
                target = open_map_journal(
                    run, fn=fn, spec=function, input_path=input_path, fmt=fmt, key=key
                )
    run.run(pipeline, source, target)


def open_streams(
    run: RunOptions,
    fn: Callable[..., Any],
    spec: str,
    input_path: str,
    fmt: str,
    key: str | None,
    drain: bool,
) -> tuple[Source, Target]:
    """The source and the target of a run with a broker or a database on either side.

    A broker's messages go through a :class:`StreamTarget`: acknowledged once their
    results are committed in the sink (a database, a stream, or a file synced at each
    commit). A file into a database or a stream is a plain run whose sink keys each
    record. Raises ``SpindleError`` (the command exits with status 2) on any problem.
    """
    if is_url(input_path) and not acknowledges(input_path):
        return open_query(run, fn, spec, input_path, fmt, key, drain)
    if run.journal is not None:
        raise ConfigError(
            "--journal records runs over files; with a broker or a database the sink's "
            "own keys make each record once, and a broker redelivers what was not "
            "acknowledged: leave out --journal"
        )
    run.check_journal()
    if is_generator_fn(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"{spec} is a generator function (several results per input), but a broker's "
            "message or a database's key takes one result: return a list instead"
        )
    if key is not None and fmt != "jsonl":
        raise ConfigError(f"--key {key} takes a field of each JSON input: add --format jsonl")
    if not is_url(input_path):
        sink = open_sink(run.output, key=key)
        try:
            return read_items(input_path, fmt), PlainTarget(sink)
        except BaseException:
            sink.close()
            raise
    source = open_source(input_path, fmt=fmt, key=key, drain=drain)
    assert isinstance(source, AckSource)  # acknowledges(input_path)
    try:
        out: Sink = open_sink(run.output) if is_url(run.output) else DurableLines(run.output)
    except BaseException:
        source.close()
        raise
    return source, StreamTarget(StreamRun(source, out))


def open_query(
    run: RunOptions,
    fn: Callable[..., Any],
    spec: str,
    input_path: str,
    fmt: str,
    key: str | None,
    drain: bool,
) -> tuple[Source, Target]:
    """The source and the target of a run over a database query, its rows read once in
    key order: into a file, resumable with ``--journal`` (which keys each row by the
    query's key column, and from which the source learns where to start again), or into
    a database or a stream, each record keyed by that column."""
    run.check_journal()
    if drain:
        raise ConfigError(
            "--drain applies to a broker or a queue table; a query ends by itself: leave it out"
        )
    if fmt != "jsonl":
        raise ConfigError("a query's rows are JSON objects: leave out --format text")
    if is_url(run.output):
        if run.journal is not None:
            raise ConfigError(
                "--journal records runs into files; into a database or a stream the sink's "
                "own keys make each record once: leave out --journal"
            )
        if is_generator_fn(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigError(
                f"{spec} is a generator function (several results per input), but a "
                "database's key takes one result: return a list instead"
            )
    source = open_source(input_path)
    assert isinstance(source, PostgresQuerySource)  # not acknowledges(input_path)
    try:
        record_key = key or source.key
        target: Target
        if run.journal is not None:
            journaled = open_map_journal(
                run, fn=fn, spec=spec, input_path=source.name, fmt=fmt, key=record_key
            )
            if record_key == source.key:  # start after the rows the journal has done
                journal, key_of = journaled.run.journal, journaled.run.key
                source.skip_done(lambda rows: journal.filter_new([key_of(r) for r in rows]))
            target = journaled
        elif is_url(run.output):
            target = PlainTarget(open_sink(run.output, key=record_key))
        else:
            target = PlainTarget(RecordWriter(run.output))
    except BaseException:
        source.close()
        raise
    return source, target


def map_fingerprint(
    fn: Callable[..., Any], spec: str, input_path: str, fmt: str, key: str | None
) -> str:
    """What ``spindle map`` identifies a journal by: function, input (a file's absolute
    path, or a URL without its password: a query's text in it), input format, key."""
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None)
    function = f"{module}:{name}" if module and name else spec
    source = input_path if is_url(input_path) else input_identity(input_path)
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
