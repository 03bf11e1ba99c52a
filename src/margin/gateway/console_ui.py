"""``/ui``: the browser console, served by the gateway itself from files shipped in the
package (``gateway/ui/``: HTML, CSS and plain JavaScript; no build step, nothing fetched
from elsewhere), plus its login.

    GET  /ui, /ui/            the page (one HTML file; the script draws each page)
    GET  /ui/assets/<file>    its CSS, JavaScript and icon
    GET  /ui/session          who is looking: open gateway, logged in (with the CSRF
                              token), or not logged in; always 200, so an anonymous page
                              load logs no failed request
    POST /ui/login            {"key": "<master key>"} -> session cookie + CSRF token
    POST /ui/logout           revokes the session (needs the CSRF token)

The page's data comes from ``/admin/*`` (docs/admin-api.md), with the session cookie.
Without a master key every ``/ui`` path answers loopback clients only.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from margin.auth.config import ConsoleConfig
from margin.errors import NotFound, PermissionDenied
from margin.gateway.admin import LOOPBACK
from margin.gateway.console_session import ConsoleAuth
from margin.gateway.http import (MethodNotAllowed, Receive, Scope, Send, client_address,
                                 read_body, request_headers, send_json)

MAX_LOGIN_BODY = 4096
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
# Everything is local: the page may load nothing, run nothing and send nothing elsewhere,
# and no other site may frame it.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_SECURITY = [(b"content-security-policy", CSP.encode()),
             (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
             (b"x-frame-options", b"DENY")]
_NO_STORE = [(b"cache-control", b"no-store")]


def load_assets() -> dict[str, tuple[bytes, str, str]]:
    """Every shipped file of ``gateway/ui``: name -> (bytes, content type, ETag)."""
    out = {}
    for entry in resources.files("margin.gateway").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            data = entry.read_bytes()
            tag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
            out[entry.name] = (data, _TYPES[suffix], tag)
    return out


class ConsoleUI:
    def __init__(self, cfg: ConsoleConfig, auth: ConsoleAuth | None, *, keys: bool,
                 log_content: bool, max_body: int, body_timeout_s: float) -> None:
        self.cfg = cfg
        self.auth = auth
        self.keys = keys
        self.log_content = log_content
        self.max_body = min(max_body, MAX_LOGIN_BODY)
        self.body_timeout_s = body_timeout_s
        self.assets = load_assets() if cfg.enabled else {}

    async def handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if not self.cfg.enabled:
            raise NotFound("the console is turned off (console.enabled)", code="unknown_url")
        if self.auth is None and client_address(scope) not in LOOPBACK:
            raise PermissionDenied("No master key is set, so the gateway is open and its "
                                   "console answers loopback clients only; set "
                                   "MARGIN_MASTER_KEY to use it from elsewhere.",
                                   code="console_loopback_only")
        method = scope["method"]
        rest = path[len("/ui"):].lstrip("/")
        if rest in ("login", "logout"):
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST",
                                       allow="POST")
            await (self._login if rest == "login" else self._logout)(scope, receive, send)
            return
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET",
                                   allow="GET, HEAD")
        if rest == "session":
            await send_json(send, 200, await self._session(request_headers(scope)), _NO_STORE)
            return
        name = "index.html" if rest == "" else (
            rest[len("assets/"):] if rest.startswith("assets/") else None)
        asset = self.assets.get(name) if name else None
        if asset is None:
            raise NotFound(f"no such console file: {path[:200]}", code="unknown_url")
        await self._send_asset(scope, send, asset, html=rest == "")

    async def _session(self, headers: dict[str, str]) -> dict[str, Any]:
        base = {"keys": self.keys, "log_content": self.log_content,
                "refresh_interval_s": self.cfg.refresh_interval_s}
        if self.auth is None:
            return {"mode": "open", "authenticated": True, "csrf_token": None, **base}
        s = await self.auth.session(headers)
        if s is None:
            return {"mode": "master_key", "authenticated": False, "csrf_token": None, **base}
        return {"mode": "master_key", "authenticated": True, **self.auth.public(s), **base}

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.auth is None:
            raise NotFound("no master key is set: the console needs no login",
                           code="login_disabled")
        body = await read_body(scope, receive, self.max_body, self.body_timeout_s)
        public, cookie = await self.auth.login(body, client_address(scope), _https(scope))
        await send_json(send, 200, public, [*_NO_STORE, (b"set-cookie", cookie.encode())])

    async def _logout(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(scope, receive, self.max_body, self.body_timeout_s)
        if self.auth is None:
            await send_json(send, 200, {"logged_out": False}, _NO_STORE)
            return
        cookie = await self.auth.logout(scope["method"], request_headers(scope),
                                        _https(scope))
        await send_json(send, 200, {"logged_out": True},
                        [*_NO_STORE, (b"set-cookie", cookie.encode())])

    async def _send_asset(self, scope: Scope, send: Send, asset: tuple[bytes, str, str],
                          *, html: bool) -> None:
        data, content_type, etag = asset
        headers = [(b"content-type", content_type.encode()), (b"etag", etag.encode()),
                   # Revalidated every time: an upgraded gateway serves its new script at once.
                   (b"cache-control", b"no-cache"), *_SECURITY]
        if request_headers(scope).get("if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b"" if scope["method"] == "HEAD" else data
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _https(scope: Scope) -> bool:
    return scope.get("scheme") == "https"
