import math

import pytest

from margin.experiments import stats
from margin.experiments.assign import arm_for, unit_hash
from margin.experiments.config import ExperimentConfig


def test_welch_matches_a_hand_computed_example():
    # a: mean 3, var 2.5; b: mean 6, var 2.5; n=5 each: t=-3.0, df=8, p=0.01707 (t table)
    w = stats.welch([1, 2, 3, 4, 5], [4, 5, 6, 7, 8])
    assert w.t == pytest.approx(-3.0)
    assert w.df == pytest.approx(8.0)
    assert w.p_value == pytest.approx(0.017071, abs=1e-5)


def test_welch_unequal_variances_uses_welch_satterthwaite_df():
    w = stats.welch([10, 12, 14], [1, 1.5, 2, 2.5, 3, 3.5])
    va, vb = 4.0, 0.875
    df = (va / 3 + vb / 6) ** 2 / ((va / 3) ** 2 / 2 + (vb / 6) ** 2 / 5)
    assert w.df == pytest.approx(df)


def test_sample_size_for_half_a_standard_deviation_is_63_per_arm():
    # the textbook value: (1.96 + 0.8416)^2 * 2 / 0.25 = 62.8 -> 63
    assert stats.sample_size_means(0.5, 1.0, 1.0) == 63
    assert stats.sample_size_means(0.0, 1.0, 1.0) is None


def test_sample_size_for_proportions_and_wilson_interval():
    # 0.95 vs 0.90: (2.8016^2) * (0.0475 + 0.09) / 0.0025 = 431.7 -> 432
    assert stats.sample_size_proportions(0.95, 0.90) == 432
    lo, hi = stats.wilson(7, 10)
    assert (lo, hi) == (pytest.approx(0.3968, abs=1e-4), pytest.approx(0.8922, abs=1e-4))


def test_two_proportion_z():
    z, p = stats.two_proportion_z(60, 100, 40, 100)
    assert z == pytest.approx(2.8284, abs=1e-4)
    assert p == pytest.approx(0.004678, abs=1e-5)


def _exp(shares):
    return ExperimentConfig(name="e", arms=[{"name": f"a{i}", "share": s}
                                           for i, s in enumerate(shares)])


def test_assignment_is_stable_and_near_uniform():
    exp = _exp([0.3, 0.7])
    first = {u: arm_for("e", f"user-{u}", exp.arms).name for u in range(5000)}
    again = {u: arm_for("e", f"user-{u}", exp.arms).name for u in range(5000)}
    assert first == again
    share = sum(1 for a in first.values() if a == "a0") / 5000
    assert abs(share - 0.3) < 0.03  # 4.6 standard errors
    values = [unit_hash("e", str(i)) for i in range(10000)]
    assert all(0.0 <= v < 1.0 for v in values)
    deciles = [sum(1 for v in values if k / 10 <= v < (k + 1) / 10) for k in range(10)]
    assert min(deciles) > 900 and max(deciles) < 1100


def test_experiment_name_salts_the_hash():
    same = sum((unit_hash("x", str(i)) < 0.5) == (unit_hash("y", str(i)) < 0.5)
               for i in range(2000))
    assert 800 < same < 1200


def test_shares_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 0.9"):
        _exp([0.5, 0.4])
    assert not math.isnan(_exp([0.25, 0.75]).arms[1].share)
