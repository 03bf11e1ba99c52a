"""The shadow spend cap: reservations hold the worst case so that shadows running at once
stay under both caps, settlement replaces it with the real cost, days start afresh."""

from __future__ import annotations

import asyncio

import pytest

from margin.quality.config import ShadowConfig
from margin.quality.spend_cap import ShadowSpend


run = asyncio.run


class Clock:
    def __init__(self) -> None:
        self.now = 86400.0 * 20000 + 3600

    def __call__(self) -> float:
        return self.now


def test_nothing_saved_nothing_spent():
    spend = ShadowSpend(ShadowConfig(max_share_of_savings=0.2, daily_cap_usd=10), Clock())
    assert run(spend.reserve("route:auto", 0.001)) is None
    spend.credit("semantic_cache", 1.0)  # another optimisation's savings do not count
    assert run(spend.reserve("route:auto", 0.001)) is None


def test_share_of_savings_bounds_concurrent_reservations():
    spend = ShadowSpend(ShadowConfig(max_share_of_savings=0.2, daily_cap_usd=10), Clock())
    spend.credit("route:auto", 1.0)  # allowance 0.2
    held = [run(spend.reserve("route:auto", 0.05)) for _ in range(6)]
    assert sum(h is not None for h in held) == 4  # the fifth would pass 0.2
    assert spend.allowance_usd("route:auto") == pytest.approx(0.0)
    # settling to the real (smaller) cost frees the difference
    run(spend.settle(held[0], 0.01))
    assert spend.allowance_usd("route:auto") == pytest.approx(0.04)
    assert run(spend.reserve("route:auto", 0.04)) is not None


def test_daily_cap_bounds_every_optimisation_together_and_resets_next_day():
    clock = Clock()
    spend = ShadowSpend(ShadowConfig(max_share_of_savings=1.0, daily_cap_usd=0.1), clock)
    spend.credit("route:auto", 10.0)
    spend.credit("semantic_cache", 10.0)
    assert run(spend.reserve("route:auto", 0.06)) is not None
    assert run(spend.reserve("semantic_cache", 0.06)) is None   # 0.12 > 0.1 in all
    assert run(spend.reserve("semantic_cache", 0.04)) is not None
    assert spend.spent_usd() == pytest.approx(0.1)
    clock.now += 86400
    assert run(spend.reserve("route:auto", 0.01)) is None       # no savings yet today
    spend.credit("route:auto", 1.0)
    assert run(spend.reserve("route:auto", 0.01)) is not None


def test_a_shadow_settling_after_midnight_is_charged_to_its_own_day():
    clock = Clock()
    spend = ShadowSpend(ShadowConfig(max_share_of_savings=1.0, daily_cap_usd=1.0), clock)
    spend.credit("compression", 1.0)
    r = run(spend.reserve("compression", 0.5))
    clock.now += 86400
    spend.credit("compression", 1.0)
    run(spend.settle(r, 0.3))
    assert spend.spent_usd() == 0.0
