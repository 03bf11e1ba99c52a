"""The forecaster's settings, one typed object shared by the model, its bands and the backtest."""

from __future__ import annotations

from dataclasses import dataclass

from margin.plan.series import DAY_S


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
    aci_gain: float = 2.0               # log-scale step per unit of excess miss rate
    calibrate_sides: bool = True        # calibrate the upper and lower halves apart
    min_calibration_origins: int = 3    # fewer past bands to learn from: the raw band's widening
    band_bias_weight: float = 0.25      # calibrated band: move its middle by this share of the
    #                                     last day's median log error (0: off)
