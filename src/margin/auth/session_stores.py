"""Where console sessions live: in this process (``SessionStore``), or in Redis so that
every worker and replica behind one address knows every session. Both answer the same
three awaitables, so the console's login does not care which it has.

In Redis a session is one key, ``<prefix>console:session:<sha256 of the id>``, holding its
CSRF token, expiry, role and the id of the key it was made with, with the session's TTL:
the id itself is never stored, and Redis drops a session when it expires. A Redis that does not answer refuses the login or the
request (503) rather than letting it in.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

import orjson

from margin.auth.sessions import NewSession, Session, SessionStore, session_digest
from margin.errors import Overloaded


class Sessions(Protocol):
    async def create(self, now: float, role: str = "admin",
                     key_id: str | None = None) -> NewSession: ...
    async def get(self, session_id: str | None, now: float) -> Session | None: ...
    async def revoke(self, session_id: str) -> None: ...


class MemorySessions:
    """This process's sessions (one worker, one replica)."""

    def __init__(self, ttl_s: float) -> None:
        self.store = SessionStore(ttl_s)

    async def create(self, now: float, role: str = "admin",
                     key_id: str | None = None) -> NewSession:
        return self.store.create(now, role, key_id)

    async def get(self, session_id: str | None, now: float) -> Session | None:
        return self.store.get(session_id, now)

    async def revoke(self, session_id: str) -> None:
        self.store.revoke(session_id)


class RedisSessions:
    """Sessions shared through Redis (``redis.asyncio`` client)."""

    def __init__(self, client: Any, prefix: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("session ttl_s must be positive")
        self.client = client
        self.prefix = prefix + "console:session:"
        self.ttl_s = ttl_s

    def _key(self, session_id: str) -> str:
        return self.prefix + session_digest(session_id)

    async def create(self, now: float, role: str = "admin",
                     key_id: str | None = None) -> NewSession:
        sid = secrets.token_urlsafe(32)
        s = Session(csrf_token=secrets.token_urlsafe(32), expires_at=now + self.ttl_s,
                    role=role, key_id=key_id)
        value = orjson.dumps({"csrf_token": s.csrf_token, "expires_at": s.expires_at,
                              "role": role, "key_id": key_id})
        await self._call(self.client.set(self._key(sid), value, px=int(self.ttl_s * 1000)))
        return NewSession(sid, s)

    async def get(self, session_id: str | None, now: float) -> Session | None:
        if not session_id:
            return None
        raw = await self._call(self.client.get(self._key(session_id)))
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            key_id = d.get("key_id")
            s = Session(csrf_token=str(d["csrf_token"]), expires_at=float(d["expires_at"]),
                        # a session written before roles existed was a master-key one
                        role=str(d.get("role") or "admin"),
                        key_id=str(key_id) if key_id is not None else None)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not a session margin wrote: no session
        return s if s.expires_at > now else None

    async def revoke(self, session_id: str) -> None:
        await self._call(self.client.delete(self._key(session_id)))

    @staticmethod
    async def _call(pending: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise Overloaded("Console sessions are kept in Redis, which does not answer "
                             f"({type(exc).__name__}); try again shortly.") from None
