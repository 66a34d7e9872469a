"""The daemon's guards: a bearer token file, Host-header and Origin checks, optional CORS.

A local HTTP server is reachable by any web page the user opens (drive-by requests) and, through DNS
rebinding, by pages that resolve their own name to 127.0.0.1. The token stops the first, the Host check the
second, and refusing browser Origins keeps pages from even reaching a route.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from localspec import locations
from localspec.errors import ConfigError

PUBLIC_PATHS = frozenset({"/health"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def ensure_token(path: Path | None = None) -> str:
    """Read the token file, creating it (0600, random) on first start; refuse one others can read."""
    path = path or locations.token_file()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"The token file {path} is readable by other users (mode {mode:o}). "
            f"Run `chmod 600 {path}` (or delete it to get a new token) and start again."
        )
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ConfigError(
            f"The token file {path} holds no usable token. Delete it; the next start makes a new one."
        )
    return token


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(bound_host: str) -> frozenset[str] | None:
    """Host-header names to accept; None (accept any) when bound to every interface on purpose."""
    if bound_host in ("0.0.0.0", "::", ""):
        return None
    names = {bound_host.lower().strip("[]")}
    if is_loopback(bound_host):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8717
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _error_body(status: int, message: str, code: str) -> bytes:
    kind = "authentication_error" if status == 401 else "permission_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


class GuardMiddleware:
    """Refuses wrong Host headers, browser Origins not allowed, and requests without the bearer token.

    A plain ASGI middleware (not BaseHTTPMiddleware) so streaming responses and disconnects pass untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        bound_host: str,
        allow_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._token = token.encode()
        self._hosts = allowed_host_names(bound_host)
        self._origins = frozenset(o.rstrip("/") for o in allow_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message, code = refusal
        body = _error_body(status, message, code)
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        if self._hosts is not None:
            name = _host_name(headers.get("host", ""))
            if name not in self._hosts:
                return 403, f"Host {name!r} is not this daemon's address; use http://127.0.0.1.", "bad_host"
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self._origins:
            return (
                403,
                f"Requests from web pages ({origin}) are refused. "
                "Add the origin to server.allow_origins in config.toml to allow it.",
                "origin_not_allowed",
            )
        # CORS pre-flights carry no credentials; the CORS middleware inside answers them for allowed origins.
        if scope["path"] in PUBLIC_PATHS or (scope["method"] == "OPTIONS" and origin is not None):
            return None
        auth = headers.get("authorization", "")
        scheme, _, supplied = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self._token):
            return (
                401,
                "Missing or wrong bearer token. Send `Authorization: Bearer <token>` with the token from "
                f"{locations.token_file()}.",
                "invalid_token",
            )
        return None
