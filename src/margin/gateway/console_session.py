"""The console's login: a master key exchanged for a session cookie, and the check that
lets ``/admin/*`` accept that cookie instead of the bearer header.

A browser cannot be trusted to keep the master key out of reach of a page's script, so it
holds a session instead (``auth/sessions.py``): an HttpOnly cookie (script cannot read it),
SameSite=Strict (other sites' pages do not send it), and a CSRF token that the console's
script reads from ``/ui/session`` and sends with every write. A client that presents the
key itself in a header is not cookie-based, so it needs no CSRF token.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from margin.auth.admin import is_master
from margin.auth.config import ConsoleConfig
from margin.auth.session_stores import MemorySessions, Sessions
from margin.auth.sessions import COOKIE_NAME, CSRF_HEADER, Session, csrf_ok
from margin.auth.throttle import FailureThrottle
from margin.errors import AuthenticationError, BadRequest, PermissionDenied, RateLimited
from margin.jsonbody import parse_json_object

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_CSRF = CSRF_HEADER.lower()


def cookie_value(headers: dict[str, str], name: str = COOKIE_NAME) -> str | None:
    """One cookie's value from the Cookie header (the first one of that name)."""
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value.strip('"')
    return None


class ConsoleAuth:
    """Sessions created by logging in with the master key, kept in ``store`` (this
    process's memory unless given Redis's, ``auth/session_stores.py``)."""

    def __init__(self, master_key: str, cfg: ConsoleConfig,
                 clock: Callable[[], float] = time.time,
                 store: Sessions | None = None) -> None:
        self.master_key = master_key
        self.ttl_s = cfg.session_ttl_s
        self.clock = clock
        self.store = store or MemorySessions(cfg.session_ttl_s)
        # A guesser pays a 429 per window instead of getting unlimited tries at the key.
        self.throttle = FailureThrottle(cfg.failed_logins_per_client,
                                        cfg.failed_login_window_s, clock)

    async def session(self, headers: dict[str, str]) -> Session | None:
        return await self.store.get(cookie_value(headers), self.clock())

    async def authorize(self, method: str, headers: dict[str, str]) -> None:
        """Let a request in on its session cookie, or raise: 401 without a live session,
        403 for a write whose ``X-CSRF-Token`` is not the session's."""
        s = await self.session(headers)
        if s is None:
            raise AuthenticationError("Admin endpoints need the master key (Authorization: "
                                      "Bearer <master key>) or a console session (log in "
                                      "at /ui).", code="session_required")
        if method.upper() not in SAFE_METHODS and not csrf_ok(s, headers.get(_CSRF)):
            raise PermissionDenied(f"A write made with the console's session cookie needs "
                                   f"the session's {CSRF_HEADER} header.",
                                   code="csrf_token_invalid")

    async def login(self, body: bytes, client: str | None, https: bool
                    ) -> tuple[dict[str, Any], str]:
        """The session's public part and the Set-Cookie header value, or raise."""
        subject = client or "unknown"
        wait_s = self.throttle.retry_after_s(subject)
        if wait_s is not None:
            raise RateLimited("Too many wrong keys from this address; try again later.",
                              retry_after_s=wait_s, code="login_throttled")
        data = parse_json_object(body) if body.strip() else {}
        key = data.get("key")
        if not isinstance(key, str) or not key:
            raise BadRequest('send {"key": "<master key>"}', code="invalid_value")
        if not is_master(key, self.master_key):
            self.throttle.failed(subject)
            raise AuthenticationError("That is not the master key.", code="invalid_master_key")
        new = await self.store.create(self.clock())
        cookie = (f"{COOKIE_NAME}={new.session_id}; HttpOnly; SameSite=Strict; Path=/; "
                  f"Max-Age={int(self.ttl_s)}" + ("; Secure" if https else ""))
        return self.public(new.session), cookie

    async def logout(self, method: str, headers: dict[str, str], https: bool) -> str:
        """Revoke the request's session (its write needs the CSRF token like any other);
        the Set-Cookie value that clears the cookie."""
        sid = cookie_value(headers)
        if sid and await self.store.get(sid, self.clock()) is not None:
            await self.authorize(method, headers)
            await self.store.revoke(sid)
        return (f"{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
                + ("; Secure" if https else ""))

    @staticmethod
    def public(s: Session) -> dict[str, Any]:
        return {"csrf_token": s.csrf_token, "expires_at": s.expires_at}
