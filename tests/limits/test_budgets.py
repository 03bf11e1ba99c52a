"""Budget reservations: atomic, all-or-nothing, settled to the real cost, expiring with a
dead replica; calendar periods in a time zone."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest

from margin.limits.admission import Admission
from margin.limits.budgets import BudgetItem, LocalBudgets, to_nusd
from margin.limits.config import LimitsConfig
from margin.limits.periods import PeriodClock, period_bounds


def item(id_: str, limit_usd: float, amount_usd: float, baseline_usd: float = 0.0,
         force: bool = False) -> BudgetItem:
    return BudgetItem(id=id_, scope="team", name=id_, period="day",
                      limit_nusd=to_nusd(limit_usd), amount_nusd=to_nusd(amount_usd),
                      baseline_nusd=to_nusd(baseline_usd), expires_at_s=4e9, force=force)


def test_reservations_never_exceed_the_limit_and_settle_to_the_real_cost():
    b = LocalBudgets(clock=lambda: 100.0)
    team = item("t", 1.0, 0.3)
    results = [b.reserve([team], f"r{i}", 60) for i in range(5)]
    assert [r.ok for r in results] == [True, True, True, False, False]
    assert results[3].spent_nusd == (0,) and results[3].reserved_nusd == (to_nusd(0.9),)
    # The three finish, each costing 0.1 of the 0.3 reserved: room for more.
    for i in range(3):
        b.settle([team], f"r{i}", to_nusd(0.1))
    assert b.spent("t") == to_nusd(0.3)
    assert [b.reserve([team], f"s{i}", 60).ok for i in range(3)] == [True, True, False]
    b.settle([team], "s0", 0)  # an error releases its reservation
    assert b.reserve([team], "s3", 60).ok


def test_all_budgets_accept_or_none_is_charged():
    b = LocalBudgets(clock=lambda: 100.0)
    big, small = item("big", 10.0, 0.5), item("small", 0.6, 0.5)
    assert b.reserve([big, small], "a", 60).ok
    r = b.reserve([big, small], "b", 60)
    assert not r.ok and r.denied is small
    assert r.reserved_nusd[0] == to_nusd(0.5)  # big was not charged for the refused request


def test_baseline_from_the_ledger_and_forced_reservations():
    b = LocalBudgets(clock=lambda: 100.0)
    assert not b.reserve([item("x", 1.0, 0.2, baseline_usd=0.9)], "a", 60).ok
    assert b.reserve([item("x", 1.0, 0.2, baseline_usd=0.9, force=True)], "b", 60).ok
    b.raise_floor(item("x", 1.0, 0.0), to_nusd(0.95))
    assert b.spent("x") == to_nusd(0.95)


def test_a_dead_replicas_reservation_expires():
    now = [100.0]
    b = LocalBudgets(clock=lambda: now[0])
    team = item("t", 1.0, 0.6)
    assert b.reserve([team], "lost", 30).ok
    assert not b.reserve([team], "next", 30).ok
    now[0] = 131.0
    assert b.reserve([team], "next", 30).ok
    b.settle([team], "lost", to_nusd(0.2))  # a very late settlement still counts its cost
    assert b.spent("t") == to_nusd(0.2)


def test_calendar_periods_in_a_time_zone():
    paris = ZoneInfo("Europe/Paris")
    # 2025-03-30 is the spring-forward day in Paris: 23 hours long.
    ts = dt.datetime(2025, 3, 30, 12, 0, tzinfo=paris).timestamp()
    day = period_bounds("day", ts, paris)
    assert day.label == "2025-03-30" and day.end_s - day.start_s == 23 * 3600
    week = period_bounds("week", ts, paris)
    assert week.label == "2025-03-24"  # Monday
    month = period_bounds("month", dt.datetime(2025, 12, 31, 23, 30, tzinfo=paris).timestamp(),
                          paris)
    assert month.label == "2025-12-01"
    assert month.end_s == dt.datetime(2026, 1, 1, tzinfo=paris).timestamp()
    # 23:30 UTC on Jan 31 is already February in Paris.
    feb = period_bounds("month", dt.datetime(2025, 1, 31, 23, 30, tzinfo=dt.timezone.utc)
                        .timestamp(), paris)
    assert feb.label == "2025-02-01"
    clock = PeriodClock("Europe/Paris")
    assert clock.bounds("day", ts) == day and clock.bounds("day", day.end_s).label == "2025-03-31"


def test_redis_reservations_are_atomic_across_clients(redis_url):
    import redis.asyncio as aioredis

    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:")

    async def main() -> tuple[int, int, int]:
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
        replicas = [Admission(cfg, c) for c in clients]
        team = item("team:x:day:2025-01-01", 1.0, 0.1, baseline_usd=0.2)
        results = await asyncio.gather(*(replicas[i % 4].admit(f"r{i}", (), [team])
                                         for i in range(50)))
        ok = [f"r{i}" for i, r in enumerate(results) if r.admitted]
        await asyncio.gather(*(replicas[0].redis_budgets.settle([team], rid, to_nusd(0.05))
                               for rid in ok))
        spent = await replicas[1].redis_budgets.spent(team.id)
        again = await replicas[2].admit("again", (), [team])
        for c in clients:
            await c.aclose()
        return len(ok), spent, again.budget.reserved_nusd[0]

    ok, spent, reserved = asyncio.run(main())
    assert ok == 8  # (1.0 - 0.2 already spent) / 0.1
    assert spent == to_nusd(0.2 + 8 * 0.05)
    assert reserved == to_nusd(0.1)  # only the new one is held


@pytest.mark.parametrize("usd", [0.1, 1e-6, 26e-6, 123.456789])
def test_nano_dollars_round_trip(usd):
    assert to_nusd(usd) / 1e9 == pytest.approx(usd, abs=1e-9)
    assert to_nusd(usd, round_up=True) >= to_nusd(usd)


def test_redis_holds_of_a_dead_replica_expire(redis_url):
    import redis.asyncio as aioredis

    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:",
                       reservation_ttl_s=0.3)

    async def main() -> list[bool]:
        client = aioredis.Redis.from_url(redis_url)
        adm = Admission(cfg, client)
        team = item("team:y:day:2025-01-01", 1.0, 0.6)
        seen = [(await adm.admit("lost", (), [team])).admitted,
                (await adm.admit("next", (), [team])).admitted]
        await asyncio.sleep(0.4)
        again = await adm.admit("later", (), [team])
        seen += [again.admitted, again.budget.reserved_nusd[0] == to_nusd(0.6)]
        await client.aclose()
        return seen

    assert asyncio.run(main()) == [True, False, True, True]


def test_redis_counters_stay_exact_for_large_budgets(redis_url):
    import redis.asyncio as aioredis

    cfg = LimitsConfig(redis_prefix=f"margin-test-{uuid.uuid4().hex[:8]}:")

    async def main() -> tuple[int, int]:
        client = aioredis.Redis.from_url(redis_url)
        adm = Admission(cfg, client)
        big = item("team:big:month:2025-01-01", 5_000_000.0, 123_456.789012345,
                   baseline_usd=1_234_567.000000001)
        first = await adm.admit("a", (), [big])
        second = await adm.admit("b", (), [big])
        await client.aclose()
        return first.budget.reserved_nusd[0], second.budget.reserved_nusd[0]

    one, two = asyncio.run(main())
    assert one == to_nusd(123_456.789012345)
    assert two == 2 * one  # a Lua tostring would have rounded these to 14 digits
