"""The roadmap: savings compound, payback orders the steps, evidence is stated."""

from __future__ import annotations

import pytest

from margin.plan.traces import load_trace
from margin.plan.whatif import WhatIfAssumptions, duplicate_prompt_share, roadmap


def test_savings_compound_instead_of_adding() -> None:
    a = WhatIfAssumptions(exact_hit_rate=0.5, semantic_extra_hit_rate=0.5, tier_share=0.0,
                          compression_input_cut=0.0, input_cost_share=0.5)
    rm = roadmap(1000.0, 0.0, None, a)
    names = [s.name for s in rm.steps]
    assert names[:2] == ["exact cache", "semantic cache"]     # shortest payback first
    # 50 % then 50 % of what is left: 75 % in all, not 100 %.
    assert rm.steps[0].monthly_saving_usd == pytest.approx(500)
    assert rm.steps[1].monthly_saving_usd == pytest.approx(250)
    assert rm.total_saving_usd == pytest.approx(750)
    assert rm.steps[1].api_after_usd == pytest.approx(250)
    assert rm.steps[0].payback_months == pytest.approx(2 * 800 / 500)
    assert rm.steps[0].roi_12m == pytest.approx((12 * 500 - 1600) / 1600)
    assert {s["name"] for s in rm.skipped} >= {"continuous batching", "autoscaling"}


def test_infra_steps_use_measured_autoscaling() -> None:
    rm = roadmap(0.0, 10_000.0, None, WhatIfAssumptions(autoscale_saving=0.4, mix_saving=0.3))
    by = {s.name: s for s in rm.steps}
    assert "measured" in by["autoscaling"].evidence
    assert rm.total_saving_usd < 10_000
    left = 10_000.0
    for s in rm.steps:                       # each applies to what the previous ones left
        assert s.monthly_saving_usd == pytest.approx(left * s.cut_share)
        left -= s.monthly_saving_usd


def test_exact_hit_rate_measured_from_prompt_hashes(ledger_path) -> None:
    tr = load_trace(str(ledger_path))
    # every 4th request repeats the previous prompt: 100 of 400
    assert duplicate_prompt_share(tr) == pytest.approx(0.25)
    rm = roadmap(1000.0, 0.0, tr, WhatIfAssumptions())
    exact = next(s for s in rm.steps if s.name == "exact cache")
    assert exact.cut_share == pytest.approx(0.25)
    assert exact.evidence.startswith("measured")
