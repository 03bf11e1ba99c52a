"""The console's login: the master key, or an API key with the viewer or admin role
(``auth/access.py``), exchanged for a session cookie; and the check that lets ``/admin/*``
accept that cookie instead of the bearer header.

A browser cannot be trusted to keep the master key out of reach of a page's script, so it
holds a session instead (``auth/sessions.py``): an HttpOnly cookie (script cannot read it),
SameSite=Strict (other sites' pages do not send it), and a CSRF token that the console's
script reads from ``/ui/session`` and sends with every write. A client that presents the
key itself in a header is not cookie-based, so it needs no CSRF token.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from margin.auth.access import Access, check_allowed, console_role
from margin.auth.admin import is_master
from margin.auth.config import ConsoleConfig
from margin.auth.keys import KeyRecord, parse_token
from margin.auth.session_stores import MemorySessions, Sessions
from margin.auth.sessions import COOKIE_NAME, CSRF_HEADER, Session, csrf_ok
from margin.auth.throttle import FailureThrottle
from margin.errors import AuthenticationError, BadRequest, PermissionDenied, RateLimited

if TYPE_CHECKING:
    from margin.auth.verifier import KeyVerifier
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
    """Sessions created by logging in with the master key or a viewer/admin key, kept in
    ``store`` (this process's memory unless given Redis's, ``auth/session_stores.py``).
    A session made with a key lives only as long as that key keeps a console role: each
    request re-reads the key, so revoking it (or making it a plain user key) ends its
    sessions at once, on every replica."""

    def __init__(self, master_key: str, cfg: ConsoleConfig,
                 clock: Callable[[], float] = time.time,
                 store: Sessions | None = None,
                 keys: KeyVerifier | None = None) -> None:
        self.master_key = master_key
        self.keys = keys
        self.ttl_s = cfg.session_ttl_s
        self.clock = clock
        self.store = store or MemorySessions(cfg.session_ttl_s)
        # A guesser pays a 429 per window instead of getting unlimited tries at the key.
        self.throttle = FailureThrottle(cfg.failed_logins_per_client,
                                        cfg.failed_login_window_s, clock)

    async def session(self, headers: dict[str, str]) -> Session | None:
        """The request's live session: None without one, or when the key it was opened
        with no longer opens the console (the session is then ended)."""
        s = await self.store.get(cookie_value(headers), self.clock())
        if s is not None and s.key_id is not None:
            try:
                await self._current(s, headers)
            except AuthenticationError:
                return None
        return s

    async def authorize(self, method: str, headers: dict[str, str], endpoint: str = "",
                        read_only: frozenset[str] | set[str] = frozenset()) -> Access:
        """Let a request in on its session cookie, or raise: 401 without a live session
        (or when its key no longer opens the console), 403 for a write whose
        ``X-CSRF-Token`` is not the session's or one the session's role may not make."""
        s = await self.store.get(cookie_value(headers), self.clock())
        if s is None:
            raise AuthenticationError("Admin endpoints need the master key (Authorization: "
                                      "Bearer <master key>), a viewer or admin key, or a "
                                      "console session (log in at /ui).",
                                      code="session_required")
        if method.upper() not in SAFE_METHODS and not csrf_ok(s, headers.get(_CSRF)):
            raise PermissionDenied(f"A write made with the console's session cookie needs "
                                   f"the session's {CSRF_HEADER} header.",
                                   code="csrf_token_invalid")
        access = await self._current(s, headers)
        check_allowed(access, method, endpoint, read_only)
        return access

    async def _current(self, s: Session, headers: dict[str, str]) -> Access:
        """The session's access as its key stands now (the master key's never changes)."""
        if s.key_id is None:
            return Access(s.role)
        record: KeyRecord | None = None
        if self.keys is not None:
            key_id = s.key_id
            record = await self.keys.run_db(lambda store: store.get(key_id))
        if record is None or record.problem(self.clock()) or not console_role(record.role):
            sid = cookie_value(headers)
            if sid:
                await self.store.revoke(sid)
            raise AuthenticationError("The key this console session was opened with has "
                                      "been revoked, has expired or no longer has a console "
                                      "role; log in again.", code="session_required")
        return Access(record.role, record.id)

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
            raise BadRequest('send {"key": "<master key, or a viewer or admin key>"}',
                             code="invalid_value")
        if is_master(key, self.master_key):
            new = await self.store.create(self.clock())
        else:
            record = await self._key_login(key, subject)
            new = await self.store.create(self.clock(), record.role, record.id)
        cookie = (f"{COOKIE_NAME}={new.session_id}; HttpOnly; SameSite=Strict; Path=/; "
                  f"Max-Age={int(self.ttl_s)}" + ("; Secure" if https else ""))
        return self.public(new.session), cookie

    async def _key_login(self, token: str, subject: str) -> KeyRecord:
        """The key's record when it may open the console, or raise (a failure counts
        toward the address's throttle like a wrong master key)."""
        if self.keys is None or parse_token(token) is None:
            self.throttle.failed(subject)
            raise AuthenticationError("That is neither the master key nor an API key.",
                                      code="invalid_master_key")
        try:
            record = await self.keys.verify(token, subject)
        except AuthenticationError:
            self.throttle.failed(subject)
            raise AuthenticationError("That key is not valid (unknown, revoked or expired).",
                                      code="invalid_key") from None
        if not console_role(record.role):
            raise PermissionDenied(f"This key's role is {record.role!r}: it calls models but "
                                   "does not open the console; log in with the master key "
                                   "or a key with the viewer or admin role.",
                                   code="admin_role_required")
        return record

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
        return {"csrf_token": s.csrf_token, "expires_at": s.expires_at, "role": s.role,
                "key_id": s.key_id}
