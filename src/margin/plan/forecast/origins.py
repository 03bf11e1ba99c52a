"""Forecasts from many origins inside one series, each made once, and the rules that place them:
one origin a day apart (half a horizon without a daily cycle), after enough history."""

from __future__ import annotations

import numpy as np

from margin.plan.forecast.config import ForecastConfig
from margin.plan.forecast.profile import point_forecast


def eps_for(hist: np.ndarray) -> float:
    """A small rate added before taking log-ratios, so that zero traffic has a finite error."""
    obs = hist[~np.isnan(hist)]
    return 0.01 * float(obs.mean()) + 1e-9 if len(obs) else 1e-9


def origin_step(day: int | None, n_out: int) -> int:
    return day if day else max(1, n_out // 2)


def min_history(day: int | None, n: int) -> int:
    if day is None:
        return max(4, n // 4)
    return 3 * day


def bucket_steps(day: int | None, n_out: int) -> int:
    """Steps per lead bucket of the band: a day, or a quarter horizon without a daily cycle."""
    return day if day else max(1, n_out // 4)


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
