"""The raw interval band (split-conformal): the model is re-run at earlier origins inside the
history, the log-ratios actual/forecast are grouped by lead time (one bucket per day of lead),
and their quantiles make the band. Leads with no past errors get the last bucket's width grown
with sqrt(lead). Without calibration a band from k < 10 past origins is widened by sqrt(10/k),
since k origins are k samples of the level, not k x 24. The band that is then calibrated has
its middle moved by ``band_bias_weight`` x the last day's median error (``last_day_bias``;
0.25, chosen on the shared traces' backtest rows, docs/planner.md)."""

from __future__ import annotations

import numpy as np

from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.origins import (PointForecasts, bucket_steps, eps_for, min_history,
                                          origin_step)

MIN_RESIDUAL_ORIGINS = 2


def lead_residuals(values: np.ndarray, origin: int, n_out: int, day: int | None,
                   cfg: ForecastConfig, fc: PointForecasts | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Log-ratios actual/forecast by lead, from origins before ``origin``; and how many origins."""
    fc = fc or PointForecasts(values, n_out, day, cfg)
    step = origin_step(day, n_out)
    eps = eps_for(values[:origin])
    leads, errs, k = [], [], 0
    oo = origin - step
    while oo >= min_history(day, origin) and k < cfg.residual_origins:
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


def last_day_bias(values: np.ndarray, origin: int, day: int | None, fc: PointForecasts) -> float:
    """Median log-ratio actual/forecast over the day before ``origin``, of the forecast made a
    day earlier (0 without a daily cycle, or with under half of that day observed).

    The band's quantiles describe errors over weeks; a level that has just moved (NASA's last
    days climbing 20-60 % above the usual weekday, ServeGen's drop to half) shows first in the
    last day's errors, all on one side."""
    if not day or origin - day < min_history(day, origin):
        return 0.0
    prev = origin - day
    f = np.maximum(fc.at(prev, day), 0.0)  # shorter than a day when the horizon is
    a = values[prev:prev + len(f)]
    eps = eps_for(values[:origin])
    r = np.log((a + eps) / (f + eps))
    r = r[~np.isnan(r)]
    return float(np.median(r)) if len(r) * 2 >= len(f) and len(r) else 0.0


def raw_band(fc: PointForecasts, origin: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Point forecast and log-ratio band from ``origin``, from the errors before it."""
    if origin in fc.bands:
        return fc.bands[origin]
    values, n_out, day, cfg = fc.values, fc.n_out, fc.day, fc.cfg
    point = np.maximum(fc.at(origin, n_out), 0.0)
    leads, errs, k = lead_residuals(values, origin, n_out, day, cfg, fc)
    lo, hi = interval_bands(leads, errs, k, n_out, bucket_steps(day, n_out), cfg.coverage,
                            widen=not cfg.calibrate)
    if cfg.calibrate and cfg.band_bias_weight:
        b = cfg.band_bias_weight * last_day_bias(values, origin, day, fc)
        lo, hi = lo + b, hi + b
    fc.bands[origin] = (point, lo, hi, k)
    return point, lo, hi, k
