"""Checking a presented key on the request path, without a database round trip per request.

Verified keys are cached in-process. Revocation must still reach every replica at once:

- with Redis, every change to a key (revoke, update) increments a counter there
  (``<prefix>keys:epoch``); each request reads it (one GET) and a changed value makes
  every cached key stale, so the next request re-reads its row;
- without Redis, a cached key is re-read from the database after ``cache_ttl_s``.

A re-read row whose hash is unchanged is trusted from the in-memory digest of the secret,
so scrypt runs once per key per process. Concurrent first uses of one key share a single
lookup. Database reads run in a worker thread.

Failed checks are made cheap for the gateway and slow for a guesser: a refused (key id,
secret digest) is refused again from memory for ``negative_cache_ttl_s``; failures are
counted per key id and per client address, and past ``failed_per_key`` /
``failed_per_client`` in ``failed_window_s`` the next tries get 429 with ``Retry-After``
before any lookup or hash; at most ``max_concurrent_hashes`` scrypt runs at once, each in a
worker thread. Digests are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from margin.auth.config import AuthConfig
from margin.auth.keys import KeyRecord, KeyStore, check_secret, parse_token
from margin.auth.throttle import FailureThrottle
from margin.errors import AuthenticationError, MarginError, Overloaded, RateLimited
from margin.limits.redis_common import REDIS_ERRORS, Breaker, make_client
from margin.metering.db import connect

log = logging.getLogger("margin.auth")

EPOCH_KEY = "keys:epoch"


@dataclass(slots=True)
class _Cached:
    record: KeyRecord
    secret_hash: str
    digest: bytes  # sha256 of the secret, kept in memory only
    loaded_at: float
    epoch: Any


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyVerifier:
    def __init__(self, db_url: str, cfg: AuthConfig, redis_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.db_url = db_url
        self.cfg = cfg
        self.redis_url = redis_url
        self.clock = clock
        self.wall = wall
        self._store: KeyStore | None = None
        self._db_lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._negative: dict[tuple[str, bytes], float] = {}
        self._inflight: dict[tuple[str, bytes], asyncio.Future[KeyRecord]] = {}
        self._redis: Any = None
        self._breaker = Breaker("keys", 5.0, clock)
        self._epoch_key = cfg.redis_prefix + EPOCH_KEY
        self._epoch: Any = None
        self._per_key = FailureThrottle(cfg.failed_per_key, cfg.failed_window_s, clock)
        self._per_client = FailureThrottle(cfg.failed_per_client, cfg.failed_window_s, clock)
        self._hashing = asyncio.Semaphore(cfg.max_concurrent_hashes)
        self.on_event = on_event or (lambda event: None)
        self.secrets_checked = 0  # scrypt runs in this process

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except Exception as exc:  # keys are looked up again on first use
            log.warning("key database unavailable at start (%s); keys cannot be verified "
                        "until it answers", type(exc).__name__)
        if self.redis_url:
            self._redis = make_client(self.redis_url, self.cfg.redis_timeout_s)

    def _open(self) -> KeyStore:
        with self._db_lock:
            if self._store is None:
                self._store = KeyStore(connect(self.db_url))
            return self._store

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._store is not None:
            self._store.db.close()

    async def run_db(self, fn: Callable[[KeyStore], Any]) -> Any:
        """Run ``fn(store)`` in a worker thread, one at a time (one connection)."""
        def call() -> Any:
            store = self._open()
            with self._db_lock:
                try:
                    return fn(store)
                except MarginError:  # bad input: the connection is fine
                    store.db.rollback()
                    raise
                except Exception:  # the connection may be broken: open a new one next time
                    store.db.close()
                    if self._store is store:
                        self._store = None
                    raise
        return await asyncio.to_thread(call)

    # -- the request path ------------------------------------------------------------
    def cached(self, key_id: str | None) -> KeyRecord | None:
        entry = self._cache.get(key_id) if key_id else None
        return entry.record if entry else None

    async def _current_epoch(self) -> tuple[bool, Any]:
        """(shared, epoch): shared is False when Redis is off or failing."""
        if self._redis is None or not self._breaker.closed:
            return False, None
        try:
            return True, await self._redis.get(self._epoch_key)
        except REDIS_ERRORS as exc:
            self._breaker.fail(exc)
            return False, None

    async def verify(self, token: str, client: str | None = None) -> KeyRecord:
        """The record of the key ``token``, or 401; 429 when its id or ``client`` (the
        caller's address) has failed too often lately."""
        parsed = parse_token(token)
        if parsed is None:
            raise AuthenticationError("Malformed API key: expected mk-<id>-<secret>.")
        key_id, secret = parsed
        digest = _digest(secret)
        now = self.clock()
        shared, epoch = await self._current_epoch()
        entry = self._cache.get(key_id)
        known = entry is not None and hmac.compare_digest(entry.digest, digest)
        if known:
            ttl = self.cfg.redis_cache_ttl_s if shared else self.cfg.cache_ttl_s
            if now - entry.loaded_at < ttl and (not shared or entry.epoch == epoch):
                return self._usable(entry.record)
        until = self._negative.get((key_id, digest))
        if until is not None:
            if now < until:
                raise AuthenticationError("Incorrect API key provided.")
            del self._negative[(key_id, digest)]
        if not known:  # a secret verified before is re-read, not guessed: never throttled
            self._throttle(key_id, client)
        flight = self._inflight.get((key_id, digest))
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._inflight[(key_id, digest)] = flight
            try:
                record = await self._load(key_id, secret, digest, epoch, client)
                flight.set_result(record)
            except BaseException as exc:
                flight.set_exception(exc)
                flight.exception()  # retrieved: no "never retrieved" warning when alone
                raise
            finally:
                del self._inflight[(key_id, digest)]
            return self._usable(record)
        return self._usable(await asyncio.shield(flight))

    def _throttle(self, key_id: str, client: str | None) -> None:
        waits = [self._per_key.retry_after_s(key_id)]
        if client:
            waits.append(self._per_client.retry_after_s(client))
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            self.on_event("auth_throttled")
            raise RateLimited("Too many failed API key checks; try again later.",
                              retry_after_s=wait, code="too_many_failed_auth")

    def _usable(self, record: KeyRecord) -> KeyRecord:
        problem = record.problem(self.wall())
        if problem:
            raise AuthenticationError(problem)
        return record

    async def _check_secret(self, secret: str, secret_hash: str, key_id: str,
                            client: str | None) -> bool:
        async with self._hashing:
            # Failures may have piled up while this one queued: the limit holds exactly.
            self._throttle(key_id, client)
            self.secrets_checked += 1
            self.on_event("auth_secret_checked")
            return await asyncio.to_thread(check_secret, secret, secret_hash)

    async def _load(self, key_id: str, secret: str, digest: bytes, epoch: Any,
                    client: str | None = None) -> KeyRecord:
        try:
            found = await self.run_db(lambda s: s.fetch(key_id))
        except Exception as exc:
            stale = self._cache.get(key_id)
            if stale is not None and hmac.compare_digest(stale.digest, digest):
                # The database is away: keep serving a key we verified before.
                log.warning("key database unavailable (%s); using the cached key %s",
                            type(exc).__name__, key_id)
                return stale.record
            raise Overloaded("cannot verify the API key now (key database unavailable)",
                             retry_after_s=2.0) from None
        if found is None:
            self._remember_failure(key_id, digest, client)
            raise AuthenticationError("Incorrect API key provided.")
        record, secret_hash = found
        previous = self._cache.get(key_id)
        trusted = (previous is not None and hmac.compare_digest(previous.digest, digest)
                   and hmac.compare_digest(previous.secret_hash, secret_hash))
        if not trusted and not await self._check_secret(secret, secret_hash, key_id, client):
            self._remember_failure(key_id, digest, client)
            raise AuthenticationError("Incorrect API key provided.")
        self._cache[key_id] = _Cached(record, secret_hash, digest, self.clock(), epoch)
        return record

    def _remember_failure(self, key_id: str, digest: bytes, client: str | None) -> None:
        now = self.clock()
        if len(self._negative) > 10_000:
            self._negative = {k: t for k, t in self._negative.items() if t > now}
            if len(self._negative) > 10_000:
                self._negative.clear()
        self._negative[(key_id, digest)] = now + self.cfg.negative_cache_ttl_s
        self._per_key.failed(key_id)
        if client:
            self._per_client.failed(client)

    # -- changes ---------------------------------------------------------------------
    async def changed(self, key_id: str) -> None:
        """A key was revoked or updated here: forget it, and tell every other replica."""
        self._cache.pop(key_id, None)
        if self._redis is not None:
            try:
                await self._redis.incr(self._epoch_key)
            except REDIS_ERRORS as exc:
                self._breaker.fail(exc)


def bump_epoch_sync(redis_url: str, prefix: str = "margin:") -> None:
    """For the CLI: tell running gateways that a key changed."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.incr(prefix + EPOCH_KEY)
    finally:
        client.close()
