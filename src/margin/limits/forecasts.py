"""Spend and load projected forward with the planner's forecaster: when a budget will run
out, and when a model's load will cross its capacity.

Pure functions: hourly history and the clock in, projections out. The forecaster
(``plan/forecast/``: robust daily/weekly profile, empirical 80 % bands, plus the series'
own trend, ``monthly_growth``) sees an hourly series — cost per hour for a budget, requests/s and tokens/s for a model — ending at the
last complete hour. A budget's projection is what it has spent so far plus the forecast
for the rest of its period (the current hour counted for the part still to come); it runs
out where that cumulative sum reaches the limit. The band's upper edge gives the earliest
exhaustion, its lower edge the latest (the per-hour bands are summed: errors of one day
are strongly correlated, so this is close to the band of the sum).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np

from margin.plan.forecast import ForecastConfig, forecast
from margin.plan.series import RateSeries

HOUR_S = 3600
CAPACITY_ALERT_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Projection:
    projected_usd: float
    projected_low_usd: float
    projected_high_usd: float
    exhaustion_at: float | None       # point forecast reaches the limit (UNIX s)
    exhaustion_low: float | None      # earliest: on the band's upper edge
    exhaustion_high: float | None     # latest: on the band's lower edge (None: not before the end)


class ForecastCache:
    """Forecasts kept by (series, last complete hour): the history is hourly, so a
    forecast only changes when an hour completes, and a page shown every few seconds
    need not refit it. Bounded (least recently used out)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return value


def monthly_growth(hourly: np.ndarray, min_days: int = 7) -> float:
    """The trend of an hourly series as growth per 30 days: the Theil–Sen slope (median of
    pairwise slopes, so one odd day does not tilt it) of log daily totals. The seasonal
    profile follows the level, not a trend; a load that keeps rising must be extrapolated
    for its crossing of capacity to be seen before it happens. 0 with under
    ``min_days`` whole days of traffic."""
    days = len(hourly) // 24
    if days < min_days:
        return 0.0
    totals = np.asarray(hourly[len(hourly) - days * 24:], float).reshape(days, 24).sum(axis=1)
    x = np.flatnonzero(totals > 0)
    if len(x) < min_days:
        return 0.0
    y = np.log(totals[x])
    i, j = np.triu_indices(len(x), k=1)
    slope = float(np.median((y[j] - y[i]) / (x[j] - x[i])))
    return float(np.exp(slope * 30) - 1)


def _forecast(values: np.ndarray, start_s: float, n_out: int, coverage: float = 0.8,
              trend: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_out <= 0:
        z = np.zeros(0)
        return z, z, z
    if len(values) < 2 or not np.any(values > 0):
        z = np.zeros(n_out)
        return z, z, z
    growth = monthly_growth(values) if trend else 0.0
    values = values.astype(float)
    if growth:
        # Seen at today's level: the profile model then fits a stationary series, and the
        # trend is put back on the forecast (``growth_monthly``).
        per_hour = (1 + growth) ** (1 / (30 * 24))
        values = values * per_hour ** np.arange(len(values) - 1, -1, -1)
    fc = forecast(RateSeries(start_s, HOUR_S, values),
                  ForecastConfig(horizon_s=n_out * HOUR_S, coverage=coverage,
                                 growth_monthly=growth),
                  run_backtest=False)
    return (np.maximum(fc.point[:n_out], 0.0), np.maximum(fc.lower[:n_out], 0.0),
            np.maximum(fc.upper[:n_out], 0.0))


def _crossing(start_s: float, spent: float, per_hour: np.ndarray, limit: float,
              first_fraction: float) -> float | None:
    """When ``spent`` plus the hourly amounts (the first one only ``first_fraction`` to go,
    starting at ``start_s``) first reaches ``limit``; None when it never does."""
    if spent >= limit:
        return float(start_s)
    left = limit - spent
    t = start_s
    for i, amount in enumerate(per_hour):
        span = HOUR_S * (first_fraction if i == 0 else 1.0)
        part = amount * (first_fraction if i == 0 else 1.0)
        if part >= left and part > 0:
            return float(t + span * (left / part))
        left -= part
        t += span
    return None


def budget_horizon(now_s: float, period_end_s: float) -> int:
    """Forecast hours from the hour that holds ``now_s`` to the period's end."""
    hour_start = (now_s // HOUR_S) * HOUR_S
    return max(0, int(np.ceil((period_end_s - hour_start) / HOUR_S)))


def hourly_forecast(history: np.ndarray, history_start_s: float, n_out: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, low and high (80 %) for the ``n_out`` hours after the history, its trend
    extrapolated."""
    return _forecast(np.asarray(history, float), history_start_s, n_out, trend=True)


def project_budget(history_usd: np.ndarray, history_start_s: float, spent_usd: float,
                   limit_usd: float, now_s: float, period_end_s: float,
                   fc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Projection:
    """``history_usd``: cost per hour for the whole hours from ``history_start_s`` up to
    the hour that holds ``now_s`` (excluded); ``spent_usd``: the period's spend so far;
    ``fc``: ``hourly_forecast`` of that history for ``budget_horizon`` hours, if known."""
    hour_start = (now_s // HOUR_S) * HOUR_S
    n_out = budget_horizon(now_s, period_end_s)
    point, low, high = fc if fc is not None else hourly_forecast(history_usd, history_start_s,
                                                                 n_out)
    first = 1.0 - (now_s - hour_start) / HOUR_S
    # The last hour may run past the period's end (a period ends at local midnight).
    weights = np.ones(n_out)
    if n_out:
        weights[0] = first
        tail = (hour_start + n_out * HOUR_S) - period_end_s
        if tail > 0:
            weights[-1] = max(0.0, weights[-1] - tail / HOUR_S)

    def total(x: np.ndarray) -> float:
        return float(spent_usd + (x * weights).sum())

    def ends(x: np.ndarray) -> float | None:
        at = _crossing(now_s, spent_usd, x, limit_usd, first)
        return at if at is not None and at < period_end_s else None

    return Projection(total(point), total(low), total(high), ends(point), ends(high), ends(low))


@dataclass(frozen=True, slots=True)
class LoadForecast:
    times: np.ndarray        # start of each forecast hour
    rps: np.ndarray
    rps_low: np.ndarray
    rps_high: np.ndarray
    tps: np.ndarray
    tps_low: np.ndarray
    tps_high: np.ndarray
    crosses_at: float | None
    crosses_80pct_at: float | None


def _first_at(times: np.ndarray, values: np.ndarray, level: float | None) -> float | None:
    if level is None or level <= 0:
        return None
    idx = np.flatnonzero(values >= level)
    return float(times[idx[0]]) if len(idx) else None


def forecast_load(rps_history: np.ndarray, tps_history: np.ndarray, history_start_s: float,
                  horizon_s: float, capacity_rps: float | None, capacity_tps: float | None
                  ) -> LoadForecast:
    """Hourly load forecast ``horizon_s`` past the history's end, and when its point
    forecast first reaches the capacity (either limit), and 80 % of it."""
    n_out = max(1, int(round(horizon_s / HOUR_S)))
    rps_history = np.asarray(rps_history, float)
    tps_history = np.asarray(tps_history, float)
    r, r_lo, r_hi = _forecast(rps_history, history_start_s, n_out, trend=True)
    t, t_lo, t_hi = _forecast(tps_history, history_start_s, n_out, trend=True)
    times = history_start_s + HOUR_S * (len(rps_history) + np.arange(n_out))

    def first(share: float) -> float | None:
        found = [x for x in (
            _first_at(times, r, None if capacity_rps is None else capacity_rps * share),
            _first_at(times, t, None if capacity_tps is None else capacity_tps * share))
            if x is not None]
        return min(found) if found else None

    return LoadForecast(times, r, r_lo, r_hi, t, t_lo, t_hi, first(1.0),
                        first(CAPACITY_ALERT_SHARE))
