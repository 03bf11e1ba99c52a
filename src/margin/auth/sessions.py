"""Console sessions: what a browser holds after logging in with the master key or with a
viewer or admin key (``auth/access.py``).

The cookie carries a random session id; only its SHA-256 is kept, so a dump of the store
(memory, or Redis later so replicas share it) cannot be replayed as a cookie. Each session
has its own CSRF token, which a write must echo in a header: a cross-site form can make
the browser send the cookie but cannot read the token. Time is passed in so expiry is a
pure comparison and tests need no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

COOKIE_NAME = "margin_session"
CSRF_HEADER = "X-CSRF-Token"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


session_digest = _digest  # what a shared store keys a session by


@dataclass(frozen=True)
class Session:
    csrf_token: str
    expires_at: float
    role: str = "admin"
    key_id: str | None = None  # the key logged in with; None: the master key


@dataclass(frozen=True)
class NewSession:
    session_id: str  # goes into the cookie once, never stored
    session: Session


class SessionStore:
    """In-memory sessions keyed by the hash of their id."""

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("session ttl_s must be positive")
        self.ttl_s = ttl_s
        self._by_digest: dict[str, Session] = {}

    def create(self, now: float, role: str = "admin", key_id: str | None = None) -> NewSession:
        self._drop_expired(now)
        sid = secrets.token_urlsafe(32)
        s = Session(csrf_token=secrets.token_urlsafe(32), expires_at=now + self.ttl_s,
                    role=role, key_id=key_id)
        self._by_digest[_digest(sid)] = s
        return NewSession(sid, s)

    def get(self, session_id: str | None, now: float) -> Session | None:
        if not session_id:
            return None
        key = _digest(session_id)
        s = self._by_digest.get(key)
        if s is None or s.expires_at <= now:
            self._by_digest.pop(key, None)
            return None
        return s

    def revoke(self, session_id: str) -> None:
        self._by_digest.pop(_digest(session_id), None)

    def _drop_expired(self, now: float) -> None:
        for k in [k for k, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[k]


def csrf_ok(session: Session, header_value: str | None) -> bool:
    """Constant-time, so the token cannot be guessed a byte at a time from response times."""
    return bool(header_value) and hmac.compare_digest(session.csrf_token, header_value)
