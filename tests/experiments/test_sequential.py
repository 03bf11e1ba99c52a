"""The always-valid test, checked by simulation with a fixed seed: A/A experiments read
after every batch stay under alpha (while a fixed-horizon test read the same way does
not), the confidence sequence covers the true difference at every look, and real
differences are found."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from margin.experiments import sequential
from margin.experiments.sequential import ALPHA, Sample, msprt

DECIDED = ("better", "worse", "trade-off")


def _cum_sample(s: np.ndarray, q: np.ndarray, n: int) -> Sample:
    mean = s[n - 1] / n
    return Sample(n, float(mean), float((q[n - 1] - n * mean * mean) / (n - 1)))


def simulate(reps: int, batch: int, looks: int, *, seed: int, cost_ratio: float = 1.0,
             p_control: float = 0.9, p_arm: float = 0.9, shadow_share: float = 0.3,
             sigma: float = 1.0) -> dict[str, float]:
    """``reps`` experiments, each read after every ``batch`` requests per arm, ``looks``
    times. Costs are log-normal (skewed, like real costs per request); a share of each
    arm's requests has a shadow verdict. Returns the share of experiments in which the
    sequential test ever decided, the share in which a fixed-horizon test (Welch's t on
    cost, two-proportion z on agreement, each at alpha/2) was ever significant, the share
    of experiments whose confidence sequence ever missed the true cost difference, and
    the verdicts at the last look."""
    rng = np.random.default_rng(seed)
    n_max = batch * looks
    true_diff = (cost_ratio - 1.0) * math.exp(-9 + sigma * sigma / 2)
    decided = fixed = missed = 0
    final: dict[str, int] = {}
    z_fixed = st.norm.ppf(1 - ALPHA / 4)
    for _ in range(reps):
        c = rng.lognormal(-9, sigma, n_max)
        a = rng.lognormal(-9, sigma, n_max) * cost_ratio
        sums = [np.cumsum(x) for x in (c, a)]
        squares = [np.cumsum(x * x) for x in (c, a)]
        shadowed = [rng.random(n_max) < shadow_share for _ in range(2)]
        agreed = [shadowed[0] & (rng.random(n_max) < p_control),
                  shadowed[1] & (rng.random(n_max) < p_arm)]
        n_sh = [np.cumsum(x) for x in shadowed]
        n_ag = [np.cumsum(x) for x in agreed]
        ever = ever_fixed = ever_missed = False
        out = {}
        for k in range(1, looks + 1):
            n = k * batch
            cost_c, cost_a = (_cum_sample(sums[i], squares[i], n) for i in (0, 1))
            ag_c = Sample.proportion(int(n_ag[0][n - 1]), int(n_sh[0][n - 1]))
            ag_a = Sample.proportion(int(n_ag[1][n - 1]), int(n_sh[1][n - 1]))
            out = sequential.compare(cost_a, cost_c, ag_a, ag_c)
            ever |= out["verdict"] in DECIDED
            if out["cost"]["low_usd"] is not None:
                ever_missed |= not (out["cost"]["low_usd"] <= true_diff
                                    <= out["cost"]["high_usd"])
            # the fixed-horizon test, read at every look as a team peeking would
            se = math.sqrt(cost_a.var / n + cost_c.var / n)
            z_cost = (cost_a.mean - cost_c.mean) / se
            z_ag = 0.0
            if ag_a.n and ag_c.n:
                pooled = (n_ag[0][n - 1] + n_ag[1][n - 1]) / (ag_a.n + ag_c.n)
                se_ag = math.sqrt(pooled * (1 - pooled) * (1 / ag_a.n + 1 / ag_c.n))
                z_ag = (ag_a.mean - ag_c.mean) / se_ag if se_ag > 0 else 0.0
            ever_fixed |= abs(z_cost) > z_fixed or abs(z_ag) > z_fixed
        decided += ever
        fixed += ever_fixed
        missed += ever_missed
        final[out["verdict"]] = final.get(out["verdict"], 0) + 1
    return {"decided": decided / reps, "fixed": fixed / reps, "missed": missed / reps,
            **{v: final.get(v, 0) / reps for v in (*DECIDED, "no difference yet",
                                                     "no difference")}}


def test_under_the_null_peeking_after_every_batch_stays_under_alpha():
    # 400 A/A experiments, each read 40 times (every 25 requests per arm, to 1,000)
    got = simulate(400, 25, 40, seed=20261207)
    # an estimate of the false-positive rate; under alpha with room for its own sampling
    # error (if the true rate were 0.05, seeing <= 0.05 here would be a coin flip: the
    # test is far below it: 1 in 400 with this seed)
    assert got["decided"] <= ALPHA
    # the simulation can see peeking: the fixed-horizon tests, read the same way, are
    # wrong several times as often as their nominal 5 %
    assert got["fixed"] > 3 * ALPHA
    # the confidence sequence held the true difference (0) at all 40 looks
    assert got["missed"] <= ALPHA / 2


def test_heavy_tailed_costs_and_no_shadows_stay_under_alpha():
    got = simulate(300, 20, 50, seed=7, sigma=1.5, shadow_share=0.0)
    assert got["decided"] <= ALPHA
    assert got["missed"] <= ALPHA / 2


def test_a_cheaper_arm_is_found_and_its_interval_covers_the_true_difference():
    # 20 % cheaper, quality not measured: decided on cost alone
    got = simulate(100, 50, 40, seed=11, cost_ratio=0.8, shadow_share=0.0)
    assert got["better"] >= 0.9 and got["worse"] == 0
    assert got["missed"] <= ALPHA / 2
    # cheaper and the same (high) agreement, measured on half the requests: "cheaper at
    # equal quality" needs the agreement's interval inside ±0.05 too
    got = simulate(100, 50, 40, seed=12, cost_ratio=0.8, p_control=0.99, p_arm=0.99,
                   shadow_share=0.5)
    assert got["better"] >= 0.9


def test_a_quality_drop_is_found_as_worse_even_when_the_arm_is_cheaper():
    got = simulate(100, 25, 40, seed=13, cost_ratio=0.7, p_control=0.92, p_arm=0.80,
                   shadow_share=0.5)
    assert got["worse"] >= 0.9 and got["better"] == 0


def test_the_statistic_matches_its_formula_and_stays_undecided_with_few_samples():
    arm, control = Sample(100, 1.1, 1.0), Sample(100, 1.0, 1.0)
    t = msprt(arm, control, 0.05)
    v, tau2 = 0.02, 0.01 * 2.0
    lam = math.sqrt(v / (v + tau2)) * math.exp(0.01 * tau2 / (2 * v * (v + tau2)))
    assert t.p_value == pytest.approx(min(1.0, 1 / lam))
    radius = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(20) + math.log((v + tau2) / v)))
    assert (t.low, t.high) == (pytest.approx(0.1 - radius), pytest.approx(0.1 + radius))
    # a huge difference on fewer than MIN_N requests decides nothing
    few = sequential.compare(Sample(10, 5.0, 0.1), Sample(10, 1.0, 0.1), None, None)
    assert few["verdict"] == "no difference yet" and not few["can_stop"]
    enough = sequential.compare(Sample(40, 5.0, 0.1), Sample(40, 1.0, 0.1), None, None)
    assert (enough["verdict"], enough["can_stop"]) == ("worse", True)
