"""Load forecasts with honest intervals: a robust seasonal-profile model, checked against seasonal naive.

The model (chosen by backtests on the shared NASA and ServeGen traces, see docs/planner.md):

* **weekly** (at least one week of history): the last ``weeks`` weeks are cut into days. Each day's
  mean is its *level*, each day divided by its level is its *shape*. The forecast for a weekday is
  the median level of that weekday times a shape that blends that weekday's median shape with the
  median shape of all days (weight n/(n+k) on the weekday's own, n = weeks seen), so one week of
  history leans on the pooled shape and a month of history keeps Sunday's own. Medians make one
  launch-day spike or one broken day count for little. The whole profile is then scaled towards
  the recent level (the last week's actual / fitted, raised to ``level_alpha``).
* **daily** (two days to a week): median daily shape times the median level of the last three days.
* **level** (under two days, or a step that does not divide a day): the median of the last 120 steps.

Intervals are empirical (split-conformal): the model is re-run at earlier origins inside the
history, the log-ratios actual/forecast are grouped by lead time (one bucket per day of lead), and
their quantiles make the band. Leads with no past errors get the last bucket's width grown with
sqrt(lead).

The band is then calibrated on its own record (adaptive conformal, after Gibbs & Candès 2021):
for up to ``calibration_origins`` past origins, oldest first, the band each would have drawn is
compared with what happened next (only actuals before the present origin: no look-ahead); each
actual's distance from the band's middle in units of the band's half-width on its side is its
score, and after each origin the band's scale at that day of lead moves by
exp(aci_gain x (share of scores above the scale - (1 - coverage))). A band that kept missing
widens, one that always covered narrows, and a shift in the traffic's volatility is followed
within days. Past bands resting on fewer than two origins' errors are not used. Without
calibration (``calibrate=False``) a band from k < 10 past origins is widened by sqrt(10/k)
instead, since k origins are k samples of the level, not k x 24.

Everything here is pure: arrays and the step in, arrays out; the origin is the end of the data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from margin.plan.series import DAY_S, RateSeries, bins_per

MONTH_S = 30 * DAY_S
MIN_RESIDUAL_ORIGINS = 2


@dataclass(frozen=True)
class ForecastConfig:
    horizon_s: float = 7 * DAY_S
    coverage: float = 0.8               # central prediction interval
    weeks: int = 4                      # weeks of history in the weekly profile
    shrink_weeks: float = 1.0           # k in the weekday-shape weight n / (n + k)
    level_alpha: float = 0.5            # 0 = ignore the recent level, 1 = follow it fully
    level_days: int = 7                 # window for the recent level
    growth_monthly: float = 0.0         # applied on top of the forecast, compounding per 30 days
    backtest_origins: int = 14          # rolling origins, one day apart, in the backtest
    residual_origins: int = 28          # past origins whose errors make the intervals
    calibration_origins: int = 14       # past origins whose band misses calibrate the band
    calibrate: bool = True              # rescale the band by its own past misses (see below)
    aci_gain: float = 1.0               # log-scale step per unit of excess miss rate


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


# ---------------------------------------------------------------------------------- baselines

def seasonal_naive(hist: np.ndarray, n_out: int, period: int) -> np.ndarray:
    """Repeat the last full period; a missing value falls back to the same phase a period earlier."""
    n = len(hist)
    out = np.full(n_out, np.nan)
    if period < 1 or n < period:
        return out
    idx = n - period + (np.arange(n_out) % period)
    while True:
        ok = (idx >= 0) & np.isnan(out)
        if not ok.any():
            return out
        out[ok] = hist[idx[ok]]
        idx = idx - period


def naive_last(hist: np.ndarray, n_out: int) -> np.ndarray:
    obs = hist[~np.isnan(hist)]
    return np.full(n_out, obs[-1] if len(obs) else np.nan)


def wape(actual: np.ndarray, pred: np.ndarray) -> float:
    m = ~np.isnan(actual) & ~np.isnan(pred)
    denom = np.abs(actual[m]).sum()
    return float(np.abs(actual[m] - pred[m]).sum() / denom) if denom > 0 else float("nan")


# ---------------------------------------------------------------------------------- the model

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


# ---------------------------------------------------------------------------------- intervals

def _eps(hist: np.ndarray) -> float:
    obs = hist[~np.isnan(hist)]
    return 0.01 * float(obs.mean()) + 1e-9 if len(obs) else 1e-9


def _origin_step(day: int | None, n_out: int) -> int:
    return day if day else max(1, n_out // 2)


def _min_history(day: int | None, n: int) -> int:
    if day is None:
        return max(4, n // 4)
    return 3 * day


class PointForecasts:
    """Point forecasts of one series from many origins, each made once: the intervals and their
    calibration re-forecast the same past origins many times over.

    A forecast from origin ``o`` reads only ``values[:o]`` and its first n steps do not depend
    on how many follow, so one full-horizon forecast per origin serves every caller.
    """

    def __init__(self, values: np.ndarray, n_out: int, day: int | None,
                 cfg: ForecastConfig) -> None:
        self.values, self.n_out, self.day, self.cfg = values, n_out, day, cfg
        self._cache: dict[int, np.ndarray] = {}
        self.bands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}

    def at(self, origin: int, n: int) -> np.ndarray:
        f = self._cache.get(origin)
        if f is None:
            f = point_forecast(self.values[:origin], self.n_out, self.day, self.cfg)
            self._cache[origin] = f
        return f[:n]


def lead_residuals(values: np.ndarray, origin: int, n_out: int, day: int | None,
                   cfg: ForecastConfig, fc: PointForecasts | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Log-ratios actual/forecast by lead, from origins before ``origin``; and how many origins."""
    fc = fc or PointForecasts(values, n_out, day, cfg)
    step = _origin_step(day, n_out)
    eps = _eps(values[:origin])
    leads, errs, k = [], [], 0
    oo = origin - step
    while oo >= _min_history(day, origin) and k < cfg.residual_origins:
        n = min(n_out, origin - oo)
        f = fc.at(oo, n)
        a = values[oo:oo + n]
        m = ~np.isnan(a) & ~np.isnan(f)
        if m.any():
            leads.append(np.arange(n)[m])
            errs.append(np.log((a[m] + eps) / (np.maximum(f[m], 0) + eps)))
            k += 1
        oo -= step
    if not leads:
        return np.array([], dtype=int), np.array([]), 0
    return np.concatenate(leads), np.concatenate(errs), k


def interval_bands(leads: np.ndarray, errs: np.ndarray, k_origins: int, n_out: int,
                   bucket: int, coverage: float, widen: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper log-ratio offsets per lead step."""
    q_lo, q_hi = (1 - coverage) / 2, 1 - (1 - coverage) / 2
    nb = (n_out + bucket - 1) // bucket
    lo, hi = np.full(nb, np.nan), np.full(nb, np.nan)
    min_n = max(8, bucket)
    for b in range(nb):
        m = (leads >= b * bucket) & (leads < (b + 1) * bucket)
        if m.sum() >= min_n:
            lo[b], hi[b] = np.quantile(errs[m], [q_lo, q_hi])
    if np.isnan(lo).all():
        if len(errs) >= 4:
            lo[0], hi[0] = np.quantile(errs, [q_lo, q_hi])
        else:
            # No history of our own errors at all: a wide, declared default (+-50 %).
            lo[0], hi[0] = np.log(0.5), np.log(1.5)
    last = 0
    for b in range(nb):
        if np.isnan(lo[b]):
            grow = np.sqrt((b + 1) / (last + 1))
            lo[b], hi[b] = lo[last] * grow, hi[last] * grow
        else:
            if b > 0:   # uncertainty does not shrink with lead
                lo[b], hi[b] = min(lo[b], lo[b - 1]), max(hi[b], hi[b - 1])
            last = b
    if widen and 0 < k_origins < 10:
        widen = np.sqrt(10 / k_origins)
        mid = (lo + hi) / 2
        lo, hi = mid + (lo - mid) * widen, mid + (hi - mid) * widen
    return np.repeat(lo, bucket)[:n_out], np.repeat(hi, bucket)[:n_out]


def _bucket(day: int | None, n_out: int) -> int:
    return day if day else max(1, n_out // 4)


def raw_band(fc: PointForecasts, origin: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Point forecast and log-ratio band from ``origin``, from the errors before it."""
    if origin in fc.bands:
        return fc.bands[origin]
    values, n_out, day, cfg = fc.values, fc.n_out, fc.day, fc.cfg
    point = np.maximum(fc.at(origin, n_out), 0.0)
    leads, errs, k = lead_residuals(values, origin, n_out, day, cfg, fc)
    lo, hi = interval_bands(leads, errs, k, n_out, _bucket(day, n_out), cfg.coverage,
                            widen=not cfg.calibrate)
    fc.bands[origin] = (point, lo, hi, k)
    return point, lo, hi, k


def band_scores(fc: PointForecasts, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """How far past actuals fell outside the band each past origin would have drawn, as a
    multiple of that band's half-width on their side (<= 1: inside), by lead. Only origins
    before ``origin`` and only actuals before it: no look-ahead."""
    values, n_out, day, cfg = fc.values, fc.n_out, fc.day, fc.cfg
    step = _origin_step(day, n_out)
    eps = _eps(values[:origin])
    leads, scores, k = [], [], 0
    oo = origin - step
    while oo >= _min_history(day, origin) and k < cfg.calibration_origins:
        n = min(n_out, origin - oo)
        point, lo, hi, k_res = raw_band(fc, oo)
        if k_res < MIN_RESIDUAL_ORIGINS:
            break   # earlier bands rest on fewer past errors than any band we draw now
        a = values[oo:oo + n]
        r = np.log((a + eps) / (point[:n] + eps))
        mid = (lo[:n] + hi[:n]) / 2
        half = np.where(r >= mid, hi[:n] - mid, mid - lo[:n])
        m = ~np.isnan(r) & (half > 1e-9)
        if m.any():
            leads.append(np.arange(n)[m])
            scores.append(np.abs(r[m] - mid[m]) / half[m])
            k += 1
        oo -= step
    return leads, scores


def aci_factors(leads: list[np.ndarray], scores: list[np.ndarray], n_out: int, bucket: int,
                coverage: float, gain: float) -> np.ndarray:
    """Adaptive conformal: walk the past origins oldest first; after each, grow the band's
    scale where more than 1 - coverage of its actuals fell outside, shrink it where fewer did."""
    nb = (n_out + bucket - 1) // bucket
    logf = np.zeros(nb)
    for ld, sc in zip(reversed(leads), reversed(scores)):
        b = ld // bucket
        for j in np.unique(b):
            miss = float((sc[b == j] > np.exp(logf[j])).mean())
            logf[j] += gain * (miss - (1 - coverage))
        for j in range(1, nb):   # uncertainty does not shrink with lead
            if not (b == j).any():
                logf[j] = max(logf[j], logf[j - 1])
    return np.repeat(np.exp(logf), bucket)[:n_out]


def forecast_with_interval(values: np.ndarray, n_out: int, day: int | None,
                           cfg: ForecastConfig, fc: PointForecasts | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point forecast and band from the end of ``values`` (or of ``fc.values[:len(values)]``)."""
    origin = len(values)
    fc = fc or PointForecasts(values, n_out, day, cfg)
    point, lo, hi, _ = raw_band(fc, origin)
    if cfg.calibrate:
        leads, scores = band_scores(fc, origin)
        f = aci_factors(leads, scores, n_out, _bucket(day, n_out), cfg.coverage, cfg.aci_gain)
        mid = (lo + hi) / 2
        lo, hi = mid - (mid - lo) * f, mid + (hi - mid) * f
    eps = _eps(values)
    lower = np.maximum((point + eps) * np.exp(lo) - eps, 0.0)
    upper = np.maximum((point + eps) * np.exp(hi) - eps, 0.0)
    return point, lower, upper


# ---------------------------------------------------------------------------------- backtest

def _user_pick(values: np.ndarray, origin: int, n_out: int, day: int, week: int) -> str | None:
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
    step = _origin_step(day, n_out)
    min_hist = (7 * day if day and n >= 7 * day + n_out else _min_history(day, n))
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
            pick = _user_pick(values, o, n_out, day, week) or "day"
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


# ---------------------------------------------------------------------------------- entry point

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
