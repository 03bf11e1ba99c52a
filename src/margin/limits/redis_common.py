"""The Redis client the limits and keys share, and a breaker for when Redis fails.

Each replica keeps one async client (a small connection pool). When a call fails, the
breaker opens for ``retry_after_s``: callers fall back (to per-replica state, or a 503)
without waiting on a dead Redis for every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

log = logging.getLogger("margin.limits")

REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
try:
    from redis.exceptions import RedisError

    REDIS_ERRORS = (*REDIS_ERRORS, RedisError)
except ImportError:  # pragma: no cover - redis is a core dependency
    pass


def make_client(url: str, timeout_s: float, max_connections: int = 256) -> Any:
    import redis.asyncio as aioredis

    # A blocking pool: a burst of requests waits (up to the timeout) for a connection
    # instead of failing with "too many connections" and sending the replica to its
    # local fallback.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) its pool


class Breaker:
    def __init__(self, name: str, retry_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.open_until = 0.0
        self.failures = 0
        self._last_log = -1e9

    @property
    def closed(self) -> bool:
        return self.clock() >= self.open_until

    def fail(self, exc: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        self.open_until = now + self.retry_after_s
        if now - self._last_log > 30:  # one line per half minute, not one per request
            self._last_log = now
            log.warning("%s: Redis unavailable (%s: %s); falling back for %.0f s", self.name,
                        type(exc).__name__, exc, self.retry_after_s)
