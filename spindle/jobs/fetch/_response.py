"""What a fetch gives back: :class:`FetchResult` for records, :class:`Response` for parsing.

Headers are a plain ``dict`` with lower-case names (repeated headers joined with
``", "``), so that results serialise to JSON and pickle to worker processes as
they are, and look the same whatever case the server used.
"""

from __future__ import annotations

import base64
import codecs
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import orjson


def charset(headers: dict[str, str]) -> str | None:
    """The charset named by the Content-Type header, if it names a known codec."""
    content_type = headers.get("content-type")
    if not content_type:
        return None
    if ";" not in content_type:  # "text/html": no parameters, the usual case
        return None
    if '"' in content_type or "\\" in content_type or "*" in content_type:
        # Quoted or RFC 2231 parameters: the email package's full parser.
        message = Message()
        message["content-type"] = content_type
        name = message.get_content_charset()
    else:
        name = None
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                name = value.strip().lower()
                break
    if not name:
        return None
    try:
        return _CODEC_NAMES[name]
    except KeyError:
        pass
    try:
        found: str | None = codecs.lookup(name).name
    except LookupError:
        found = None
    if len(_CODEC_NAMES) < 256:
        _CODEC_NAMES[name] = found
    return found


#: Charset names already looked up (``codecs.lookup`` normalises on every call).
_CODEC_NAMES: dict[str, str | None] = {}


def decode(body: bytes, headers: dict[str, str]) -> str | None:
    """The body as text, strictly decoded; ``None`` when it is not text."""
    try:
        return body.decode(charset(headers) or "utf-8")
    except UnicodeDecodeError:
        return None


class Response:
    """The response handed to a user's parse function.

    Plain attributes only, so it pickles to a worker process. When the body was
    saved to a file, only ``path`` travels and ``body`` reads the file on first use.
    """

    __slots__ = ("_body", "final_url", "headers", "path", "status", "url")

    def __init__(
        self,
        url: str,
        final_url: str,
        status: int,
        headers: dict[str, str],
        body: bytes | None,
        path: str | None = None,
    ) -> None:
        self.url = url
        self.final_url = final_url
        self.status = status
        self.headers = headers
        self._body = body
        self.path = path

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = Path(self.path).read_bytes() if self.path else b""
        return self._body

    def text(self, errors: str = "replace") -> str:
        """The body decoded with the Content-Type charset, or UTF-8."""
        return self.body.decode(charset(self.headers) or "utf-8", errors)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.url, self.final_url, self.status, self.headers, self._body, self.path)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.url, self.final_url, self.status, self.headers, self._body, self.path) = state

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.final_url}>"


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A URL that got an HTTP answer, whatever its status.

    ``body`` holds the body in memory; with ``save_dir`` it is ``None`` and
    ``path``, ``size`` and ``sha256`` describe the saved file instead.
    ``attempts`` counts the requests made for the last hop of the redirect chain.
    """

    url: str
    final_url: str
    status: int
    headers: dict[str, str]
    elapsed: float
    attempts: int
    body: bytes | None = field(default=None, repr=False)
    path: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def saved(self) -> bool:
        return self.path is not None

    def response(self) -> Response:
        return Response(self.url, self.final_url, self.status, self.headers, self.body, self.path)

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict: ``text`` when the body decodes, else ``body_base64``."""
        record: dict[str, Any] = {
            "url": self.url,
            "final_url": self.final_url,
            "status": self.status,
            "headers": self.headers,
            "elapsed": self.elapsed,
            "attempts": self.attempts,
        }
        if self.path is not None:
            record.update(path=self.path, size=self.size, sha256=self.sha256)
            return record
        body = self.body or b""
        text = decode(body, self.headers)
        if text is None:
            record["body_base64"] = base64.b64encode(body).decode("ascii")
        else:
            record["text"] = text
        return record
