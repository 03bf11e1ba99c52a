"""Predictive autoscaling: replicas planned ahead of the forecast load, plus a reactive layer.

For each simulated day the forecaster sees only the traffic before that day's *origin*
(``origin_lead_s`` before midnight of the trace clock, one hour by default): it forecasts the day
per hour, takes the upper 80 % band (or the point forecast), multiplies it by the peaks-inside-an-
hour factor measured on the same past, and sizes each hour with the queueing model. That floor is
asked for ``startup_s`` early so the pods serve when the hour starts. On top, an HPA on in-flight
requests per pod handles what the forecast missed; the controller takes the larger of the two,
exactly as the HPA that KEDA builds from a cron trigger and a metric trigger does.

Nothing here reads a second at or after the moment it decides: a forecast made at an origin uses
steps that ended before it, and the earliest second a day's floor is used is its origin (start-up
up to ``origin_lead_s``). ``tests/plan/test_predictive.py`` perturbs the future and checks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from margin.plan.autoscale import hpa
from margin.plan.autoscale.policies import HpaPolicy, reachable_schedule
from margin.plan.autoscale.sim import Observation, SimConfig
from margin.plan.capacity import replicas_for_slo
from margin.plan.forecast import ForecastConfig, forecast_with_interval
from margin.plan.series import DAY_S

HOUR_S = 3600
# The predictive variants (forecast, 70 %, mid or upper band) and their measured replica-hours
# were chosen on the uncalibrated band; the calibrated one is the forecast's, not yet the policy's.
_FORECAST = ForecastConfig(calibrate=False)


@dataclass(frozen=True)
class PredictiveSpec:
    reactive: hpa.HpaSpec                 # the reactive layer (in-flight requests per pod)
    band: str = "upper"                   # "upper": the 80 % band's top; "point": the forecast;
    #                                       "mid": halfway between them
    floor_share: float = 1.0              # plan this share of the forecast ahead, react to the rest
    origin_lead_s: int = HOUR_S           # a day's forecast is made this long before it starts
    history_days: int = 28                # the forecaster sees at most this much past

    @property
    def label(self) -> str:
        r = self.reactive
        what = {"cpu": f"cpu {r.target:.0%}", "rate": f"request rate {r.target:g}/s per pod"
                }.get(r.metric, f"in-flight {r.target:g}/pod")
        floor = {"upper": "upper band", "point": "forecast", "mid": "mid band"}[self.band]
        if self.floor_share != 1.0:
            floor = f"{self.floor_share:.0%} of {floor}"
        return f"{floor} floor + {what}, down window {r.scale_down.stabilization_window_s}s"


def hourly(per_second: np.ndarray, end: int, hours: int) -> np.ndarray:
    """Mean rate in each of the ``hours`` whole hours ending at second ``end``; NaN where under
    half of an hour has data (a gap)."""
    hours = min(hours, end // HOUR_S)
    if hours <= 0:
        return np.array([])
    block = per_second[end - hours * HOUR_S:end].reshape(hours, HOUR_S)
    seen = (~np.isnan(block)).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(block, axis=1)
    return np.where(seen * 2 >= HOUR_S, mean, np.nan)


def peak_factor_before(per_second: np.ndarray, end: int, hours: int) -> float:
    """Median over past hours of the P95 one-minute rate / the hour's mean (1 with no data)."""
    hours = min(hours, end // HOUR_S)
    if hours <= 0:
        return 1.0
    minutes = per_second[end - hours * HOUR_S:end].reshape(hours, 60, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        per_min = minutes.mean(axis=2)                   # NaN when any second is missing
        ok = ~np.isnan(per_min).any(axis=1)
        mean = per_min.mean(axis=1)
    ok &= mean > 0
    if not ok.any():
        return 1.0
    return float(np.median(np.percentile(per_min[ok], 95, axis=1) / mean[ok]))


def day_floor(per_second: np.ndarray, origin: int, day_start: int, cfg: SimConfig,
              spec: PredictiveSpec) -> np.ndarray:
    """Replicas for each hour of the day starting at ``day_start``, from data before ``origin``."""
    past_h = spec.history_days * 24
    hist = hourly(per_second, origin, past_h)
    if len(hist) == 0 or np.isnan(hist).all():
        return np.zeros(24, dtype=int)
    day = 24 if len(hist) >= 48 else None
    n_out = (day_start - origin) // HOUR_S + 24
    point, _, upper = forecast_with_interval(hist, n_out, day, _FORECAST)
    rate = {"upper": upper, "point": point, "mid": (point + upper) / 2}[spec.band][-24:]
    rate = rate * spec.floor_share
    rate = rate * peak_factor_before(per_second, origin, min(past_h, 7 * 24))
    cache: dict[float, int] = {}
    out = np.zeros(24, dtype=int)
    for i, lam in enumerate(rate):
        key = round(float(np.nan_to_num(lam)), 3)
        if key not in cache:
            cache[key] = replicas_for_slo(key, cfg.model, cfg.slo, cfg.ca2, cfg.cs2)
        out[i] = cache[key]
    return out


def floor_schedule(per_second: np.ndarray, replay_start: int, n_seconds: int, cfg: SimConfig,
                   spec: PredictiveSpec) -> np.ndarray:
    """Replicas to *ask for* each minute of the replay: the forecast floor, start-up ahead.

    ``per_second`` is the whole trace (NaN in gaps); the replay covers
    ``[replay_start, replay_start + n_seconds)``. Days are counted from ``replay_start``.
    """
    if cfg.startup_s > spec.origin_lead_s:
        raise ValueError(f"start-up ({cfg.startup_s} s) is longer than the forecast lead "
                         f"({spec.origin_lead_s} s): the floor would be asked for before it "
                         "was forecast")
    n_days = math.ceil(n_seconds / DAY_S)
    per_hour = []
    for d in range(n_days):
        start = replay_start + d * DAY_S
        per_hour.append(day_floor(per_second, max(0, start - spec.origin_lead_s), start, cfg,
                                  spec))
    per_min = np.repeat(np.concatenate(per_hour), 60)[:math.ceil(n_seconds / 60)]
    return np.minimum(reachable_schedule(per_min, cfg.startup_s), spec.reactive.max_replicas)


class PredictivePolicy:
    """The HPA KEDA runs for a cron trigger (the floor) and a metric trigger (in-flight)."""

    def __init__(self, spec: PredictiveSpec, floor_per_minute: np.ndarray) -> None:
        self.spec = spec
        self.floor = floor_per_minute.astype(int)
        self._hpa = HpaPolicy(spec.reactive, name="predictive")
        self.interval_s = spec.reactive.sync_period_s
        self.name = "predictive"

    def decide(self, obs: Observation) -> int:
        floor = int(self.floor[min(obs.t // 60, len(self.floor) - 1)])
        desired = max(self._hpa.metric_desired(obs), floor)
        return hpa.reconcile(self._hpa.state, obs.t, obs.spec, desired, self.spec.reactive)

    def params(self) -> dict:
        return {"band": self.spec.band, "floor_share": self.spec.floor_share,
                "origin_lead_s": self.spec.origin_lead_s,
                **self._hpa.params(), "floor_replica_hours": float(self.floor.sum() / 60)}


def week_floor(per_second: np.ndarray, end: int, cfg: SimConfig, spec: PredictiveSpec
               ) -> np.ndarray:
    """Replicas for each of the 168 hours after second ``end``, from everything before it: the
    schedule a cluster would run next week."""
    hist = hourly(per_second, end, spec.history_days * 24)
    if len(hist) == 0 or np.isnan(hist).all():
        return np.zeros(168, dtype=int)
    day = 24 if len(hist) >= 48 else None
    point, _, upper = forecast_with_interval(hist, 168, day, _FORECAST)
    rate = {"upper": upper, "point": point, "mid": (point + upper) / 2}[spec.band]
    rate = rate * spec.floor_share * peak_factor_before(per_second, end, min(spec.history_days * 24, 7 * 24))
    out = np.array([replicas_for_slo(round(float(np.nan_to_num(x)), 3), cfg.model, cfg.slo,
                                     cfg.ca2, cfg.cs2) for x in rate])
    return np.minimum(out, spec.reactive.max_replicas)
