"""Virtual API keys: their format, their salted hashes, and their table.

A key reads ``mk-<id>-<secret>``: the 16-hex-digit id finds the row at once, the secret
(256 random bits) is checked against a salted scrypt hash. Only the hash is stored; the
key itself is shown once, when it is created. The secret's entropy already defeats
guessing, so scrypt runs with modest parameters (tens of ms, once per process per key:
verified keys are cached by the verifier).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from margin.errors import InputError
from margin.metering.db import Database
from margin.metering.migrations import migrate

KEY_RE = re.compile(r"^mk-([0-9a-f]{16})-([A-Za-z0-9_-]{32,128})$")
PERIODS = ("day", "week", "month")
# What a key may do besides calling models: ``viewer`` also opens the console's read-only
# pages and their ``/admin/`` queries; ``admin`` everything the master key may (keys too).
ROLES = ("user", "viewer", "admin")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1

_COLUMNS = ("id", "name", "user_id", "team", "models", "rpm", "tpm", "budget_usd",
            "budget_period", "expires_at", "created_at", "updated_at", "revoked_at", "role")
# Fields an update may change, with the column each lives in.
UPDATABLE = {"name": "name", "user": "user_id", "team": "team", "models": "models",
             "rpm": "rpm", "tpm": "tpm", "budget_usd": "budget_usd",
             "budget_period": "budget_period", "expires_at": "expires_at", "role": "role"}


class UnknownKey(InputError):
    pass


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str | None
    user: str | None
    team: str | None
    models: tuple[str, ...] | None  # None: every model
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: str | None
    expires_at: float | None
    created_at: float
    updated_at: float
    revoked_at: float | None
    role: str = "user"

    def problem(self, now_s: float) -> str | None:
        """Why this key may not be used now, or None."""
        if self.revoked_at is not None:
            return "This API key has been revoked."
        if self.expires_at is not None and now_s >= self.expires_at:
            return "This API key has expired."
        return None

    def allows_model(self, model: str | None) -> bool:
        return self.models is None or (model is not None and model in self.models)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models) if self.models is not None else None
        d["status"] = ("revoked" if self.revoked_at is not None else
                       "expired" if self.expires_at is not None and time.time() >= self.expires_at
                       else "active")
        return d


def parse_token(token: str) -> tuple[str, str] | None:
    m = KEY_RE.match(token)
    return (m.group(1), m.group(2)) if m else None


def new_token() -> tuple[str, str, str]:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"mk-{key_id}-{secret}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_secret(secret: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if algo != "scrypt":
            return False
        digest = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt_b64), n=int(n),
                                r=int(r), p=int(p), dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def _record(row: tuple) -> KeyRecord:
    d = dict(zip(_COLUMNS, row))
    models = orjson.loads(d["models"]) if d["models"] else None
    return KeyRecord(id=d["id"], name=d["name"], user=d["user_id"], team=d["team"],
                     models=tuple(models) if models is not None else None,
                     rpm=d["rpm"], tpm=d["tpm"], budget_usd=d["budget_usd"],
                     budget_period=d["budget_period"], expires_at=d["expires_at"],
                     created_at=d["created_at"], updated_at=d["updated_at"],
                     revoked_at=d["revoked_at"], role=d["role"] or "user")


def _validate(fields: dict[str, Any]) -> None:
    for name in ("rpm", "tpm"):
        if fields.get(name) is not None and int(fields[name]) < 1:
            raise InputError(f"{name} must be at least 1")
    if fields.get("budget_usd") is not None and float(fields["budget_usd"]) <= 0:
        raise InputError("budget_usd must be above 0")
    if fields.get("budget_period") is not None and fields["budget_period"] not in PERIODS:
        raise InputError(f"budget_period must be one of {', '.join(PERIODS)}")
    if "role" in fields and fields["role"] not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}")
    models = fields.get("models")
    if models is not None and (not isinstance(models, (list, tuple))
                               or not all(isinstance(m, str) and m for m in models)):
        raise InputError("models must be a list of model names")


class KeyStore:
    """The ``api_keys`` table. Synchronous: the gateway calls it from a worker thread."""

    def __init__(self, db: Database, *, run_migrations: bool = True) -> None:
        self.db = db
        if run_migrations:
            migrate(db)

    def create(self, *, user: str, team: str | None = None, name: str | None = None,
               models: list[str] | None = None, rpm: int | None = None,
               tpm: int | None = None, budget_usd: float | None = None,
               budget_period: str | None = None, expires_at: float | None = None,
               role: str = "user", now_s: float | None = None) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the key itself (shown once, never stored)."""
        if not user:
            raise InputError("a key needs a user")
        if budget_usd is not None and budget_period is None:
            budget_period = "month"
        _validate({"rpm": rpm, "tpm": tpm, "budget_usd": budget_usd,
                   "budget_period": budget_period, "models": models, "role": role})
        now_s = time.time() if now_s is None else now_s
        key_id, secret, token = new_token()
        self.db.execute(
            "INSERT INTO api_keys (id, secret_hash, name, user_id, team, models, rpm, tpm, "
            "budget_usd, budget_period, expires_at, created_at, updated_at, revoked_at, role) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (key_id, hash_secret(secret), name, user, team,
             orjson.dumps(list(models)).decode() if models is not None else None,
             rpm, tpm, budget_usd, budget_period, expires_at, now_s, now_s, role))
        self.db.commit()
        record = self.get(key_id)
        assert record is not None
        return record, token

    def fetch(self, key_id: str) -> tuple[KeyRecord, str] | None:
        """The record and its stored hash (for verification), or None."""
        rows = self.db.query(f"SELECT {', '.join(_COLUMNS)}, secret_hash FROM api_keys "
                             "WHERE id = ?", (key_id,))
        self.db.commit()  # end the read transaction (PostgreSQL) so the next read is fresh
        if not rows:
            return None
        return _record(rows[0][:-1]), rows[0][-1]

    def get(self, key_id: str) -> KeyRecord | None:
        found = self.fetch(key_id)
        return found[0] if found else None

    def list(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = self.db.query(sql + " ORDER BY created_at, id")
        self.db.commit()
        return [_record(r) for r in rows]

    def revoke(self, key_id: str, now_s: float | None = None) -> KeyRecord:
        now_s = time.time() if now_s is None else now_s
        self.db.execute("UPDATE api_keys SET revoked_at = ?, updated_at = ? "
                        "WHERE id = ? AND revoked_at IS NULL", (now_s, now_s, key_id))
        self.db.commit()
        record = self.get(key_id)
        if record is None:
            raise UnknownKey(f"no key with id {key_id}")
        return record

    def update(self, key_id: str, changes: dict[str, Any],
               now_s: float | None = None) -> KeyRecord:
        """Change some fields (``UPDATABLE``); a value of None clears the field."""
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise InputError(f"cannot update {', '.join(sorted(unknown))}; "
                             f"updatable: {', '.join(UPDATABLE)}")
        if "user" in changes and not changes["user"]:
            raise InputError("a key needs a user")
        if "role" in changes and changes["role"] is None:
            changes = {**changes, "role": "user"}  # cleared: back to an API key only
        _validate(changes)
        current = self.get(key_id)
        if current is None:
            raise UnknownKey(f"no key with id {key_id}")
        if changes.get("budget_usd") is not None and not (changes.get("budget_period")
                                                           or current.budget_period):
            changes = {**changes, "budget_period": "month"}
        if not changes:
            return current
        now_s = time.time() if now_s is None else now_s
        sets, params = [], []
        for field, value in changes.items():
            if field == "models" and value is not None:
                value = orjson.dumps(list(value)).decode()
            sets.append(f"{UPDATABLE[field]} = ?")
            params.append(value)
        sets.append("updated_at = ?")
        params.extend([now_s, key_id])
        self.db.execute(f"UPDATE api_keys SET {', '.join(sets)} WHERE id = ?", params)
        self.db.commit()
        record = self.get(key_id)
        assert record is not None
        return record


DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(value: Any, now_s: float | None = None) -> float | None:
    """``--expires``: a duration from now (``30d``), an ISO date/time, UNIX seconds, or
    ``never``/None."""
    import datetime as dt

    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "never",
                                                                              "none")):
        return None
    now_s = time.time() if now_s is None else now_s
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise InputError(f"expires: cannot read {value!r}")
    m = DURATION_RE.match(value)
    if m:
        return now_s + float(m.group(1)) * UNIT_S[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"expires: {value!r} is neither a duration (30d) nor an ISO date") \
            from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()
