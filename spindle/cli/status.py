"""``spindle status JOURNAL``: what a journaled run recorded, and its last report."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from .._errors import ConfigError, SpindleError
from ..journal import journal_timeline, status_dict, status_text
from ._usage import UsageProblem


@click.command("status")
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


def status_report(path: str, *, as_json: bool = False, plot: str | None = None) -> str:
    """The text ``spindle status`` prints; with ``plot``, also draws the run to that file."""
    text = (
        orjson.dumps(status_dict(path), option=orjson.OPT_INDENT_2).decode()
        if as_json
        else status_text(path)
    )
    if plot is not None:
        from ..observe.plot import plot_timeline  # matplotlib: only when asked for

        timeline = journal_timeline(path)
        try:
            plot_timeline(timeline, plot, title=f"spindle journal {Path(path).name}")
        except OSError as exc:
            raise ConfigError(f"cannot write the plot {plot!r}: {exc.strerror or exc}") from exc
        if not as_json:
            text += f"\nplot      {Path(plot).absolute()}"
    return text
