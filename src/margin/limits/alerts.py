"""Alerts: a structured log line and an optional webhook, each fired once.

"Once" holds across replicas and restarts: before firing, a replica claims the alert's
key (``budget:team:research:month:2025-03-01:80``) in a shared latch: Redis ``SET NX``
when Redis is configured, else a row in the ledger database (``alerts_sent``, insert
that ignores duplicates), else process memory. Only the replica that wins the claim
fires. Everything runs in background tasks: a request never waits for an alert, and the
webhook is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Protocol

import orjson

from margin.limits.config import AlertConfig
from margin.limits.redis_common import REDIS_ERRORS
from margin.metering.db import Database, connect
from margin.tasks import TaskSet

log = logging.getLogger("margin.alerts")


class Latch(Protocol):
    async def claim(self, key: str, ttl_s: float, payload: dict[str, Any]) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryLatch:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    async def claim(self, key: str, ttl_s: float, payload: dict[str, Any]) -> bool:
        now = time.time()
        if self._seen.get(key, 0.0) > now:
            return False
        self._seen[key] = now + ttl_s
        return True

    async def aclose(self) -> None:
        return None


class RedisLatch:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix + "alert:"
        self.fallback = MemoryLatch()

    async def claim(self, key: str, ttl_s: float, payload: dict[str, Any]) -> bool:
        try:
            return bool(await self.client.set(self.prefix + key, orjson.dumps(payload),
                                              nx=True, ex=max(int(ttl_s), 1)))
        except REDIS_ERRORS as exc:
            # Better a possible duplicate than a budget alert nobody sees.
            log.warning("alert latch: Redis unavailable (%s); deciding locally",
                        type(exc).__name__)
            return await self.fallback.claim(key, ttl_s, payload)

    async def aclose(self) -> None:
        return None


class DatabaseLatch:
    """Claims as rows of ``alerts_sent``; the primary key makes the insert a latch."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._db: Database | None = None
        self._lock = threading.Lock()
        self.fallback = MemoryLatch()

    def _claim_sync(self, key: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            if self._db is None:
                from margin.metering.migrations import migrate

                self._db = connect(self.db_url)
                migrate(self._db)
            db = self._db
            try:
                verb = ("INSERT INTO alerts_sent (alert_key, sent_at, payload) VALUES (?, ?, ?) "
                        "ON CONFLICT (alert_key) DO NOTHING")
                cur = db.execute(verb, (key, time.time(), orjson.dumps(payload).decode()))
                db.commit()
                return cur.rowcount == 1
            except Exception:
                db.rollback()
                db.close()
                self._db = None
                raise

    async def claim(self, key: str, ttl_s: float, payload: dict[str, Any]) -> bool:
        try:
            return await asyncio.to_thread(self._claim_sync, key, payload)
        except Exception as exc:
            log.warning("alert latch: database unavailable (%s); deciding locally",
                        type(exc).__name__)
            return await self.fallback.claim(key, ttl_s, payload)

    async def aclose(self) -> None:
        if self._db is not None:
            self._db.close()


class Alerter:
    def __init__(self, cfg: AlertConfig, latch: Latch) -> None:
        self.cfg = cfg
        self.latch = latch
        self.tasks = TaskSet("alerts")
        self._session: Any = None
        self.fired = 0
        self.webhook_failures = 0

    async def start(self) -> None:
        """Nothing to open up front: the webhook session opens with the first alert."""

    def fire(self, key: str, ttl_s: float, event: dict[str, Any]) -> None:
        """Claim ``key`` and, if this replica wins, log and post ``event``; never blocks."""
        self.tasks.spawn(self._fire(key, ttl_s, event))

    async def _fire(self, key: str, ttl_s: float, event: dict[str, Any]) -> None:
        try:
            event = {**event, "alert_key": key, "ts": round(time.time(), 3)}
            if not await self.latch.claim(key, ttl_s, event):
                return
            self.fired += 1
            log.warning("%s", orjson.dumps(event).decode())
            if self.cfg.webhook_url:
                await self._post(event)
        except Exception:  # an alert must never take the gateway down; it is logged
            log.exception("alert %s failed", key)

    async def _post(self, event: dict[str, Any]) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.webhook_timeout_s))
        body = orjson.dumps(event)
        delay = self.cfg.webhook_backoff_s
        attempts = self.cfg.webhook_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._session.post(self.cfg.webhook_url, data=body, headers={
                        "content-type": "application/json"}) as resp:
                    if resp.status < 300:
                        return
                    retryable = resp.status >= 500 or resp.status == 429
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                retryable, problem = True, f"{type(exc).__name__}: {exc}"
            if not retryable or attempt == attempts:
                self.webhook_failures += 1
                log.error("alert webhook %s gave up after %d attempt(s): %s",
                          self.cfg.webhook_url, attempt, problem)
                return
            await asyncio.sleep(delay)
            delay *= 2

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (a little) for alerts in flight; used at shutdown and by tests."""
        await self.tasks.drain(timeout_s)

    async def aclose(self) -> None:
        await self.tasks.aclose(2.0)
        if self._session is not None:
            await self._session.close()
        await self.latch.aclose()


def sent_alerts(db: Database, prefix: str) -> list[tuple[str, float, dict[str, Any]]]:
    """(key, sent at, payload) of the alerts claimed in ``alerts_sent`` whose key starts
    with ``prefix`` (the database latch's record; a Redis latch keeps none here)."""
    # LIKE's _ and % may match more than the prefix: the startswith below decides.
    rows = db.query("SELECT alert_key, sent_at, payload FROM alerts_sent "
                    "WHERE alert_key LIKE ? ORDER BY sent_at", (prefix + "%",))
    out = []
    for key, sent_at, payload in rows:
        if not str(key).startswith(prefix):
            continue
        try:
            body = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            body = {}
        out.append((str(key), float(sent_at), body if isinstance(body, dict) else {}))
    return out
