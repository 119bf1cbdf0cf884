"""The options every command that runs a pipeline shares, gathered into one object.

``spindle map``, ``spindle fetch`` and the commands to come take the same ``-o``,
``--grace``, ``--quiet``, observers' options (``--stats-json``, ``--metrics-port``,
``--dashboard``...) and journal options (``--journal``, ``--retry-failed``, ``--force``,
``--output-format``). :func:`run_options` adds them to a command and hands the command
one :class:`RunOptions` instead of a dozen arguments; :meth:`RunOptions.run` then
shows, runs and ends the command the same way for all (see :mod:`._driver`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .._core.pipeline import Pipeline
from .._core.stage import BACKENDS, KINDS, Stage, make_stage, on_backend, parse_bytes
from .._errors import SpindleError
from ..connectors import Source
from ..journal import SqliteJournal, open_journal
from ..journal._driver import refuse_without_journal
from ._driver import Target, drive
from ._observers import Observers
from ._usage import UsageProblem

_F = TypeVar("_F", bound=Callable[..., Any])


def option(
    flag: str, kind: Any = None, default: Any = None, help: str = "", **more: Any
) -> Callable[[_F], _F]:
    """``click.option(flag, type=kind, default=default, help=help)``, with the default
    shown in ``--help`` whenever there is one: the commands' options, one line each."""
    return click.option(
        flag, type=kind, default=default, show_default=default is not None, help=help, **more
    )


def dashboard_option(help: str) -> Callable[[_F], _F]:
    """``--dashboard [PORT]``: a flag that may take a port (a free one when it does not)."""
    return click.option(
        "--dashboard",
        "dashboard_port",
        type=click.IntRange(0, 65535),
        is_flag=False,
        flag_value=0,
        default=None,
        metavar="[PORT]",
        help=help,
    )


_OPTIONS = [
    click.option(
        "-o",
        "--output",
        required=True,
        help="Output file (JSON lines), - for stdout, or a redis://, amqp://, nats:// or "
        "postgresql:// URL.",
    ),
    option(
        "--grace",
        click.FloatRange(min=0),
        5.0,
        "Seconds jobs in flight get to finish after Ctrl-C or SIGTERM.",
    ),
    click.option("-q", "--quiet", is_flag=True, help="No progress display and no final report."),
    option(
        "--stats-json",
        click.Path(dir_okay=False, writable=True),
        help="Write the final report as JSON to this file.",
    ),
    option(
        "--metrics-port",
        click.IntRange(0, 65535),
        help="Serve Prometheus metrics on this port (127.0.0.1) during the run.",
    ),
    dashboard_option("Serve a live dashboard (on PORT, or a free port) during the run."),
    option(
        "--dashboard-host",
        default="127.0.0.1",
        help="Address the dashboard and metrics bind to; beyond loopback needs a token.",
    ),
    click.option(
        "--dashboard-token",
        envvar="SPINDLE_DASHBOARD_TOKEN",
        help="Token required on every dashboard/metrics request.",
    ),
    click.option(
        "--journal",
        metavar="PATH",
        help="Record which items are done in this file; the same command run again resumes.",
    ),
    click.option(
        "--retry-failed",
        is_flag=True,
        help="With --journal: run the items that failed before again.",
    ),
    click.option(
        "--force",
        is_flag=True,
        help="With --journal: discard the journal's items and its outputs, and start over.",
    ),
    option(
        "--output-format",
        click.Choice(["jsonl", "csv", "sqlite", "parquet"]),
        help="With --journal: the format of OUTPUT [from its extension].",
    ),
]


@dataclass(frozen=True)
class RunOptions:
    """What the shared options said (see :func:`run_options`)."""

    output: str
    grace: float
    quiet: bool
    stats_json: str | None
    metrics_port: int | None
    dashboard_port: int | None
    dashboard_host: str
    dashboard_token: str | None
    journal: str | None
    retry_failed: bool
    force: bool
    output_format: str | None

    def check_journal(self, **more: bool) -> None:
        """The journal's options, and the command's own in ``more`` (given or not),
        make sense only with ``--journal``."""
        if self.journal is None:
            refuse_without_journal(
                [
                    *more.items(),
                    ("--retry-failed", self.retry_failed),
                    ("--force", self.force),
                    ("--output-format", self.output_format is not None),
                ],
                "--journal PATH (a file that records which items are done, so that "
                "rerunning the command resumes)",
            )

    def open_journal(self, fingerprint: str) -> SqliteJournal:
        """The command's journal (``--journal``), with its output and failures file."""
        assert self.journal is not None
        return open_journal(
            self.journal,
            self.output,
            fingerprint,
            output_format=self.output_format,
            retry_failed=self.retry_failed,
            force=self.force,
        )

    def run(self, pipeline: Pipeline, source: Source, target: Target) -> NoReturn:
        """Run the command's pipeline with the shared driver, and exit with its status."""
        if not self.quiet and sys.stderr.isatty():
            source.count()  # a progress bar's total
        view = Observers(
            quiet=self.quiet,
            stats_json=self.stats_json,
            metrics_port=self.metrics_port,
            dashboard_port=self.dashboard_port,
            host=self.dashboard_host,
            token=self.dashboard_token,
        )
        with source:
            code = drive(pipeline, source, target, view=view, grace=self.grace)
        sys.exit(code)


_BACKEND_OPTIONS = [
    option(
        "--backend",
        click.Choice(BACKENDS),
        "local",
        "local: this machine; ray: actors of a Ray cluster (pip install 'spindle[ray]').",
    ),
    option(
        "--ray-address",
        metavar="ADDR",
        help="With --backend ray: the cluster to join (auto, HOST:PORT, ray://HOST:PORT) "
        "[a local Ray started for the run].",
    ),
]


@dataclass(frozen=True)
class BackendChoice:
    """Where the stages run, as ``--backend`` and ``--ray-address`` said."""

    backend: str
    ray_address: str | None

    def apply(self, stages: list[Stage]) -> list[Stage]:
        """``stages`` moved to the chosen backend; a ``SpindleError`` says what is wrong."""
        if self.ray_address is not None and self.backend != "ray":
            raise UsageProblem("--ray-address names the cluster of --backend ray: add it")
        return [on_backend(s, self.backend, self.ray_address) for s in stages]


_STAGE_OPTIONS = [
    option(
        "--kind",
        click.Choice(KINDS),
        "cpu",
        "cpu: processes; thread: a thread pool; io: an event loop (async def).",
    ),
    option("--workers", click.IntRange(min=1), help="Processes or threads [cores]."),
    option(
        "--concurrency",
        click.IntRange(min=1),
        help="Calls in flight at once for async functions [100].",
    ),
    option(
        "--batch-size",
        click.IntRange(min=1),
        help="Items per batch sent to a process [adaptive].",
    ),
    option(
        "--timeout",
        click.FloatRange(min=0, min_open=True),
        help="Seconds a job may run before it fails with Timeout (or is retried).",
    ),
    option(
        "--retries",
        click.IntRange(min=0),
        0,
        "Retries of a failed job, with exponential backoff and jitter.",
    ),
    option(
        "--max-jobs-per-worker",
        click.IntRange(min=1),
        help="Replace a worker process after this many jobs (cpu).",
    ),
    option(
        "--max-memory-per-worker",
        metavar="SIZE",
        help="Replace a worker process whose memory exceeds SIZE, e.g. 512MB (cpu).",
    ),
    option(
        "--dispatch",
        metavar="POLICY",
        help="Which worker process gets each batch (cpu): least-loaded (fewest batches "
        "pending), round-robin (in turn), weighted:W1,W2,... (in proportion, one weight "
        "per worker), or key:FIELD (one worker per value of FIELD of JSON inputs) "
        "[least-loaded].",
    ),
    *_BACKEND_OPTIONS,
]


@dataclass(frozen=True)
class StageChoice:
    """How the user's function runs, as the stage options said (see :func:`stage_options`)."""

    kind: str
    workers: int | None
    concurrency: int | None
    batch_size: int | None
    timeout: float | None
    retries: int
    max_jobs_per_worker: int | None
    max_memory_per_worker: str | None
    dispatch: str | None
    backend: str
    ray_address: str | None

    def make(self, fn: Callable[[Any], Any]) -> Stage:
        """The stage running ``fn``; a ``SpindleError`` says what is wrong."""
        if self.ray_address is not None and self.backend != "ray":
            raise UsageProblem("--ray-address names the cluster of --backend ray: add it")
        return make_stage(
            fn,
            self.kind,
            workers=self.workers,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            timeout=self.timeout,
            retries=self.retries,
            max_jobs_per_worker=self.max_jobs_per_worker,
            max_memory_per_worker=parse_bytes(self.max_memory_per_worker),
            dispatch=self.dispatch,
            backend=self.backend,
            ray_address=self.ray_address,
        )


def _bundle(options: list[Any], cls: type[Any], name: str) -> Callable[[_F], _F]:
    """A decorator adding ``options`` to a command, which gets them as one ``cls``
    under the argument ``name``."""
    names = tuple(f.name for f in fields(cls))

    def decorate(command: _F) -> _F:
        @functools.wraps(command)
        def with_options(**kwargs: Any) -> Any:
            kwargs[name] = cls(**{n: kwargs.pop(n) for n in names})
            return command(**kwargs)

        for option in reversed(options):
            with_options = option(with_options)
        return with_options  # type: ignore[return-value]

    return decorate


#: Adds the options every command that runs a pipeline takes; the command gets them as
#: ``run``, one :class:`RunOptions`.
run_options = _bundle(_OPTIONS, RunOptions, "run")
#: Adds the options that say how the user's function runs (kind, workers, timeout...);
#: the command gets them as ``stage``, one :class:`StageChoice`.
stage_options = _bundle(_STAGE_OPTIONS, StageChoice, "stage")
#: Adds ``--backend`` and ``--ray-address`` alone (for commands that make their own
#: stages); the command gets them as ``backend``, one :class:`BackendChoice`.
backend_options = _bundle(_BACKEND_OPTIONS, BackendChoice, "backend")


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A problem with the arguments or files is one line and the exit status 2."""
    try:
        yield
    except SpindleError as exc:
        raise UsageProblem(str(exc)) from None


def input_identity(path: str) -> str:
    """How a journal's fingerprint names its input: the absolute path, or ``-``."""
    return "-" if path == "-" else str(Path(path).absolute())
