"""The band calibrated on its own record (adaptive conformal, after Gibbs & Candès 2021).

For up to ``calibration_origins`` past origins, oldest first, the band each would have drawn is
compared with what happened next (only actuals before the present origin: no look-ahead); each
actual's distance from the band's middle in units of the band's half-width on its side is its
score, and after each origin the band's scale at that day of lead moves by
exp(aci_gain x (share of scores above the scale - (1 - coverage))). A band that kept missing
widens, one that always covered narrows, and a shift in the traffic's volatility is followed
within days. Past bands resting on fewer than two origins' errors are not used.

The two halves of the band are calibrated apart (``calibrate_sides``), each against half the
miss budget: a forecast that runs low for a while (NASA's last weeks) misses above, and
widening both halves by one factor would leave the top too low and the bottom needlessly wide.
With ``aci_gain`` 2 this was chosen on the backtest rows of the shared traces (mean distance
from 80 % coverage 3.6 points, against 3.8 with one factor at gain 1) and checked on derived
traces held out (docs/planner.md). With fewer than ``min_calibration_origins`` (3) past bands to
learn from, the band is not calibrated but widened by sqrt(10/k) for k < 10 past origins, as the
raw band is: one or two past bands say more about those days than about the band's width. The
same rule per day of lead (``side_factors``): a lead that fewer past bands reached takes the
scale learned over all leads (on the 26-day NASA cut this brings 168 h ahead from 93 to 89 %).
"""

from __future__ import annotations

import numpy as np

from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.origins import PointForecasts, eps_for, min_history, origin_step
from margin.plan.forecast.residual_band import MIN_RESIDUAL_ORIGINS, raw_band


def band_scores(fc: PointForecasts, origin: int) -> tuple[np.ndarray, np.ndarray]:
    """How far past actuals fell from the middle of the band each past origin would have drawn,
    as a multiple of that band's half-width on their side (|score| <= 1: inside; positive:
    above the middle), by lead. Only origins before ``origin`` and only actuals before it: no
    look-ahead."""
    values, n_out, day, cfg = fc.values, fc.n_out, fc.day, fc.cfg
    step = origin_step(day, n_out)
    eps = eps_for(values[:origin])
    leads, scores, k = [], [], 0
    oo = origin - step
    while oo >= min_history(day, origin) and k < cfg.calibration_origins:
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
            scores.append((r[m] - mid[m]) / half[m])
            k += 1
        oo -= step
    return leads, scores


def aci_factors(leads: list[np.ndarray], scores: list[np.ndarray], n_out: int, bucket: int,
                coverage: float, gain: float, side: int = 0) -> np.ndarray:
    """Adaptive conformal: walk the past origins oldest first; after each, grow the band's
    scale where more than 1 - coverage of its actuals fell outside, shrink it where fewer did.

    ``side`` +1 or -1 calibrates one half of the band alone (the upper or the lower), against
    half the miss budget: a forecast that runs low misses above, and only that half should
    widen. 0 calibrates both halves by one factor.
    """
    nb = (n_out + bucket - 1) // bucket
    logf = np.zeros(nb)
    budget = (1 - coverage) / (2 if side else 1)
    for ld, sc in zip(reversed(leads), reversed(scores)):
        b = ld // bucket
        out = sc * side if side else np.abs(sc)
        for j in np.unique(b):
            miss = float((out[b == j] > np.exp(logf[j])).mean())
            logf[j] += gain * (miss - budget)
        for j in range(1, nb):   # uncertainty does not shrink with lead
            if not (b == j).any():
                logf[j] = max(logf[j], logf[j - 1])
    return np.repeat(np.exp(logf), bucket)[:n_out]


def side_factors(leads: list[np.ndarray], scores: list[np.ndarray], n_out: int, bucket: int,
                 cfg: ForecastConfig, side: int) -> np.ndarray:
    """One half's scale per day of lead; a day of lead that fewer than
    ``cfg.min_calibration_origins`` past bands reached (the far leads of a young history: only
    the oldest origins have seen 3-7 days past them) takes the scale learned over all leads
    instead, the rule the whole band follows when it has too few past bands."""
    per_lead = aci_factors(leads, scores, n_out, bucket, cfg.coverage, cfg.aci_gain, side)
    nb = (n_out + bucket - 1) // bucket
    seen = np.array([sum(bool(((ld // bucket) == j).any()) for ld in leads) for j in range(nb)])
    few = np.repeat(seen < cfg.min_calibration_origins, bucket)[:n_out]
    if not few.any():
        return per_lead
    pooled = aci_factors(leads, scores, n_out, n_out, cfg.coverage, cfg.aci_gain, side)
    return np.where(few, pooled, per_lead)
