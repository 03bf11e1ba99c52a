"""Predictive autoscaling: the floor follows the forecast, and no decision reads the future."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from margin.plan.autoscale.predictive import (
    PredictivePolicy,
    PredictiveSpec,
    floor_schedule,
    hourly,
)
from margin.plan.autoscale.search import _hpa_spec
from margin.plan.autoscale.sim import SimConfig, simulate
from margin.plan.capacity import ReplicaModel, SloTarget
from margin.plan.series import DAY_S

CFG = SimConfig(model=ReplicaModel(replica_rps=5, concurrency=2), slo=SloTarget(latency_s=1.0),
                startup_s=120, metric_lag_s=30)
SPEC = PredictiveSpec(reactive=_hpa_spec("inflight", 1.5, 300, 1, 60), band="upper")
DAYS, REPLAY_DAYS = 9, 3


@pytest.fixture(scope="module")
def trace() -> np.ndarray:
    rng = np.random.default_rng(11)
    t = np.arange(DAYS * DAY_S)
    lam = 40 + 30 * np.sin(2 * np.pi * t / DAY_S)          # a daily cycle, 10 to 70 rps
    return rng.poisson(lam).astype(float)


# the request-rate layer of the search: 70 % of the forecast ahead, 0.75 x a replica's rate
RATE_SPEC = PredictiveSpec(reactive=replace(_hpa_spec("rate", 3.75, 900, 1, 60), rate_window_s=30),
                           band="point", floor_share=0.7)


def _replay(per_second: np.ndarray, spec: PredictiveSpec = SPEC
            ) -> tuple[np.ndarray, np.ndarray, int]:
    start = (DAYS - REPLAY_DAYS) * DAY_S
    n = REPLAY_DAYS * DAY_S
    floor = floor_schedule(per_second, start, n, CFG, spec)
    res = simulate(per_second[start:], PredictivePolicy(spec, floor), CFG, int(floor[0]))
    return floor, res.replicas_per_min, start


def test_hourly_means_leave_gaps_out() -> None:
    x = np.ones(3 * 3600)
    x[3600:3600 + 2000] = np.nan            # more than half of hour 1 missing
    h = hourly(x, len(x), 3)
    assert h[0] == 1 and np.isnan(h[1]) and h[2] == 1


def test_floor_follows_the_daily_cycle(trace: np.ndarray) -> None:
    floor, _, _ = _replay(trace)
    day = floor[: 24 * 60]
    # the sine peaks 6 h into the day at 70 rps and bottoms out at 18 h at 10 rps
    peak, trough = day[5 * 60:7 * 60].mean(), day[17 * 60:19 * 60].mean()
    assert peak >= 70 / 5 and trough <= 20 / 5 + 2
    assert peak > 2 * trough


@pytest.mark.parametrize("spec", [SPEC, RATE_SPEC], ids=["in-flight layer", "request-rate layer"])
def test_perturbing_the_future_does_not_change_past_decisions(trace: np.ndarray,
                                                              spec: PredictiveSpec) -> None:
    floor, per_min, start = _replay(trace, spec)
    cut = start + int(1.5 * DAY_S)          # halfway through the second replayed day
    changed = trace.copy()
    changed[cut:] *= 3
    floor2, per_min2, _ = _replay(changed, spec)
    m = (cut - start) // 60
    np.testing.assert_array_equal(floor[:m], floor2[:m])
    np.testing.assert_array_equal(per_min[:m], per_min2[:m])
    # ... while the future does change what happens after it: the check can fail.
    if spec is SPEC:   # (a median-level forecast may shrug off one tripled half-day at 70 %)
        assert not np.array_equal(floor[m:], floor2[m:])
    assert not np.array_equal(per_min[m:], per_min2[m:])


@pytest.mark.parametrize("spec", [SPEC, RATE_SPEC], ids=["upper band", "70 % of the forecast"])
def test_a_days_floor_reads_nothing_from_its_origin_on(trace: np.ndarray,
                                                       spec: PredictiveSpec) -> None:
    # Stricter than the test above, whose cut lies half a day after an origin (a floor that read
    # up to 12 hours into its own day would pass it): change everything from the second replayed
    # day's origin (an hour before that day) on. The floor of that whole day, asked for until the
    # third day's origin, must not move; the third day's, forecast after the change, does (the
    # upper band's; the point forecast of a weekday from one week of history is that weekday
    # a week ago, which the change leaves alone).
    start = (DAYS - REPLAY_DAYS) * DAY_S
    origin = start + DAY_S - spec.origin_lead_s
    changed = trace.copy()
    changed[origin:] *= 1000     # large enough that even one second read would show
    floor = floor_schedule(trace, start, REPLAY_DAYS * DAY_S, CFG, spec)
    floor2 = floor_schedule(changed, start, REPLAY_DAYS * DAY_S, CFG, spec)
    m = (2 * DAY_S - spec.origin_lead_s) // 60
    np.testing.assert_array_equal(floor[:m], floor2[:m])
    if spec is SPEC:
        assert not np.array_equal(floor[m:], floor2[m:])


def test_start_up_longer_than_the_forecast_lead_is_refused(trace: np.ndarray) -> None:
    slow = SimConfig(model=CFG.model, slo=CFG.slo, startup_s=2 * 3600)
    with pytest.raises(ValueError, match="longer than the forecast lead"):
        floor_schedule(trace, 6 * DAY_S, DAY_S, slow, SPEC)
