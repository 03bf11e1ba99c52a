"""Sampling for the multi-sequence llama.cpp decoder (numpy only, no model needed)."""

from __future__ import annotations

import numpy as np

from margin.upstreams.llamacpp_batch import sample


def test_greedy_and_a_tiny_nucleus_take_the_most_likely_token():
    logits = np.array([0.1, 3.0, 2.9, -1.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, 0.0, 1.0, rng) == 1
    assert {sample(logits, 1.0, 1e-6, rng) for _ in range(50)} == {1}


def test_top_p_keeps_only_the_nucleus_and_a_seed_repeats_the_draws():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = [sample(logits, 1.0, 0.75, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same token
    rng = np.random.default_rng(1)
    seen = {sample(logits, 1.0, 0.75, rng) for _ in range(400)}
    assert seen == {0, 1}  # 0.5 + 0.3 pass 0.75: the two tail tokens never come
    seen_all = {sample(logits, 1.0, 1.0, rng) for _ in range(2000)}
    assert seen_all == {0, 1, 2, 3}
