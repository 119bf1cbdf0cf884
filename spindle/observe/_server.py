"""What the metrics endpoint and the dashboard share: binding rules, the token check, start/stop.

Rules (the same for every server spindle starts):

- bind to 127.0.0.1 unless told otherwise;
- binding anywhere else (``0.0.0.0``, a LAN address, a host name) requires a token, or
  :class:`TokenRequired` is raised before anything listens;
- with a token, every request must carry it: ``?token=...``, ``Authorization: Bearer ...``,
  or the cookie set when a request carried it one of the first two ways (so a browser
  that opened ``/?token=...`` can load the page's scripts); otherwise 401.

The server runs on the caller's event loop (no thread) and is closed, with its
connections, when the ``async with`` block exits.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ._errors import BindError, TokenRequired

__all__ = ["is_loopback", "require_token", "run_app", "token_middleware"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None, what: str) -> None:
    """Raise :class:`TokenRequired` when ``host`` is not loopback and there is no token."""
    if token is not None and not token:
        raise TokenRequired(f"the {what} token must not be empty")
    if token is None and not is_loopback(host):
        raise TokenRequired(
            f"the {what} would listen on {host!r}, beyond this machine, without a token: "
            f"pass token=... (e.g. secrets.token_urlsafe(32)) or bind to 127.0.0.1"
        )


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def token_middleware(token: str) -> Middleware:
    """Refuse (401) any request that does not carry ``token``."""
    expected = token.encode()
    # One cookie name per token, so two servers on one host do not overwrite each other's.
    cookie = "spindle-" + hashlib.sha256(expected).hexdigest()[:12]

    def matches(value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), expected)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.query.get("token")
        if given is None:
            given = _bearer(request.headers.get("Authorization", ""))
        if matches(given):
            response = await handler(request)
            if request.cookies.get(cookie) != token:
                response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
            return response
        if matches(request.cookies.get(cookie)):
            return await handler(request)
        return web.Response(
            status=401,
            text="401: this spindle server needs its token (?token=... or Authorization: Bearer)\n",
            headers={"WWW-Authenticate": 'Bearer realm="spindle"'},
        )

    return check


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1" if host != "::" else "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@asynccontextmanager
async def run_app(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on the running loop; yield its base URL; close it all on exit."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise BindError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                "choose another port (0 picks a free one) or another address"
            ) from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        yield f"http://{_url_host(host)}:{bound}"
    finally:
        await runner.cleanup()
