"""``/admin/keys`` and ``/admin/spend``, and reading the key a request presents.

    GET    /admin/keys[?all=1]          list keys (revoked ones too with all=1)
    POST   /admin/keys                  create: {"user", "team", "models", "rpm", "tpm",
                                        "budget_usd", "budget_period", "expires", "name",
                                        "role": user | viewer | admin}
                                        -> 201 with the key, shown this once
    GET    /admin/keys/<id>             one key
    PATCH  /admin/keys/<id>             change some fields (null clears one)
    DELETE /admin/keys/<id>             revoke (also POST /admin/keys/<id>/revoke)
    GET    /admin/spend?by=team&since=7d[&until=…][&top_users=1&top=10][&tz=…]
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


from margin.auth.keys import (DURATION_RE, UNIT_S, UPDATABLE, KeyStore, UnknownKey,
                               parse_expiry)
from margin.auth.verifier import KeyVerifier
from margin.errors import AuthenticationError, BadRequest, InputError, NotFound, PermissionDenied
from margin.limits import spend
from margin.metering.db import connect
from margin.jsonbody import parse_json_object
from margin.attribution import attribution
from margin.types import AdminRequest


def presented_key(headers: dict[str, str]) -> str | None:
    """The API key a request presents: ``Authorization: Bearer``, or ``x-api-key``/``api-key``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return auth.strip() or None
    return headers.get("x-api-key") or headers.get("api-key") or None


def is_master(token: str, master_key: str) -> bool:
    return hmac.compare_digest(token.encode(), master_key.encode())


def token_guard(tokens: list[str], missing: str) -> Callable[[dict[str, str]], None]:
    """A check that the request presents one of ``tokens`` (each compared in constant
    time, all of them every time, so timing tells nothing about which nearly matched)."""
    wanted = [t.encode() for t in tokens]

    def check(headers: dict[str, str]) -> None:
        token = presented_key(headers)
        if token is None:
            raise AuthenticationError(missing)
        given = token.encode()
        ok = False
        for t in wanted:
            ok |= hmac.compare_digest(given, t)
        if not ok:
            raise AuthenticationError("Incorrect token provided.")
    return check


def _body(raw: bytes) -> dict[str, Any]:
    return parse_json_object(raw) if raw.strip() else {}


def _models(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",") if m.strip()]
    if isinstance(value, list) and all(isinstance(m, str) and m for m in value):
        for m in value:
            attribution("models", m)
        return value
    raise BadRequest("models must be a list of model names", code="invalid_value")


_TEXT_FIELDS = {"user": "the key's user", "team": "the key's team", "name": "the key's name"}
_MAX_LIMIT = 10**12  # rpm/tpm: anything above is no limit at all, and must fit a BIGINT


def _fields(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    allowed = set(UPDATABLE) | {"expires"}
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))[:300]}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in ("expires", "expires_at"):
            out["expires_at"] = parse_expiry(v)
        elif k == "models":
            out["models"] = _models(v)
        elif k in ("rpm", "tpm"):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                  or not 1 <= v <= _MAX_LIMIT):
                raise BadRequest(f"{k} must be an integer from 1 to {_MAX_LIMIT}",
                                 code="invalid_value")
            out[k] = v
        elif k == "budget_usd":
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise BadRequest("budget_usd must be a number", code="invalid_value")
            out[k] = float(v) if v is not None else None
        elif k in _TEXT_FIELDS:
            if v is not None and not isinstance(v, str):
                raise BadRequest(f"{k} ({_TEXT_FIELDS[k]}) must be a string, got "
                                 f"{type(v).__name__}", code="invalid_value")
            out[k] = attribution(k, v) if v is not None else None
        elif k == "budget_period":
            if v is not None and not isinstance(v, str):
                raise BadRequest("budget_period must be a string", code="invalid_value")
            out[k] = v
        else:
            out[k] = v
    if not partial and not out.get("user"):
        raise BadRequest("a key needs a user")
    return out


class KeysAdmin:
    def __init__(self, verifier: KeyVerifier) -> None:
        self.verifier = verifier

    async def __call__(self, req: AdminRequest) -> tuple[int, Any]:
        method, query, raw, rest = req.method, req.query, req.body, req.path
        parts = [p for p in rest.split("/") if p]
        try:
            if not parts:
                if method == "GET":
                    everything = query.get("all", ["0"])[0] in ("1", "true", "yes")
                    keys = await self.verifier.run_db(
                        lambda s: s.list(include_revoked=everything))
                    return 200, {"object": "list", "data": [k.public() for k in keys]}
                if method == "POST":
                    fields = _fields(_body(raw), partial=False)
                    record, token = await self.verifier.run_db(
                        lambda s: KeyStore.create(s, **fields))
                    return 201, {**record.public(), "key": token}
            elif len(parts) == 1:
                key_id = parts[0]
                if method == "GET":
                    record = await self.verifier.run_db(lambda s: s.get(key_id))
                    if record is None:
                        raise UnknownKey(f"no key with id {key_id}")
                    return 200, record.public()
                if method == "PATCH":
                    changes = _fields(_body(raw), partial=True)
                    record = await self.verifier.run_db(lambda s: s.update(key_id, changes))
                    await self.verifier.changed(key_id)
                    return 200, record.public()
                if method == "DELETE":
                    return await self._revoke(key_id)
            elif len(parts) == 2 and parts[1] == "revoke" and method == "POST":
                return await self._revoke(parts[0])
        except UnknownKey as exc:
            raise NotFound(exc.message, code="key_not_found") from None
        except InputError as exc:
            raise BadRequest(exc.message) from None
        raise NotFound(f"no such admin endpoint: {method} /admin/keys/{rest}",
                       code="unknown_url")

    async def _revoke(self, key_id: str) -> tuple[int, Any]:
        record = await self.verifier.run_db(lambda s: s.revoke(key_id))
        await self.verifier.changed(key_id)
        return 200, record.public()


def parse_since_s(text: str | None, now_s: float) -> float | None:
    """A duration back from now (``7d``) or an ISO date/time."""
    if not text:
        return None
    m = DURATION_RE.match(text)
    if m:
        return now_s - float(m.group(1)) * UNIT_S[m.group(2)]
    try:
        return parse_expiry(text, now_s)
    except InputError:
        raise BadRequest(f"{text!r} is neither a duration (7d) nor an ISO date") from None


class SpendAdmin:
    def __init__(self, db_url: str, default_tz: str) -> None:
        self.db_url = db_url
        self.default_tz = default_tz

    async def __call__(self, req: AdminRequest) -> tuple[int, Any]:
        if req.method != "GET" or req.path.strip("/"):
            raise NotFound("use GET /admin/spend", code="unknown_url")
        q = {k: v[-1] for k, v in req.query.items()}
        now = time.time()
        since = parse_since_s(q.get("since", "30d"), now)
        until = parse_since_s(q.get("until"), now)
        by = q.get("by", "user")
        if by not in spend.GROUPS:
            raise BadRequest(f"by must be one of {', '.join(spend.GROUPS)}")
        want_top = q.get("top_users", "0") in ("1", "true", "yes")
        try:
            top_n = int(q.get("top", "10"))
        except ValueError:
            raise BadRequest("top must be an integer") from None
        tz = q.get("tz", self.default_tz)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", too long
            raise BadRequest(f"unknown time zone {tz[:80]!r}", code="invalid_value") from None

        def report() -> dict[str, Any]:
            db = connect(self.db_url)
            try:
                if want_top:
                    return spend.top_users(db, since, until, top_n)
                return spend.spend_by(db, by, since, until, tz)
            finally:
                db.close()
        return 200, await asyncio.to_thread(report)
