"""How a command says that its arguments or files are wrong."""

from __future__ import annotations

import click


class UsageProblem(click.ClickException):
    """A problem with the command's arguments or files: exit status 2."""

    exit_code = 2
