"""Which optimisation a finished request is named by, what it saved, and the reference
path it gets."""

from __future__ import annotations

import pytest

from margin.quality.optimizations import classify
from margin.types import RequestContext, Usage

PRICES = {"small": (1.0, 2.0), "large": (10.0, 20.0), "mid": (5.0, 10.0)}
TIERS = {"auto": ["small", "mid", "large"]}


def cost_of(model: str, usage: Usage) -> float:
    i, o = PRICES[model]
    return (usage.prompt_tokens * i + usage.completion_tokens * o) / 1e6


def ctx(**kw) -> RequestContext:
    c = RequestContext(request_id="r", endpoint="chat", headers={},
                       body={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    c.usage = Usage(100, 50)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_a_route_below_its_top_tier_saves_the_top_tiers_price_minus_the_cost():
    c = ctx(served_model="small", route="auto", cost_usd=cost_of("small", Usage(100, 50)),
            notes={"route": {"name": "auto", "router": "rules", "tier": 0}})
    s = classify(c, c.body, TIERS, cost_of)
    assert s.optimization == "route:auto" and s.reference_model == "large"
    assert s.saved_usd == pytest.approx((1000 + 1000 - 100 - 100) / 1e6)
    assert s.reference_body is c.body


def test_the_top_tier_or_a_fallback_to_it_saved_nothing():
    c = ctx(served_model="large", notes={"route": {"name": "auto", "router": "rules"}})
    assert classify(c, c.body, TIERS, cost_of) is None


def test_a_cascade_that_stopped_low_is_the_cascades_and_never_negative():
    c = ctx(served_model="mid", cost_usd=1.0,  # paid more than the top would have
            notes={"route": {"name": "auto", "router": "cascade", "tier": 1}})
    s = classify(c, c.body, TIERS, cost_of)
    assert s.optimization == "cascade:auto" and s.saved_usd == 0.0


def test_cache_hits_are_referenced_against_the_model_that_answered():
    c = ctx(cache="semantic", served_model="mid", saved_usd=0.004)
    s = classify(c, c.body, TIERS, cost_of)
    assert (s.optimization, s.saved_usd, s.reference_model) == ("semantic_cache", 0.004, "mid")
    c = ctx(cache="exact", served_model="mid", saved_usd=0.001)
    assert classify(c, c.body, TIERS, cost_of).optimization == "exact_cache"


def test_a_downgrade_is_referenced_against_the_model_before_it():
    c = ctx(served_model="small", notes={"budget_downgrade": {"from": "large", "to": "small"}})
    s = classify(c, c.body, TIERS, cost_of)
    assert s.optimization == "downgrade" and s.reference_model == "large"
    c = ctx(served_model="small", notes={"budget_downgrade": {"from": "auto", "to": "small"}})
    assert classify(c, c.body, TIERS, cost_of).reference_model == "large"  # a route's top


def test_compression_is_referenced_with_the_original_prompt():
    original = {"model": "mid", "messages": [{"role": "user", "content": "long " * 50}]}
    c = ctx(served_model="mid", notes={"compression_saved_usd": 0.0002})
    c.body = {"model": "mid", "messages": [{"role": "user", "content": "long"}]}
    s = classify(c, original, TIERS, cost_of)
    assert s.optimization == "compression" and s.reference_body == original
    assert s.reference_model == "mid" and s.saved_usd == 0.0002


def test_failures_embeddings_and_plain_requests_are_no_saving():
    assert classify(ctx(served_model="mid"), None, TIERS, cost_of) is None
    c = ctx(served_model="small", status=502, notes={"route": {"name": "auto"}})
    assert classify(c, c.body, TIERS, cost_of) is None
    c = ctx(endpoint="embeddings", cache="exact", served_model="mid", saved_usd=1.0)
    assert classify(c, c.body, TIERS, cost_of) is None
