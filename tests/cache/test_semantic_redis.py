"""Redis-backed semantic cache: replicas share entries; a dead Redis never raises."""

from __future__ import annotations

import asyncio
import os
import uuid

import numpy as np
import pytest

from margin.cache.semantic import SemanticCache, SemanticCacheConfig

REDIS_URL = "redis://127.0.0.1:6379/0"
DIM = 384


def _redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture
def prefix():
    if not _redis_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable and CI is set")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable (set CI=1 to make this a failure)")
    import redis

    p = f"margin-test:{uuid.uuid4().hex[:12]}:"
    yield p
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{p}*"))
    if keys:
        client.delete(*keys)


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def config(prefix: str) -> SemanticCacheConfig:
    # Cosine-only with a strict threshold: these tests are about replication, not scoring.
    return SemanticCacheConfig(enabled=True, verifier=False, guards=True, threshold=0.99,
                               redis_prefix=prefix)


async def _eventually(probe, within_s: float) -> float:
    """Seconds until ``probe()`` is truthy; fails after ``within_s``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await probe():
        if loop.time() - start > within_s:
            pytest.fail(f"not visible within {within_s} s")
        await asyncio.sleep(0.02)
    return loop.time() - start


def test_an_entry_written_by_one_replica_is_found_by_another_within_a_second(prefix) -> None:
    async def run() -> None:
        a = SemanticCache(config(prefix), redis_url=REDIS_URL)
        b = SemanticCache(config(prefix), redis_url=REDIS_URL)
        await a.start(wait_for_redis_s=2)
        await b.start(wait_for_redis_s=2)
        await a.insert("scope", "What is Redis?", vec(1), b"an in-memory store", ttl_s=60)

        async def b_sees_it() -> bool:
            hit = await b.lookup("scope", "What is Redis?", vec(1))
            return hit is not None and hit.value == b"an in-memory store"

        await _eventually(b_sees_it, within_s=1.0)
        assert await b.lookup("other-scope", "What is Redis?", vec(1)) is None
        assert a.redis_errors == 0 and b.redis_errors == 0
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_restarted_replica_rebuilds_its_index_from_redis(prefix) -> None:
    async def run() -> None:
        a = SemanticCache(config(prefix), redis_url=REDIS_URL)
        await a.start(wait_for_redis_s=2)
        for i in range(20):
            await a.insert("scope", f"question {i}", vec(i), b"%d" % i, ttl_s=60)
        await a.insert("scope", "short-lived", vec(99), b"gone", ttl_s=0.05)
        await a.close()
        await asyncio.sleep(0.1)

        fresh = SemanticCache(config(prefix), redis_url=REDIS_URL)
        await fresh.start(wait_for_redis_s=5)
        assert len(fresh) == 20
        hit = await fresh.lookup("scope", "question 7", vec(7))
        assert hit is not None and hit.value == b"7"
        assert await fresh.lookup("scope", "short-lived", vec(99)) is None
        await fresh.close()

    asyncio.run(run())


def test_redis_down_never_raises_and_is_counted() -> None:
    async def run() -> None:
        # Nothing listens on port 1: every Redis call fails fast.
        cache = SemanticCache(config("margin-test-down:"), redis_url="redis://127.0.0.1:1/0")
        await cache.start(wait_for_redis_s=0.5)
        await cache.insert("scope", "q", vec(3), b"v", ttl_s=60)
        hit = await cache.lookup("scope", "q", vec(3))
        assert hit is not None and hit.value == b"v"  # served in-process
        assert cache.redis_errors >= 1
        assert cache.redis_healthy is False
        await cache.close()

    asyncio.run(run())


def test_insert_nowait_reaches_another_replica(prefix) -> None:
    async def run() -> None:
        a = SemanticCache(config(prefix), redis_url=REDIS_URL)
        b = SemanticCache(config(prefix), redis_url=REDIS_URL)
        await a.start(wait_for_redis_s=2)
        await b.start(wait_for_redis_s=2)
        key = a.insert_nowait("scope", "from a callback", vec(5), b"cb", ttl_s=60)
        assert (await a.lookup("scope", "from a callback", vec(5))).key == key  # type: ignore[union-attr]

        async def b_sees_it() -> bool:
            return await b.lookup("scope", "from a callback", vec(5)) is not None

        await _eventually(b_sees_it, within_s=1.0)
        await a.close()
        await b.close()

    asyncio.run(run())
