"""The HPA algorithm against hand-worked cases (tolerance, stabilization, policies, limits)."""

from __future__ import annotations

from margin.plan.autoscale import hpa
from margin.plan.autoscale.hpa import (HpaSpec, HpaState, ScalingPolicy, ScalingRules, reconcile,
                                       replicas_from_ratio, replicas_from_total)


def spec(**kw) -> HpaSpec:
    base = dict(min_replicas=1, max_replicas=100, target=0.5, metric="cpu")
    base.update(kw)
    return HpaSpec(**base)


# ---------------------------------------------------------------- ratio and tolerance

def test_within_tolerance_keeps_the_count() -> None:
    # 4 pods at 54 % against a 50 % target: ratio 1.08, inside 10 % -> stay at 4.
    assert replicas_from_ratio(0.54 / 0.5, ready=4, current=4, tolerance=0.1) == 4
    # 0.46/0.5 = 0.92: also inside.
    assert replicas_from_ratio(0.46 / 0.5, ready=4, current=4, tolerance=0.1) == 4


def test_outside_tolerance_scales_by_the_ratio() -> None:
    # ceil(4 x 0.8 / 0.5) = ceil(6.4) = 7
    assert replicas_from_ratio(0.8 / 0.5, ready=4, current=4, tolerance=0.1) == 7
    # ceil(10 x 0.2 / 0.5) = 4
    assert replicas_from_ratio(0.2 / 0.5, ready=10, current=10, tolerance=0.1) == 4


def test_unready_pods_count_as_idle_when_scaling_up() -> None:
    # 2 ready at 150 % of target, 2 starting: (1.5 x 2 + 0 x 2) / 4 = 0.75 < 1 -> the direction
    # flips, so the controller keeps 4 instead of asking for ceil(1.5 x 2) = 3 more.
    assert replicas_from_ratio(1.5, ready=2, current=4, tolerance=0.1, unready=2) == 4
    # 2 ready at 300 %: (3 x 2) / 4 = 1.5 -> ceil(1.5 x 4) = 6
    assert replicas_from_ratio(3.0, ready=2, current=4, tolerance=0.1, unready=2) == 6


def test_missing_pods_count_as_on_target_when_scaling_down() -> None:
    # custom metric: 4 ready at 40 % of target, 4 missing counted at 100 %:
    # (0.4 x 4 + 1 x 4) / 8 = 0.7 -> ceil(0.7 x 8) = 6 (without them: ceil(1.6) = 2)
    assert replicas_from_ratio(0.4, ready=4, current=8, tolerance=0.1, missing=4) == 6


def test_external_average_value() -> None:
    # queue of 230 with 50 per pod: ceil(4.6) = 5; 4 pods hold 200 -> 230/200 = 1.15 > 1.1
    assert replicas_from_total(230, 50, current=4, tolerance=0.1) == 5
    assert replicas_from_total(210, 50, current=4, tolerance=0.1) == 4


# ---------------------------------------------------------------- stabilization

def test_scale_down_waits_for_the_window_and_takes_its_max() -> None:
    s = spec()   # scale-down window 300 s, scale-down policy 100 % per 15 s
    st = HpaState()
    assert reconcile(st, 0, 10, 10, s) == 10
    assert reconcile(st, 15, 10, 4, s) == 10        # 10 recommended 15 s ago is still in window
    assert reconcile(st, 100, 10, 6, s) == 10
    assert reconcile(st, 301, 10, 5, s) == 6        # t=0's 10 expired; max(4, 6, 5) -> 6
    assert reconcile(st, 401, 6, 5, s) == 5         # t=100's 6 expired; max(5, 5) = 5


def test_scale_up_is_immediate_by_default_but_window_takes_the_min() -> None:
    st = HpaState()
    assert reconcile(st, 0, 2, 5, spec()) == 5
    windowed = spec(scale_up=ScalingRules(60, hpa.DEFAULT_SCALE_UP.policies))
    st = HpaState()
    assert reconcile(st, 0, 2, 3, windowed) == 3
    assert reconcile(st, 15, 3, 8, windowed) == 3    # min(3, 8) within 60 s
    # t=0's 3 has left the window, so 8 is recommended; the default policies then allow
    # max(3 x 2, 3 + 4) = 7 in one step.
    assert reconcile(st, 61, 3, 8, windowed) == 7


# ---------------------------------------------------------------- policies

def test_default_scale_up_allows_double_or_plus_four() -> None:
    st = HpaState()
    # From 2: Percent 100 -> 4, Pods 4 -> 6; selectPolicy Max -> 6.
    assert reconcile(st, 0, 2, 50, spec()) == 6
    # From 10: Percent -> 20, Pods -> 14; Max -> 20.
    assert reconcile(HpaState(), 0, 10, 50, spec()) == 20


def test_select_policy_min_and_period_accounting() -> None:
    up = ScalingRules(0, (ScalingPolicy("Pods", 4, 60), ScalingPolicy("Percent", 50, 60)), "Min")
    s = spec(scale_up=up)
    st = HpaState()
    # From 10: Pods -> 14, Percent -> 15; Min -> 14.
    assert reconcile(st, 0, 10, 40, s) == 14
    # 30 s later, still inside both 60-s periods: the period started at 10 replicas.
    # Pods: 10 + 4 = 14, Percent: ceil(10 x 1.5) = 15 -> Min 14: no room left.
    assert reconcile(st, 30, 14, 40, s) == 14
    # 61 s after the first scale-up its event has expired: from 14 -> min(18, 21) = 18.
    assert reconcile(st, 61, 14, 40, s) == 18


def test_scale_down_policy_limits_pods_per_period() -> None:
    down = ScalingRules(0, (ScalingPolicy("Pods", 2, 60),))
    s = spec(scale_down=down)
    st = HpaState()
    assert reconcile(st, 0, 10, 1, s) == 8
    assert reconcile(st, 15, 8, 1, s) == 8          # 2 already removed in this 60-s period
    assert reconcile(st, 61, 8, 1, s) == 6


def test_percent_scale_down_rounds_down() -> None:
    down = ScalingRules(0, (ScalingPolicy("Percent", 30, 60),))
    # From 10: int(10 x 0.7) = 7 is the lowest allowed.
    assert reconcile(HpaState(), 0, 10, 1, spec(scale_down=down)) == 7


def test_disabled_direction_never_moves() -> None:
    s = spec(scale_down=ScalingRules(0, (ScalingPolicy("Percent", 100, 15),), "Disabled"))
    assert reconcile(HpaState(), 0, 10, 2, s) == 10
    assert reconcile(HpaState(), 0, 10, 12, s) == 12   # scale-up still allowed


def test_min_and_max_replicas_clamp() -> None:
    s = spec(min_replicas=3, max_replicas=8)
    assert reconcile(HpaState(), 0, 5, 50, s) == 8
    assert reconcile(HpaState(), 0, 5, 1, spec(min_replicas=3, max_replicas=8,
                                               scale_down=ScalingRules(0, (ScalingPolicy(
                                                   "Percent", 100, 15),)))) == 3
    # A current count outside [min, max] is fixed first, whatever the metric says.
    assert reconcile(HpaState(), 0, 12, 12, s) == 8
    assert reconcile(HpaState(), 0, 1, 1, s) == 3
