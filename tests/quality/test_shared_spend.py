"""The shadow spend cap shared through a real Redis: two replicas' accounts are one, the
reservations of both are atomic together, and a Redis that does not answer refuses."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from margin.limits.redis_common import make_client
from margin.procs import free_port
from margin.quality.config import ShadowConfig
from margin.quality.shared_spend import RedisShadowSpend
from margin.quality.spend_cap import SpendCapUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 86400.0 * 20000 + 3600

    def __call__(self) -> float:
        return self.now


async def _replicas(url: str, cfg: ShadowConfig, clock: Clock, n: int = 2
                    ) -> tuple[list[RedisShadowSpend], list, str]:
    prefix = f"t_spend_{uuid.uuid4().hex[:10]}:"
    clients = [make_client(url, 2.0) for _ in range(n)]  # one connection pool per replica
    return [RedisShadowSpend(cfg, c, prefix, clock=clock) for c in clients], clients, prefix


async def _cleanup(clients: list, prefix: str) -> None:
    keys = [k async for k in clients[0].scan_iter(match=prefix + "*")]
    if keys:
        await clients[0].delete(*keys)
    for c in clients:
        await c.aclose()


def test_two_replicas_share_one_share_of_savings_cap(redis_url):
    async def go() -> None:
        clock = Clock()
        cfg = ShadowConfig(max_share_of_savings=0.2, daily_cap_usd=10)
        (a, b), clients, prefix = await _replicas(redis_url, cfg, clock)
        try:
            # nothing saved anywhere yet: nothing may be spent
            assert await a.reserve("route:auto", 0.01) is None
            b.credit("route:auto", 1.0)   # only b saved: 0.2 for both to spend
            await b._flush()
            held = await asyncio.gather(*(r.reserve("route:auto", 0.03)
                                          for _ in range(10) for r in (a, b)))
            # 6 × 0.03 = 0.18 fits, a 7th would be 0.21: one cap for both, not 0.2 each,
            # and a may spend what b saved
            assert sum(h is not None for h in held) == 6
            assert any(h is not None for h in held[0::2])
            assert await a.spent_usd() == pytest.approx(0.18)
            # b settles one of a's reservations' worth lower: the room is seen by a
            await b.settle(next(h for h in held if h is not None), 0.0)
            assert await a.reserve("route:auto", 0.03) is not None
            assert await a.reserve("route:auto", 0.03) is None
            # the day's hash expires by itself (a shadow from yesterday may still settle)
            ttl = await clients[0].ttl(a.key(a._today()))
            assert 86400 < ttl <= 2 * 86400
        finally:
            await _cleanup(clients, prefix)

    asyncio.run(go())


def test_the_daily_cap_binds_all_replicas_and_a_new_day_starts_afresh(redis_url):
    async def go() -> None:
        clock = Clock()
        cfg = ShadowConfig(max_share_of_savings=1.0, daily_cap_usd=0.1)
        (a, b), clients, prefix = await _replicas(redis_url, cfg, clock)
        try:
            a.credit("route:auto", 10.0)
            b.credit("semantic_cache", 10.0)
            # the credits travel with each replica's own reservation
            assert await a.reserve("route:auto", 0.06) is not None
            r = await b.reserve("semantic_cache", 0.06)
            assert r is None  # 0.12 > 0.1 across both replicas
            late = await b.reserve("semantic_cache", 0.04)
            assert late is not None
            clock.now += 86400
            await b.settle(late, 0.01)  # charged to yesterday, not today
            assert await a.spent_usd() == 0.0
            assert await a.reserve("route:auto", 0.01) is None  # no savings today yet
        finally:
            await _cleanup(clients, prefix)

    asyncio.run(go())


def test_unflushed_savings_reach_the_other_replica_with_the_periodic_flush(redis_url):
    async def go() -> None:
        clock = Clock()
        cfg = ShadowConfig(max_share_of_savings=0.5, daily_cap_usd=10)
        (a, b), clients, prefix = await _replicas(redis_url, cfg, clock)
        a.flush_s = 0.3
        try:
            await a.start()
            a.credit("compression", 1.0)
            assert await b.reserve("compression", 0.5) is None  # a has not flushed yet
            got = None
            for _ in range(100):
                got = await b.reserve("compression", 0.5)
                if got is not None:
                    break
                await asyncio.sleep(0.02)
            assert got is not None
            assert await b.reserve("compression", 0.01) is None
            await a.aclose()
        finally:
            await _cleanup(clients, prefix)

    asyncio.run(go())


def test_a_redis_that_does_not_answer_refuses_every_shadow():
    async def go() -> None:
        client = make_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)  # nothing listens
        spend = RedisShadowSpend(ShadowConfig(max_share_of_savings=1.0, daily_cap_usd=10),
                                 client, "t_down:", retry_after_s=60)
        spend.credit("route:auto", 5.0)
        with pytest.raises(SpendCapUnavailable):
            await spend.reserve("route:auto", 0.01)
        # the breaker is open now: refused at once, without waiting on the dead socket
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(SpendCapUnavailable):
            await spend.reserve("route:auto", 0.01)
        assert loop.time() - t0 < 0.1
        await client.aclose()

    asyncio.run(go())
