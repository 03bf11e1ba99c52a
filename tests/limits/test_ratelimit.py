"""Sliding-window rate limits: exact per 60 s, all-or-nothing across limits, token
reconciliation; the Redis version enforces one limit for several clients."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from margin.limits.admission import Admission
from margin.limits.budgets import BudgetItem
from margin.limits.config import LimitsConfig
from margin.limits.ratelimit import Limit, LocalWindows, format_reset, headers


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def rpm(key: str, n: int) -> Limit:
    return Limit(key, n, 1, "requests", f"{key} rpm")


def test_never_more_than_the_limit_in_any_60s_window():
    clock = Clock()
    w = LocalWindows(clock=clock)
    admitted: list[float] = []
    # Hammer at 5 requests per second for 3 minutes (a fixed window would admit 2x at
    # its boundary, a token bucket up to ~2x in a minute).
    for i in range(900):
        clock.t = 1000.0 + i * 0.2
        if w.acquire([rpm("k", 60)], f"r{i}").allowed:
            admitted.append(clock.t)
    assert len(admitted) >= 60 * 3 - 1
    for i, t in enumerate(admitted):
        in_window = [a for a in admitted[i:] if a < t + 60.0]
        assert len(in_window) <= 60


def test_burst_then_retry_after_points_at_the_oldest_entry():
    clock = Clock()
    w = LocalWindows(clock=clock)
    for i in range(10):
        clock.t = 1000.0 + i
        assert w.acquire([rpm("k", 10)], f"r{i}").allowed
    clock.t = 1015.0
    d = w.acquire([rpm("k", 10)], "late")
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(45.0)  # the first entry (t=1000) leaves at 1060
    assert d.states[0].remaining == 0
    clock.t = 1060.01
    assert w.acquire([rpm("k", 10)], "later").allowed


def test_all_or_nothing_across_limits():
    clock = Clock()
    w = LocalWindows(clock=clock)
    for i in range(3):
        assert w.acquire([rpm("user", 100), rpm("key", 3)], f"r{i}").allowed
    d = w.acquire([rpm("user", 100), rpm("key", 3)], "r3")
    assert not d.allowed and d.denied is not None and d.denied.key == "key"
    # The refused request was not charged to the user's limit either.
    d = w.acquire([rpm("user", 100)], "r4")
    assert d.states[0].used == 4


def test_tokens_charged_up_front_and_reconciled():
    clock = Clock()
    w = LocalWindows(clock=clock)
    tpm = Limit("t", 1000, 300, "tokens", "tpm")
    assert w.acquire([tpm], "a").allowed
    w.adjust(["t"], "a", 400)  # the answer took 400 more tokens than the prompt estimate
    d = w.acquire([Limit("t", 1000, 400, "tokens", "tpm")], "b")
    assert not d.allowed  # 700 used + 400 > 1000
    w.adjust(["t"], "a", -700)  # refund (e.g. an error): back to 0
    assert w.acquire([Limit("t", 1000, 400, "tokens", "tpm")], "c").allowed
    too_big = w.acquire([Limit("t", 1000, 1001, "tokens", "tpm")], "d")
    assert not too_big.allowed and too_big.retry_after_s == 60.0


def test_headers_follow_openai_names():
    clock = Clock()
    w = LocalWindows(clock=clock)
    d = w.acquire([rpm("a", 10), rpm("b", 5), Limit("t", 100, 30, "tokens", "tpm")], "r")
    h = headers(d.states)
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "4"
    assert h["x-ratelimit-reset-requests"] == "1m0s"
    assert h["x-ratelimit-limit-tokens"] == "100"
    assert h["x-ratelimit-remaining-tokens"] == "70"
    assert format_reset(0.02) == "20ms" and format_reset(1.5) == "1.5s"


def test_redis_windows_enforce_one_limit_for_many_clients(redis_url):
    import redis.asyncio as aioredis

    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:")

    async def main() -> tuple[int, list]:
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(3)]
        replicas = [Admission(cfg, c) for c in clients]
        lim = [rpm("key", 60), Limit("tok", 10_000, 10, "tokens", "tpm")]
        results = await asyncio.gather(*(replicas[i % 3].admit(f"r{i}", lim, ())
                                         for i in range(100)))
        ok = sum(1 for r in results if r.admitted)
        await replicas[0].redis_windows.adjust(["tok"], "r0", 90)
        after = await replicas[1].admit("x", [Limit("tok", 10_000, 0, "tokens", "tpm")], ())
        for c in clients:
            await c.aclose()
        return ok, [r.rate for r in results if not r.admitted][:1] + [after.rate]

    ok, (refused, after) = asyncio.run(main())
    assert ok == 60
    assert refused.denied.key == "key" and 59 < refused.retry_after_s <= 60.0
    assert refused.states[0].remaining == 0
    assert after.states[0].used == 60 * 10 + 90


def test_local_admission_takes_back_rate_charges_when_a_budget_refuses():
    adm = Admission(LimitsConfig())
    team = BudgetItem(id="t", scope="team", name="t", period="day", limit_nusd=100,
                      amount_nusd=60, baseline_nusd=0, expires_at_s=4e9)
    assert adm._admit_local("a", [rpm("k", 10)], [team]).admitted
    refused = adm._admit_local("b", [rpm("k", 10)], [team])
    assert not refused.admitted and refused.budget.denied is team
    assert refused.rate.states[0].used == 1  # "b" was not charged to the rate limit
    assert adm.windows._logs["k"].total == 1
