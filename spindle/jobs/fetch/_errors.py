"""The one error a fetch raises: :class:`FetchFailed`, with a short reason."""

from __future__ import annotations

from spindle._errors import SpindleError


class FetchFailed(SpindleError):
    """A URL could not be fetched, after every attempt it was allowed.

    ``reason`` is a short human string meant for failure records and summaries
    ("too large: ...", "disallowed by robots.txt", "host unreachable (...)").
    The underlying exception, when there is one, is the ``__cause__``.

    Attributes:
        reason: why the URL failed.
        url: the URL as it was given to :meth:`Fetcher.fetch`.
        attempts: requests made for the last hop (0 when none was made).
    """

    def __init__(self, reason: str, url: str, attempts: int = 0) -> None:
        super().__init__(f"{url}: {reason}")
        self.reason = reason
        self.url = url
        self.attempts = attempts

    def __reduce__(self) -> tuple[type[FetchFailed], tuple[str, str, int]]:
        # The default pickles ``args`` (the one message), which does not fit
        # ``__init__``; failures cross process boundaries, so say how to rebuild.
        return (type(self), (self.reason, self.url, self.attempts))
