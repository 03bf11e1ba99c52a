"""Settings for virtual API keys (the ``auth:`` section). Imports only pydantic."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from margin.configbase import Strict as _Strict


class AuthConfig(_Strict):
    """Virtual API keys. Set the master key (``MARGIN_MASTER_KEY``, see ``server``) and every
    ``/v1/*`` request needs a key, created with ``margin keys create`` or ``POST
    /admin/keys``; the key's user and team become the request's attribution, and its own
    ``rpm``/``tpm``/budget apply. Keys are stored as salted scrypt hashes only. A verified
    key is trusted for a short while without another database read; with Redis, revoking a
    key is seen by every replica at once. A key's role (``--role user|viewer|admin``) decides
    whether it also opens the console and ``/admin/`` (docs/console.md, "Console keys")."""

    yaml_example: ClassVar[str] = """
        auth:
          cache_ttl_s: 2           # without Redis: a revocation elsewhere is seen within 2 s
          redis_prefix: "margin:"  # with Redis: every request checks a revocation counter
    """

    cache_ttl_s: float = Field(2.0, ge=0)
    """Without Redis, a revocation made by another process is seen within this time."""
    redis_cache_ttl_s: float = Field(300.0, ge=0)
    """With Redis, revocations are seen at once; this bounds trust if Redis stays silent."""
    negative_cache_ttl_s: float = Field(2.0, ge=0)
    """How long a refused key is refused again without checking its secret."""
    failed_per_key: int = Field(10, ge=1)
    """Failed checks (unknown key or wrong secret) one key id may cause per
    ``failed_window_s``; past it that id gets 429 with ``Retry-After`` and no secret is
    checked. A key already verified in this process keeps working."""
    failed_per_client: int = Field(60, ge=1)
    """Failed checks one client address may cause per ``failed_window_s`` (behind a proxy
    that hides client addresses, every client shares one)."""
    failed_window_s: float = Field(60.0, gt=0)
    """The window the two limits above count failures in."""
    max_concurrent_hashes: int = Field(2, ge=1)
    """Secrets checked (scrypt, in worker threads) at once; more wait their turn."""
    redis_url: str | None = None
    """Redis for revocations; default: the top-level ``redis_url``."""
    redis_prefix: str = "margin:"
    """Prefix of margin's keys in Redis."""
    redis_timeout_s: float = Field(1.0, gt=0)
    """Longest wait for Redis."""


class ConsoleConfig(_Strict):
    """The browser console at ``/ui`` (docs/console.md). With a master key set it asks for
    the key once and keeps a session: an HttpOnly, SameSite=Strict cookie holding a random
    id (only its hash is kept) and a CSRF token every write must echo. Without a master key
    it answers loopback clients only and says that the gateway is open. With Redis
    (``console.redis_url`` or the top-level ``redis_url``) sessions are shared by every
    worker and replica; without, they live in the process that created them."""

    yaml_example: ClassVar[str] = """
        console:
          enabled: true
          session_ttl_s: 28800     # a login lasts 8 hours
    """

    enabled: bool = True
    """Serve ``/ui`` (off: ``/ui`` is a 404; the JSON API under ``/admin/`` stays)."""
    session_ttl_s: float = Field(8 * 3600.0, gt=0, le=30 * 86_400)
    """How long a login lasts (the cookie's Max-Age); at most 30 days."""
    refresh_interval_s: float = Field(10.0, ge=2, le=3600)
    """How often an open page fetches its figures again."""
    failed_logins_per_client: int = Field(10, ge=1)
    """Wrong keys one client address may send per ``failed_login_window_s``; past it the
    login answers 429 with ``Retry-After`` without looking at the key."""
    failed_login_window_s: float = Field(300.0, gt=0)
    """The window the failed logins are counted in."""
    redis_url: str | None = None
    """Redis for sessions; default: the top-level ``redis_url`` (none: in process)."""
    redis_prefix: str = "margin:"
    """Prefix of margin's keys in Redis."""
    redis_timeout_s: float = Field(1.0, gt=0)
    """Longest wait for Redis; past it the login or the request answers 503."""
