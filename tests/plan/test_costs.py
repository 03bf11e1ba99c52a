"""The monthly calculator to the cent, growth, break-even, and spend by user/feature."""

from __future__ import annotations

import pytest

from margin.plan.costs import (CostInputs, SelfHosted, TokenPrices, break_even, growth, project,
                               unit_economics)
from margin.plan.traces import load_trace

SEED = CostInputs(daily_requests=100_000, input_tokens=500, output_tokens=300,
                  prices=TokenPrices(0.03, 0.06), cache_rate=0.45, cached_usd=0.0001)


def test_seed_example_to_the_cent() -> None:
    out = project(SEED)
    assert out.per_request_usd == 0.018195
    assert out.monthly_cost_usd == 54585.0
    assert out.uncached_per_request_usd == pytest.approx(0.033)
    assert out.monthly_requests == 3_000_000


def test_no_cache_is_the_plain_token_bill() -> None:
    out = project(CostInputs(1000, 1000, 1000, TokenPrices(0.001, 0.002)))
    assert out.per_request_usd == pytest.approx(0.003)
    assert out.monthly_cost_usd == pytest.approx(90.0)


def test_growth_compounds_monthly() -> None:
    rows = growth(SEED, 0.10, 3)
    assert [r.requests for r in rows] == [3_000_000, 3_300_000, 3_630_000]
    assert rows[2].cost_usd == pytest.approx(0.018195 * 3_630_000, abs=0.01)
    assert rows[2].cumulative_usd == pytest.approx(sum(r.cost_usd for r in rows), abs=0.02)


def test_break_even_is_where_one_gpu_pays_for_itself() -> None:
    sh = SelfHosted(gpu_hour_usd=2.0, gpu_tokens_per_s=1000.0, utilisation=0.5, min_gpus=1)
    out = break_even(SEED, sh)
    # One always-on GPU: 720 h x $2 = $1,440 a month; the API costs $0.018195 x 30 per daily
    # request, so break-even is near 1440 / (0.018195 x 30) = 2,638 requests/day.
    assert out.break_even_daily_requests == pytest.approx(2638, rel=0.011)
    # 100k requests/day x 800 tokens = 926 tokens/s -> 2 GPUs at 500 tokens/s each.
    assert out.self_hosted_at_current.gpus == 2


def test_break_even_absent_when_gpus_cost_more_per_request() -> None:
    cheap_api = CostInputs(1000, 100, 100, TokenPrices(0.00001, 0.00001))
    out = break_even(cheap_api, SelfHosted(gpu_hour_usd=10.0, gpu_tokens_per_s=10.0))
    assert out.break_even_daily_requests is None


def test_unit_economics_from_ledger(ledger_path) -> None:
    trace = load_trace(str(ledger_path))
    econ = unit_economics(trace, TokenPrices())
    assert econ.cost_source == "ledger cost_usd"
    assert econ.requests == 400
    users = econ.by["user"]
    assert users.count == 3
    assert users.top[0].name == "alice"
    assert users.top[0].share == pytest.approx(0.6, abs=0.03)
    # 3 users: the top 20 % is one user, alice, about 60 % of the cost.
    assert users.pareto.top_20pct_share == pytest.approx(users.top[0].share)
    assert econ.by["feature"].count == 2
    assert econ.per_request_usd == pytest.approx(econ.total_usd / 400)
