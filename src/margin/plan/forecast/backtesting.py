"""The rolling-origin backtest: the model, its band and the seasonal naives on the same points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from margin.plan.forecast.band import forecast_with_interval
from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.naive import naive_last, seasonal_naive, wape
from margin.plan.forecast.origins import PointForecasts, min_history, origin_step


@dataclass
class BacktestResult:
    origins: int
    points: int
    horizon_steps: int
    wape_model: float
    wape_naive_day: float | None
    wape_naive_week: float | None
    wape_naive_user_pick: float | None     # the naive a user would pick from the history
    user_pick: list[str]                   # which naive the user picked, per origin
    coverage: float                        # share of actuals inside the interval
    improvement_vs_user_pick: float | None  # 1 - wape_model / wape_naive_user_pick
    improvement_vs_best_naive: float | None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def user_pick(values: np.ndarray, origin: int, n_out: int, day: int, week: int) -> str | None:
    """The naive a user would pick: whichever did better over the last horizon of history."""
    start = origin - n_out
    if start <= 0:
        return None
    actual = values[start:origin]
    scores = {}
    for name, period in (("day", day), ("week", week)):
        if start >= period:
            scores[name] = wape(actual, seasonal_naive(values[:start], n_out, period))
    scores = {k: v for k, v in scores.items() if not np.isnan(v)}
    return min(scores, key=scores.get) if scores else None


def backtest(values: np.ndarray, n_out: int, day: int | None,
             cfg: ForecastConfig = ForecastConfig()) -> BacktestResult | None:
    """Rolling origins one day apart over the last weeks; each forecasts the full horizon."""
    n = len(values)
    step = origin_step(day, n_out)
    min_hist = (7 * day if day and n >= 7 * day + n_out else min_history(day, n))
    origins = [o for o in range(n - n_out, min_hist - 1, -step)][: cfg.backtest_origins]
    if not origins:
        return None
    week = 7 * day if day else None
    acts, preds, lows, highs, nd, nw, nu, picks = [], [], [], [], [], [], [], []
    fc = PointForecasts(values, n_out, day, cfg)
    for o in origins:
        act = values[o:o + n_out]
        p, lo, hi = forecast_with_interval(values[:o], n_out, day, cfg, fc)
        acts.append(act), preds.append(p), lows.append(lo), highs.append(hi)
        if day:
            d = seasonal_naive(values[:o], n_out, day)
            w = seasonal_naive(values[:o], n_out, week) if o >= week else np.full(n_out, np.nan)
            pick = user_pick(values, o, n_out, day, week) or "day"
        else:
            d = w = naive_last(values[:o], n_out)
            pick = "last"
        nd.append(d), nw.append(w), picks.append(pick)
        nu.append(w if pick == "week" else d)
    a, p = np.concatenate(acts), np.concatenate(preds)
    lo, hi = np.concatenate(lows), np.concatenate(highs)
    m = ~np.isnan(a)
    cov = float(((a[m] >= lo[m]) & (a[m] <= hi[m])).mean()) if m.any() else float("nan")
    w_model = wape(a, p)
    w_day = wape(a, np.concatenate(nd))
    w_week = wape(a, np.concatenate(nw)) if day else None
    w_user = wape(a, np.concatenate(nu))
    cands = [x for x in (w_day, w_week) if x is not None and not np.isnan(x)]
    best = min(cands) if cands else None

    def _impr(ref: float | None) -> float | None:
        return None if ref is None or np.isnan(ref) or ref == 0 else 1 - w_model / ref

    return BacktestResult(
        origins=len(origins), points=int(m.sum()), horizon_steps=n_out, wape_model=w_model,
        wape_naive_day=w_day if day else None,
        wape_naive_week=None if w_week is None or np.isnan(w_week) else w_week,
        wape_naive_user_pick=w_user, user_pick=picks, coverage=cov,
        improvement_vs_user_pick=_impr(w_user), improvement_vs_best_naive=_impr(best))
