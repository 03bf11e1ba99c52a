"""The routing benchmark's scoring and report, on synthetic rows (the full run is a benchmark)."""

from __future__ import annotations

import numpy as np
import pytest

from margin.bench.routing import evaluate_scores, fixed_result, render_markdown
from margin.routing.dataset import RoutingRow, token_counts


def _rows(n: int, seed: int = 0) -> list[RoutingRow]:
    rng = np.random.default_rng(seed)
    return [RoutingRow(prompt="p" * int(rng.integers(20, 400)),
                       weak_correct=bool(rng.random() < 0.6),
                       strong_correct=bool(rng.random() < 0.85)) for _ in range(n)]


def test_oracle_beats_random_and_costs_sit_between_the_fixed_baselines():
    rows = _rows(600)
    weak = np.array([r.weak_correct for r in rows], dtype=float)
    strong = np.array([r.strong_correct for r in rows], dtype=float)
    tokens = token_counts(rows, default_output_tokens=1.0)
    folds = np.arange(600) % 3
    oracle = evaluate_scores("oracle", strong - weak, folds, weak, strong, tokens)
    rand = evaluate_scores("random", np.random.default_rng(1).random(600), folds, weak, strong,
                           tokens)
    cheap = fixed_result("always weak", False, weak, strong, tokens)
    dear = fixed_result("always strong", True, weak, strong, tokens)
    assert oracle.apgr > 0.7 > rand.apgr > 0.35
    assert oracle.share_95 < rand.share_95
    assert cheap.cost_per_1k_usd < oracle.cost_per_1k_usd < dear.cost_per_1k_usd
    assert cheap.quality == pytest.approx(weak.mean())
    md = render_markdown("margin bench routing --data x.jsonl", [oracle, rand, cheap, dear],
                         {"rows": 600, "groups": 600, "folds": 3, "duplicate_cosine": 0.95,
                          "q_weak": weak.mean(), "q_strong": strong.mean(),
                          "default_output_tokens": 1.0, "learned_config": "label=two_heads"},
                         {"rules_p50_ms": 0.1, "learned_p50_ms": 9.0, "samples": 10})
    assert "| oracle |" in md and "| always strong | — |" in md and "P50" in md


def test_source_prior_orders_rows_by_their_sources_mean_gain():
    from margin.bench.routing import source_prior_scores

    sources = ["math", "math", "law", "law", "law", "trivia"]
    weak = np.array([0, 0, 1, 0, 1, 1])
    strong = np.array([1, 1, 1, 1, 0, 1])
    scores = source_prior_scores(sources, weak, strong, np.random.default_rng(0))
    assert scores is not None
    # math gains 1.0 per row, law 0.0, trivia 0.0: math rows first
    assert set(np.argsort(-scores)[:2]) == {0, 1}
    assert np.allclose(scores[[2, 3, 4, 5]], 0.0, atol=1e-8)
    assert source_prior_scores(["one"] * 3, weak[:3], strong[:3], np.random.default_rng(0)) is None
