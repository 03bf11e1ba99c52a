"""Online calibration's rules and its stores (in process, and in a real Redis shared by two
"replicas")."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from margin.quality.calibration import Knob, Move, Rules, State, bounds, decide
from margin.quality.calibration_store import LocalStore, RedisStore

RULES = Rules(step=0.01, max_change=0.05, min_samples=50, min_samples_tighten=20,
              loosen_after_s=600)
CACHE = Knob("semantic_cache", 0.85, "higher_is_stricter", 0.97)
ROUTE = Knob("route:auto", 0.5, "lower_is_stricter", 0.95)


def state(judged: int, agreed: int, value: float = 0.85, changed: float = 0.0) -> State:
    return State(value, 3, changed, judged, agreed)


def test_tightens_at_once_when_agreement_falls_below_the_target():
    move = decide(CACHE, RULES, state(20, 18), now_s=1.0)  # 0.90 < 0.97
    assert move is not None and move.kind == "tighten" and move.value == 0.86
    # a route tightens by sending more to the top tier: its threshold goes down
    move = decide(ROUTE, RULES, state(20, 10, 0.5), now_s=1.0)
    assert move is not None and move.value == 0.49


def test_too_few_verdicts_or_the_hysteresis_band_hold():
    assert decide(CACHE, RULES, state(19, 10), now_s=1e6) is None  # not enough to tighten
    # 49 of 50 agree: above the target, but the lower bound (0.895) is not: hold
    assert decide(CACHE, RULES, state(50, 49), now_s=1e6) is None


def test_loosens_slowly_once_surely_above_the_target():
    sure = state(400, 400, changed=0.0)  # Wilson lower bound 0.9905
    assert decide(CACHE, RULES, sure, now_s=599.0) is None  # held too short a time
    move = decide(CACHE, RULES, sure, now_s=600.0)
    assert move is not None and move.kind == "loosen" and move.value == 0.84
    move = decide(ROUTE, RULES, state(400, 400, 0.5), now_s=600.0)
    assert move is not None and move.value == 0.51


def test_moves_stay_within_max_change_of_the_start():
    lo, hi = bounds(CACHE, RULES)
    assert (lo, hi) == (pytest.approx(0.80), pytest.approx(0.90))
    assert decide(CACHE, RULES, state(20, 0, value=hi), now_s=1.0) is None  # at the edge
    assert decide(CACHE, RULES, state(400, 400, value=lo), now_s=1e6) is None


def _stores(redis_url: str):
    import redis.asyncio as aioredis

    prefix = f"test-calib-{uuid.uuid4().hex[:8]}:"
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    return RedisStore(a, prefix), RedisStore(b, prefix), (a, b)


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_a_store_counts_at_the_current_version_and_moves_once(kind, redis_url):
    async def run() -> None:
        if kind == "local":
            one = two = LocalStore()
            clients = ()
        else:
            one, two, clients = _stores(redis_url)
        try:
            s = await one.load(CACHE, 10.0)
            assert (s.value, s.version, s.judged) == (0.85, 0, 0)
            await one.record(CACHE, 11.0, 0, True)
            s = await two.record(CACHE, 12.0, 0, False)   # the other replica's verdict
            assert (s.judged, s.agreed) == (2, 1)
            move = Move(0.86, "tighten", "test")
            won = await one.move(CACHE, s, move, 13.0)
            assert won is not None and (won.value, won.version) == (0.86, 1)
            assert await two.move(CACHE, s, Move(0.87, "tighten", "late"), 13.5) is None
            late = await two.record(CACHE, 14.0, 0, True)  # served at the old setting
            assert (late.value, late.version, late.judged) == (0.86, 1, 0)
            seen = await two.load(CACHE, 15.0)
            assert (seen.value, seen.version, seen.changed_at_s) == (0.86, 1, 13.0)
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(run())
