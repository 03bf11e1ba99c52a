"""The exact-match response cache: an in-process LRU (L1) in front of Redis (L2).

L1 is bounded by bytes and entries, with a TTL per entry. L2 is shared by every gateway
replica; an L2 hit is promoted to L1. Redis trouble never fails a request: the cache
stops asking Redis for a while, logs it once, counts it, and serves from L1 alone.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Callable

from margin.cache.config import ExactCacheConfig
from margin.tasks import TaskSet

log = logging.getLogger("margin.cache")

REDIS_PREFIX = "margin:exact:"


class LRUCache:
    """Bytes values with expiry; evicts least recently used beyond either bound."""

    def __init__(self, max_entries: int, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires_at, value = item
        if expires_at <= self.clock():
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._data:
            self._remove(key)
        self._data[key] = (self.clock() + ttl_s, value)
        self.bytes += len(value)
        while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._data))
            self._remove(oldest)

    def _remove(self, key: str) -> None:
        _, value = self._data.pop(key)
        self.bytes -= len(value)


class ExactCache:
    def __init__(self, cfg: ExactCacheConfig, redis_url: str | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.l1 = LRUCache(cfg.max_entries, cfg.max_bytes)
        self.redis_url = redis_url
        self._redis = None
        self._redis_down_until = 0.0
        self._on_event = on_event or (lambda _e: None)
        self._pending = TaskSet("exact cache L2 store")

    async def start(self) -> None:
        if self.redis_url:
            import redis.asyncio as aioredis

            t = self.cfg.redis_timeout_ms / 1000
            self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=t,
                                                  socket_connect_timeout=max(t, 0.2))

    async def aclose(self) -> None:
        await self._pending.drain()
        if self._redis is not None:
            await self._redis.aclose()

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: Exception) -> None:
        if time.monotonic() >= self._redis_down_until:
            log.warning("cache: Redis unavailable (%s); serving from the in-process cache "
                        "only for %.0f s", type(exc).__name__, self.cfg.redis_retry_after_s)
        self._redis_down_until = time.monotonic() + self.cfg.redis_retry_after_s
        self._on_event("cache_redis_error")

    async def get(self, key: str) -> tuple[bytes | None, str]:
        """(value, tier) where tier is "l1", "l2" or "" on a miss."""
        value = self.l1.get(key)
        if value is not None:
            return value, "l1"
        if not self._redis_usable():
            return None, ""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(REDIS_PREFIX + key)
            pipe.pttl(REDIS_PREFIX + key)
            value, pttl = await pipe.execute()
        except Exception as exc:  # any Redis trouble: a miss, never an error
            self._redis_failed(exc)
            return None, ""
        if value is None:
            return None, ""
        ttl_s = (pttl / 1000) if pttl and pttl > 0 else self.cfg.ttl_s
        self.l1.set(key, value, ttl_s)
        return value, "l2"

    def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store in L1 now and in Redis in the background (the answer is not held up)."""
        self.l1.set(key, value, ttl_s)
        if self._redis_usable():
            self._pending.spawn(self._put_l2(key, value, ttl_s))

    async def _put_l2(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._redis.set(REDIS_PREFIX + key, value, px=max(1, int(ttl_s * 1000)))
        except Exception as exc:
            self._redis_failed(exc)
