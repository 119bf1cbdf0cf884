"""A small HTTP client for the serve tests: http.client, one connection per call."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    ndjson: list[Any] | None = None,
    timeout: float = 30,
) -> Reply:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data: bytes | None = raw
        if ndjson is not None:
            data = b"".join(json.dumps(x).encode() + b"\n" for x in ndjson)
            hdrs.setdefault("Content-Type", "application/x-ndjson")
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def post(base: str, path: str, body: Any = None, **kw: Any) -> Reply:
    return call(base, "POST", path, body, **kw)


def get(base: str, path: str, **kw: Any) -> Reply:
    return call(base, "GET", path, **kw)
