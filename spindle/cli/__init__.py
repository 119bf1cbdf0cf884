"""The ``spindle`` command line: one group, a module per command, one driver for all.

::

    spindle map    ─┐                                   ┌─ PlainTarget   (RecordWriter)
    spindle fetch  ─┼─ pipeline + source + target ──▶ drive ─┤
    (what comes)   ─┘                                   └─ JournalTarget (the journal's sink)
    spindle status ─── reads a journal

Each command module parses its options into a pipeline, a source and a target, and
hands them to :func:`~spindle.cli._driver.drive`, which runs, shows and stops the run the
same way for every command (signals, report, summary, exit status). Options shared by
commands live in :mod:`._options` (the journal's) and :mod:`._observers` (what a run shows).
"""

from __future__ import annotations

import importlib

import click

from ._usage import UsageProblem as UsageProblem

__all__ = ["UsageProblem", "main"]


class _Commands(click.Group):
    """The command group; each command's module is imported when that command runs.

    ``spindle fetch`` loads its HTTP client, TLS and URL modules, a few hundred
    milliseconds that ``spindle map`` and ``spindle status`` should not pay at every start.
    """

    COMMANDS = {
        "map": ("spindle.cli.map", "map_command"),
        "status": ("spindle.cli.status", "status_command"),
        "fetch": ("spindle.cli.fetch", "fetch_command"),
        "serve": ("spindle.cli.serve", "serve_command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.COMMANDS and cmd_name not in self.commands:
            module, name = self.COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spindle")
def main() -> None:
    """Run big streams of jobs on every core: asyncio, threads and processes in one
    bounded pipeline."""
