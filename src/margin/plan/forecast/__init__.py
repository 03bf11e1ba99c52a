"""Load forecasts with honest intervals: a robust seasonal-profile model, checked against seasonal naive.

One concept per module, from the bottom up:

* ``config``: ``ForecastConfig``, the settings every part reads.
* ``naive``: the seasonal-naive baselines and WAPE.
* ``profile``: the point forecast (weekly or daily profile of robust levels and shapes, or a
  robust recent level when the history holds no daily cycle).
* ``origins``: point forecasts from many origins inside the history, each made once.
* ``residual_band``: the raw band, from the model's own past errors by lead (split-conformal).
* ``calibration``: the band rescaled by how its past bands covered (adaptive conformal).
* ``band``: forecast and band from the end of a history (what the autoscaler calls).
* ``backtesting``: rolling origins against the seasonal naives.
* ``series_forecast``: ``forecast`` and ``backtest_series`` on a ``RateSeries`` (what the CLI calls).

Everything is pure: arrays and the step in, arrays out; the origin is the end of the data.
"""

from margin.plan.forecast.backtesting import BacktestResult, backtest
from margin.plan.forecast.band import forecast_with_interval
from margin.plan.forecast.calibration import aci_factors, band_scores
from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.naive import naive_last, seasonal_naive, wape
from margin.plan.forecast.origins import PointForecasts
from margin.plan.forecast.profile import model_kind, point_forecast
from margin.plan.forecast.residual_band import interval_bands, lead_residuals, raw_band
from margin.plan.forecast.series_forecast import (MONTH_S, ForecastResult, backtest_series,
                                                  forecast)

__all__ = ["MONTH_S", "BacktestResult", "ForecastConfig", "ForecastResult", "PointForecasts",
           "aci_factors", "backtest", "backtest_series", "band_scores", "forecast",
           "forecast_with_interval", "interval_bands", "lead_residuals", "model_kind",
           "naive_last", "point_forecast", "raw_band", "seasonal_naive", "wape"]
