"""The point forecast: a robust seasonal profile of the history (chosen by backtests on the shared
NASA and ServeGen traces, see docs/planner.md).

* **weekly** (at least one week of history): the last ``weeks`` weeks are cut into days. Each day's
  mean is its *level*, each day divided by its level is its *shape*. The forecast for a weekday is
  the median level of that weekday times a shape that blends that weekday's median shape with the
  median shape of all days (weight n/(n+k) on the weekday's own, n = weeks seen), so one week of
  history leans on the pooled shape and a month of history keeps Sunday's own. Medians make one
  launch-day spike or one broken day count for little. The whole profile is then scaled towards
  the recent level (the last week's actual / fitted, raised to ``level_alpha``).
* **daily** (two days to a week): median daily shape times the median level of the last three days.
* **level** (under two days, or a step that does not divide a day): the median of the last 120 steps.

Pure: the history and the step in, the forecast out; the origin is the end of the history.
"""

from __future__ import annotations

import warnings

import numpy as np

from margin.plan.forecast.config import ForecastConfig


def _smooth_cyclic(shape: np.ndarray) -> np.ndarray:
    # A [1, 2, 1] kernel over neighbouring steps: hour-to-hour noise in a median is not signal.
    return (np.roll(shape, 1, axis=-1) + 2 * shape + np.roll(shape, -1, axis=-1)) / 4


def _day_levels(days: np.ndarray) -> np.ndarray:
    """Mean of each day, NaN where under half of the day was observed."""
    observed = (~np.isnan(days)).sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lev = np.nanmean(days, axis=-1)
    return np.where(observed * 2 >= days.shape[-1], lev, np.nan)


def _weekly(hist: np.ndarray, n_out: int, day: int, cfg: ForecastConfig) -> np.ndarray:
    week = 7 * day
    nw = min(cfg.weeks, len(hist) // week)
    days = hist[len(hist) - nw * week:].reshape(nw, 7, day)
    lev = _day_levels(days)                                       # (nw, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        norm = days / np.where(lev > 0, lev, np.nan)[..., None]
        shape_all = np.nanmedian(norm.reshape(-1, day), axis=0)
        shape_dow = np.nanmedian(norm, axis=0)                    # (7, day)
        n_seen = (~np.isnan(lev)).sum(axis=0)                     # weeks seen per weekday
        w = np.where(n_seen >= 2, n_seen / (n_seen + cfg.shrink_weeks), 0.0)[:, None]
        shape = np.where(np.isnan(shape_dow), shape_all, w * shape_dow + (1 - w) * shape_all)
        shape = _smooth_cyclic(np.nan_to_num(shape, nan=1.0))
        level = np.nanmedian(lev, axis=0) if nw >= 3 else np.nanmean(lev, axis=0)
        level = np.where(np.isnan(level), np.nanmedian(level) if (~np.isnan(level)).any() else 0.0,
                         level)
    prof = (level[:, None] * shape).ravel()                       # aligned with the last week
    prof = prof * _level_ratio(hist, prof, min(cfg.level_days * day, week), cfg.level_alpha)
    return prof[np.arange(n_out) % week]


def _level_ratio(hist: np.ndarray, prof: np.ndarray, span: int, alpha: float) -> float:
    if alpha == 0:
        return 1.0
    fit, act = prof[len(prof) - span:], hist[len(hist) - span:]
    m = ~np.isnan(act)
    if m.sum() * 2 < span or fit[m].sum() <= 0:
        return 1.0
    ratio = float(np.clip(act[m].sum() / fit[m].sum(), 0.5, 2.0))
    return ratio ** alpha


def _daily(hist: np.ndarray, n_out: int, day: int) -> np.ndarray:
    nd = len(hist) // day
    days = hist[len(hist) - nd * day:].reshape(nd, day)
    lev = _day_levels(days)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shape = np.nanmedian(days / np.where(lev > 0, lev, np.nan)[:, None], axis=0)
        shape = _smooth_cyclic(np.nan_to_num(shape, nan=1.0))
        recent = lev[-3:][~np.isnan(lev[-3:])]
        level = float(np.median(recent)) if len(recent) else float(np.nanmedian(lev))
    return level * shape[np.arange(n_out) % day]


def _level(hist: np.ndarray, n_out: int) -> np.ndarray:
    obs = hist[~np.isnan(hist)]
    if not len(obs):
        return np.full(n_out, np.nan)
    # Bursty short traces (the Azure hours) punish the last value; the median of the recent
    # past (up to 120 steps) was the most robust level in backtests on them.
    return np.full(n_out, float(np.median(obs[-120:])))


def model_kind(n_hist: int, day: int | None) -> str:
    if day is None or day < 2 or n_hist < 2 * day:
        return "level"
    return "weekly" if n_hist >= 7 * day else "daily"


def point_forecast(hist: np.ndarray, n_out: int, day: int | None,
                   cfg: ForecastConfig = ForecastConfig()) -> np.ndarray:
    kind = model_kind(len(hist), day)
    if kind == "weekly":
        return _weekly(hist, n_out, day, cfg)  # type: ignore[arg-type]
    if kind == "daily":
        return _daily(hist, n_out, day)  # type: ignore[arg-type]
    return _level(hist, n_out)
