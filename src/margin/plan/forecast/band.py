"""The forecast from the end of a history with its 80 % band: the raw band, calibrated when
``cfg.calibrate`` (and there are past bands enough to calibrate on), turned from log-ratio
offsets into rates."""

from __future__ import annotations

import numpy as np

from margin.plan.forecast.calibration import aci_factors, band_scores, side_factors
from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.origins import PointForecasts, bucket_steps, eps_for
from margin.plan.forecast.residual_band import raw_band


def forecast_with_interval(values: np.ndarray, n_out: int, day: int | None,
                           cfg: ForecastConfig, fc: PointForecasts | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point forecast and band from the end of ``values`` (or of ``fc.values[:len(values)]``)."""
    origin = len(values)
    fc = fc or PointForecasts(values, n_out, day, cfg)
    point, lo, hi, k = raw_band(fc, origin)
    if cfg.calibrate:
        leads, scores = band_scores(fc, origin)
        bucket = bucket_steps(day, n_out)
        if len(scores) < cfg.min_calibration_origins:
            f_lo = f_hi = np.full(n_out, np.sqrt(10 / k) if 0 < k < 10 else 1.0)
        elif cfg.calibrate_sides:
            f_lo = side_factors(leads, scores, n_out, bucket, cfg, side=-1)
            f_hi = side_factors(leads, scores, n_out, bucket, cfg, side=1)
        else:
            f_lo = f_hi = aci_factors(leads, scores, n_out, bucket, cfg.coverage, cfg.aci_gain)
        mid = (lo + hi) / 2
        lo, hi = mid - (mid - lo) * f_lo, mid + (hi - mid) * f_hi
    eps = eps_for(values)
    lower = np.maximum((point + eps) * np.exp(lo) - eps, 0.0)
    upper = np.maximum((point + eps) * np.exp(hi) - eps, 0.0)
    return point, lower, upper
