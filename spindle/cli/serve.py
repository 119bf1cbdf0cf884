"""``spindle serve MODULE:FUNC``: the function behind an HTTP API, on every core.

The stage options are those of ``spindle map`` (``--kind``, ``--workers``, ``--timeout``,
``--retries``...); the server's own say where it listens and how much it takes (see
:class:`spindle.serve.Server`). The command runs until SIGTERM or Ctrl-C, then stops
gracefully and exits 0.
"""

from __future__ import annotations

import sys

import click

from .._core.pipeline import Pipeline
from .._core.stage import Stage, parse_bytes
from .._errors import ConfigError, SpindleError
from .._loading import load_function
from ..serve import Server
from ._options import StageChoice, dashboard_option, option, stage_options, usage_errors


@click.command("serve")
@click.argument("function", metavar="MODULE:FUNC")
@stage_options
@option("--host", default="127.0.0.1", help="Address to listen on; beyond loopback needs --token.")
@option("--port", click.IntRange(0, 65535), 8000, "Port to listen on (0: a free one).")
@click.option(
    "--token",
    envvar="SPINDLE_SERVE_TOKEN",
    help="Token every request must carry (Authorization: Bearer TOKEN) [$SPINDLE_SERVE_TOKEN].",
)
@option(
    "--max-queue",
    click.IntRange(min=1),
    10_000,
    "Jobs accepted and not finished, at most; past it requests get 429 with Retry-After.",
)
@option("--max-body", default="16MB", help="Largest request body (then 413), e.g. 1MB.")
@option(
    "--grace",
    click.FloatRange(min=0),
    5.0,
    "Seconds jobs in flight get to finish after SIGTERM or Ctrl-C.",
)
@click.option(
    "--journal",
    metavar="PATH",
    help="Make each job accepted by POST /jobs durable before its 202, and answer it "
    "after a crash and restart with the same file.",
)
@dashboard_option("Serve a live dashboard (on PORT, or a free port).")
@option(
    "--metrics-port",
    click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port too (/metrics is on --port already).",
)
def serve_command(
    function: str,
    stage: StageChoice,
    host: str,
    port: int,
    token: str | None,
    max_queue: int,
    max_body: str,
    grace: float,
    journal: str | None,
    dashboard_port: int | None,
    metrics_port: int | None,
) -> None:
    """Serve MODULE:FUNC over HTTP: POST /run (one JSON item, or NDJSON) answers with
    the result; POST /jobs answers 202 with an id at once, and GET /jobs/ID gives the
    state and the result. Also GET /healthz, /stats and /metrics.

    SIGTERM or Ctrl-C stops taking new jobs (503), lets jobs in flight finish for
    --grace seconds, then exits 0; a second Ctrl-C stops at once.
    """
    with usage_errors():
        fn = load_function(function)
        made = stage.make(fn)
        server = Server(
            Pipeline([made]),
            host=host,
            port=port,
            token=token,
            max_queue=max_queue,
            max_body=_size(max_body),
            grace=grace,
            journal=journal,
            dashboard_port=dashboard_port,
            metrics_port=metrics_port,
        )

    def ready(s: Server) -> None:
        print(
            f"spindle: serving {function} on {s.url} ({_describe(made)}); Ctrl-C or SIGTERM stops",
            file=sys.stderr,
            flush=True,
        )
        if s.dashboard_url:
            print(f"spindle: dashboard at {s.dashboard_url}", file=sys.stderr, flush=True)

    try:
        code = server.serve_forever(ready)
    except SpindleError as exc:
        click.echo(f"spindle: {exc}", err=True)
        sys.exit(2)
    service = server.service
    print(
        f"spindle: stopped: {service.done:,} jobs done, {service.failed:,} failed, "
        f"{service.refused:,} requests refused",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(code)


def _describe(stage: Stage) -> str:
    if stage.kind == "io":
        return f"an event loop, {stage.concurrency} jobs at once"
    where = "process" if stage.kind == "cpu" else "thread"
    plural = "" if stage.workers == 1 else "es" if stage.kind == "cpu" else "s"
    on = f" on {stage.backend}" if stage.backend != "local" else ""
    return f"{stage.workers} {where}{plural}{on}"


def _size(text: str) -> int:
    size = parse_bytes(text)
    if not size:
        raise ConfigError(f"--max-body {text}: give a size such as 1MB or 65536")
    return size
