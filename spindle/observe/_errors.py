"""The errors of :mod:`spindle.observe`, all in spindle's one error tree."""

from __future__ import annotations

from .._errors import ConfigError, SpindleError


class TokenRequired(ConfigError):
    """A server was asked to listen beyond the loopback interface without a token.

    Pass ``token=...`` (a long random string, e.g. ``secrets.token_urlsafe(32)``) or
    bind to ``127.0.0.1``.
    """


class MissingExtra(SpindleError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class BindError(SpindleError, OSError):
    """A server could not listen on the address asked for (in use, or not this machine's)."""
