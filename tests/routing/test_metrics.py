"""RouteLLM metrics on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from margin.routing.metrics import (
    STRONG_PRICE,
    WEAK_PRICE,
    apgr,
    cost_at_share,
    cpt,
    pgr_curve,
    quality_curve,
    share_for_quality,
)

# Ten prompts: the strong model is right on all; the weak one on six (rows 0-3 wrong).
WEAK = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], dtype=float)
STRONG = np.ones(10)
PERFECT = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], dtype=float)  # the four gains first


def test_quality_curve_of_a_perfect_ranking():
    x, q = quality_curve(PERFECT, WEAK, STRONG)
    assert x[0] == 0.0 and x[-1] == 1.0
    assert q[0] == pytest.approx(0.6) and q[4] == pytest.approx(1.0) and q[-1] == pytest.approx(1.0)
    assert np.allclose(q[:5], [0.6, 0.7, 0.8, 0.9, 1.0])


def test_apgr_perfect_random_and_inverse():
    # Perfect: PGR climbs linearly to 1 at x = 0.4, then stays: area = 0.4/2 + 0.6 = 0.8.
    assert apgr(PERFECT, WEAK, STRONG) == pytest.approx(0.8)
    # Constant scores (a router that cannot tell prompts apart): ties averaged = random = 0.5.
    assert apgr(np.zeros(10), WEAK, STRONG) == pytest.approx(0.5)
    # Inverse: PGR is 0 until x = 0.6, then linear to 1: area = 0.4/2 = 0.2.
    assert apgr(-PERFECT, WEAK, STRONG) == pytest.approx(0.2)


def test_random_scores_average_near_half():
    rng = np.random.default_rng(0)
    weak = rng.random(2000) < 0.6
    strong = rng.random(2000) < 0.8
    values = [apgr(rng.random(2000), weak, strong) for _ in range(20)]
    assert abs(float(np.mean(values)) - 0.5) < 0.03


def test_cpt_interpolates_on_the_curve():
    # Perfect ranking: PGR = x / 0.4 up to x = 0.4.
    assert cpt(PERFECT, WEAK, STRONG, 0.5) == pytest.approx(0.2)
    assert cpt(PERFECT, WEAK, STRONG, 0.8) == pytest.approx(0.32)
    # Inverse: PGR(x) = (x - 0.6) / 0.4 after 0.6.
    assert cpt(-PERFECT, WEAK, STRONG, 0.5) == pytest.approx(0.8)
    assert cpt(np.zeros(10), WEAK, STRONG, 0.5) == pytest.approx(0.5)


def test_strong_wrong_rows_make_pgr_exceed_one_and_fall_back():
    weak = np.array([0, 1, 1, 0], dtype=float)
    strong = np.array([1, 0, 1, 1], dtype=float)  # q_weak 0.5, q_strong 0.75
    scores = np.array([4, 0, 2, 3], dtype=float)
    x, pgr = pgr_curve(scores, weak, strong)
    # top-2 go strong (rows 0 and 3): q = 1.0 → PGR 2; all strong → q 0.75 → PGR 1.
    assert pgr[2] == pytest.approx(2.0) and pgr[4] == pytest.approx(1.0)


def test_share_for_quality():
    # 95 % of q_strong = 0.95 → the perfect ranking needs 3.5 of 10 prompts on strong.
    assert share_for_quality(PERFECT, WEAK, STRONG, 0.95) == pytest.approx(0.35)
    assert share_for_quality(np.zeros(10), WEAK, STRONG, 0.95) == pytest.approx(0.875)


def test_undefined_when_strong_is_not_better():
    with pytest.raises(ValueError, match="not better"):
        apgr(np.arange(3.0), np.ones(3), np.ones(3))


def test_cost_at_share_mixes_prices():
    tokens_in = np.full(4, 1000.0)
    out = np.full(4, 100.0)
    scores = np.array([3, 2, 1, 0], dtype=float)
    weak_each = (1000 * WEAK_PRICE.input_usd_per_mtok + 100 * WEAK_PRICE.output_usd_per_mtok) / 1e6
    strong_each = (1000 * STRONG_PRICE.input_usd_per_mtok
                   + 100 * STRONG_PRICE.output_usd_per_mtok) / 1e6
    assert cost_at_share(scores, 0.0, tokens_in, out, out) == pytest.approx(4 * weak_each)
    assert cost_at_share(scores, 1.0, tokens_in, out, out) == pytest.approx(4 * strong_each)
    assert cost_at_share(scores, 0.5, tokens_in, out, out) == pytest.approx(
        2 * weak_each + 2 * strong_each)
