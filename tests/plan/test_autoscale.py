"""The replay: queueing physics, start-up delay, each policy's rules, the clairvoyant bound."""

from __future__ import annotations

import numpy as np
import pytest

from margin.plan.autoscale import hpa
from margin.plan.autoscale.policies import (HpaPolicy, RayServePolicy, RayServeSpec,
                                            SchedulePolicy, ThresholdPolicy, ThresholdSpec)
from margin.plan.autoscale.search import clairvoyant_schedule, reachable_schedule, search
from margin.plan.autoscale.sim import SimConfig, simulate
from margin.plan.capacity import ReplicaModel, SloTarget

CFG = SimConfig(model=ReplicaModel(replica_rps=10, concurrency=2), slo=SloTarget(latency_s=0.5),
                startup_s=30, metric_lag_s=0, metric_window_s=30)


class Fixed:
    name, interval_s, needs_metrics = "fixed", 15, False

    def __init__(self, n: int) -> None:
        self.n = n

    def decide(self, obs) -> int:  # noqa: ANN001
        return self.n

    def params(self) -> dict:
        return {}


def test_under_capacity_nothing_queues() -> None:
    arr = np.full(600, 5.0)                     # 5 rps against 2 x 10 rps
    r = simulate(arr, Fixed(2), CFG, initial_replicas=2)
    assert r.peak_queue == 0
    assert r.replica_hours == pytest.approx(2 * 600 / 3600)
    assert r.scale_events == 0
    assert r.over_slo_share < 0.01


def test_overload_builds_backlog_linearly() -> None:
    arr = np.full(100, 30.0)                    # 30 rps against 1 x 10 rps: +20 per second
    r = simulate(arr, Fixed(1), CFG, initial_replicas=1)
    assert r.peak_queue == pytest.approx(20 * 100)
    assert r.over_slo_share > 0.95


def test_startup_delay_before_new_pods_serve() -> None:
    arr = np.concatenate([np.full(15, 5.0), np.full(120, 25.0)])
    grow = Fixed(3)        # asked at t=15, ready at t=45 (30 s start-up)
    r = simulate(arr, grow, CFG, initial_replicas=1)
    # 1 replica (10 rps) under 25 rps from t=15 to t=45: 30 x 15 = 450 queued at most, then
    # 30 rps of capacity drains it at 5 per second.
    assert r.peak_queue == pytest.approx(450)
    assert r.scale_events == 1


def test_hpa_scales_up_on_cpu_and_stays_inside_max() -> None:
    s = hpa.HpaSpec(min_replicas=1, max_replicas=4, target=0.5, metric="cpu")
    arr = np.concatenate([np.full(60, 4.0), np.full(600, 60.0)])
    r = simulate(arr, HpaPolicy(s), CFG, initial_replicas=1)
    assert r.max_replicas == 4
    assert r.scale_events >= 1


def test_hpa_on_request_rate_sizes_for_the_demand_not_what_was_served() -> None:
    lagged = SimConfig(model=CFG.model, slo=CFG.slo, startup_s=30, metric_lag_s=20,
                       metric_window_s=30)
    s = hpa.HpaSpec(min_replicas=1, max_replicas=50, target=8.0, metric="rate", rate_window_s=20)
    # 40 rps against one 10-rps replica: a CPU or in-flight reading is capped by what the one
    # replica serves; the arrival rate says 40 / 8 = 5 replicas at once.
    arr = np.concatenate([np.full(120, 4.0), np.full(600, 40.0)])
    pol = HpaPolicy(s)
    r = simulate(arr, pol, lagged, initial_replicas=1)
    assert r.max_replicas == 5
    # The metric is 20 s old, synced every 15 s: at t=135 it still reads 4 rps (one replica),
    # at t=150 half the window is past the jump (22 rps: 3), at t=165 all of it (40 rps: 5).
    assert list(r.replicas_per_min[:2]) == [1, 1]
    assert r.replicas_per_min[2] == pytest.approx((30 * 1 + 15 * 3 + 15 * 5) / 60)


def test_threshold_policy_steps_and_cooldowns() -> None:
    spec = ThresholdSpec(max_replicas=20, p95_high_ms=500, p95_low_ms=250, interval_s=15)
    arr = np.full(600, 200.0)                   # far above any capacity it can reach
    r = simulate(arr, ThresholdPolicy(spec), CFG, initial_replicas=1)
    # +2 at most every 60 s: 9 decisions possible in 600 s (t=15..555) -> at most 1 + 2 x 9
    assert r.max_replicas <= 1 + 2 * 10
    assert r.max_replicas >= 1 + 2 * 8
    per_min = r.replicas_per_min
    assert np.all(np.diff(per_min) <= 2 + 1e-9)


def test_ray_waits_upscale_delay() -> None:
    spec = RayServeSpec(target_ongoing_requests=1, max_replicas=10, upscale_delay_s=30,
                        downscale_delay_s=600, metrics_interval_s=5, look_back_period_s=10)
    cfg = SimConfig(model=ReplicaModel(10, 2), slo=SloTarget(0.5), startup_s=0, metric_lag_s=0)
    arr = np.concatenate([np.full(100, 2.0), np.full(200, 40.0)])
    pol = RayServePolicy(spec, tick_s=5)
    r = simulate(arr, pol, cfg, initial_replicas=1)
    first_up = np.argmax(r.replicas_per_min > 1)
    assert r.max_replicas > 1
    # load jumps at t=100; the metric needs a few seconds, then 30 s of consistent decisions.
    assert first_up >= 2      # no scale-up in the first two minutes


def test_schedule_and_clairvoyant_bound_meet_the_slo_cheaper() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(4 * 3600)
    lam = 20 + 15 * np.sin(2 * np.pi * t / 3600)
    arr = rng.poisson(lam).astype(float)
    sched = clairvoyant_schedule(arr, CFG)
    res = simulate(arr, SchedulePolicy(sched), CFG, int(sched[0]), startup_s=0)
    assert res.meets_slo
    static = simulate(arr, Fixed(int(sched.max())), CFG, int(sched.max()))
    assert res.replica_hours < static.replica_hours
    found = search(arr, CFG, quick=True)
    for r in found.results:
        if r.meets_slo:
            assert r.replica_hours >= found.clairvoyant.replica_hours * 0.97
    assert found.recommended is not None


def test_reachable_schedule_asks_start_up_ahead() -> None:
    sched = np.array([1, 1, 1, 5, 1, 1, 2])
    # 90 s start-up: a pod asked at minute i serves from i + 1.5 min, so minute i covers i..i+2.
    assert reachable_schedule(sched, 90).tolist() == [1, 5, 5, 5, 2, 2, 2]
    assert reachable_schedule(sched, 0).tolist() == sched.tolist()


def _sine(hours: int = 4, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(hours * 3600)
    return rng.poisson(20 + 15 * np.sin(2 * np.pi * t / 3600)).astype(float)


def test_advice_is_never_dearer_than_static_and_sits_above_the_bounds() -> None:
    found = search(_sine(), CFG, quick=True)
    assert found.static is not None and found.static in found.results
    assert found.static.meets_slo
    assert found.advice is not None and found.advice.meets_slo
    assert found.recommended is not None and found.recommended.meets_slo
    assert found.recommended.cost_usd <= found.static.cost_usd
    # pods asked for ahead cost at least what instant pods cost, and still meet the SLO
    assert found.reachable is not None and found.reachable.meets_slo
    assert found.reachable.replica_hours >= found.clairvoyant.replica_hours * 0.999


def test_no_policy_meets_the_slo_is_said_with_what_would_fix_it() -> None:
    arr = _sine()
    found = search(arr, CFG, max_replicas=2, quick=True)     # the peak needs about 4
    adv = found.advice
    assert adv is not None and not adv.meets_slo
    assert adv.summary.startswith("no policy meets the SLO: the closest is ")
    assert any("raise --max-replicas to at least" in f for f in adv.fixes)
    assert any("a larger replica" in f for f in adv.fixes)
    closest = min(found.results, key=lambda r: (r.hours_over_slo_share, r.over_slo_share,
                                               r.cost_usd))
    assert found.recommended is closest
