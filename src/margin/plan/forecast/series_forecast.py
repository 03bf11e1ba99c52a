"""Forecast a rate series: the model the history allows, its band, growth on top, the backtest."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from margin.plan.forecast.backtesting import BacktestResult, backtest
from margin.plan.forecast.band import forecast_with_interval
from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.profile import model_kind
from margin.plan.series import DAY_S, RateSeries, bins_per

MONTH_S = 30 * DAY_S


@dataclass
class ForecastResult:
    times: np.ndarray
    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: str
    step_s: float
    backtest: BacktestResult | None
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [{"time": float(t), "forecast": float(p), "lower": float(lo), "upper": float(hi)}
                for t, p, lo, hi in zip(self.times, self.point, self.lower, self.upper)]

    def to_json(self) -> dict:
        return {"unit": "requests per second, averaged over each step", "step_s": self.step_s,
                "method": self.method, "interval": 0.8,
                "backtest": self.backtest.to_json() if self.backtest else None,
                "notes": self.notes, "forecast": self.rows()}


def forecast(series: RateSeries, cfg: ForecastConfig = ForecastConfig(),
             run_backtest: bool = True) -> ForecastResult:
    """Forecast ``cfg.horizon_s`` past the end of ``series``, with intervals and a backtest."""
    n_out = max(1, int(round(cfg.horizon_s / series.step_s)))
    day = bins_per(DAY_S, series.step_s)
    values = np.asarray(series.values, dtype=float)
    # Leading/trailing gaps carry nothing; the origin is the last observed step.
    obs = np.flatnonzero(~np.isnan(values))
    if not len(obs):
        raise ValueError("the series has no observed values")
    values = values[: obs[-1] + 1]
    notes: list[str] = []
    kind = model_kind(len(values), day)
    if kind == "level":
        day = None   # no cycle to use: origins and baselines become non-seasonal too
    if bins_per(DAY_S, series.step_s) is None:
        notes.append(f"the step ({series.step_s:g} s) does not divide a day: no daily cycle used")
    elif kind == "level":
        notes.append(
            f"{len(values) * series.step_s / 3600:.1f} h of history holds no daily cycle (needs "
            "2 days): the forecast is a robust recent level with empirical intervals, and the "
            "backtest compares it with the last value (naive)")
    elif kind == "daily":
        notes.append("under a week of history: daily cycle only, no weekday effects")
    point, lower, upper = forecast_with_interval(values, n_out, day, cfg)
    if cfg.growth_monthly:
        lead_s = series.step_s * np.arange(1, n_out + 1)
        g = (1 + cfg.growth_monthly) ** (lead_s / MONTH_S)
        point, lower, upper = point * g, lower * g, upper * g
        notes.append(f"growth {cfg.growth_monthly:.1%} per 30 days applied on top of the model "
                     "(not part of the backtest)")
    times = series.start_s + series.step_s * (len(values) + np.arange(n_out))
    bt = backtest(values, n_out, day, cfg) if run_backtest else None
    if run_backtest and bt is None:
        notes.append("not enough history for a backtest of this horizon")
    return ForecastResult(times=times, point=point, lower=lower, upper=upper,
                          method=f"robust-profile/{kind}", step_s=series.step_s, backtest=bt,
                          notes=notes)


def backtest_series(series: RateSeries, cfg: ForecastConfig = ForecastConfig()
                    ) -> BacktestResult | None:
    """The backtest alone, at ``cfg.horizon_s``, with the model ``forecast`` would choose."""
    n_out = max(1, int(round(cfg.horizon_s / series.step_s)))
    day = bins_per(DAY_S, series.step_s)
    values = np.asarray(series.values, dtype=float)
    obs = np.flatnonzero(~np.isnan(values))
    if not len(obs):
        raise ValueError("the series has no observed values")
    values = values[: obs[-1] + 1]
    if model_kind(len(values), day) == "level":
        day = None
    return backtest(values, n_out, day, cfg)
