"""The learned correction: a high quantile of reported / bounded prompt tokens, never
below 1, per model, shared through Redis."""

from __future__ import annotations

import asyncio
import uuid

from margin.limits.correction import PromptCorrection


def test_quantile_never_below_one_and_only_after_enough_samples():
    c = PromptCorrection(quantile=0.9, window=100, min_samples=5)
    for _ in range(4):
        c.observe("m", 130, 100)
    assert c.factor("m") == 1.0  # four samples are not enough
    c.observe("m", 130, 100)
    assert c.factor("m") == 1.3
    low = PromptCorrection(0.9, 100, 5)
    for _ in range(10):
        low.observe("m", 50, 100)  # the bound overestimates: never scaled down
    low.refresh_local()
    assert low.factor("m") == 1.0 and low.factor("other") == 1.0


def test_a_high_quantile_ignores_a_rare_outlier_once_the_window_is_full():
    c = PromptCorrection(quantile=0.9, window=50, min_samples=10)
    c.observe("m", 300, 100)  # one odd request
    for _ in range(49):
        c.observe("m", 105, 100)
    c.refresh_local()
    assert c.factor("m") == 1.05


def test_replicas_share_samples_through_redis(redis_url):
    import redis.asyncio as aioredis

    prefix = f"margin-test-{uuid.uuid4().hex[:8]}:"

    async def main() -> tuple[float, float]:
        client = aioredis.Redis.from_url(redis_url)
        a, b = PromptCorrection(0.99, 100, 5), PromptCorrection(0.99, 100, 5)
        for _ in range(10):
            a.observe("gpt", 120, 100)
        await a.sync(client, prefix)
        b.observe("gpt", 100, 100)
        await b.sync(client, prefix)  # b learns from a's samples
        await client.aclose()
        return a.factor("gpt"), b.factor("gpt")

    fa, fb = asyncio.run(main())
    assert fa == 1.2 and fb == 1.2
