"""Cost anomalies: an hour that costs far more than the same hour usually does.

Each series (the hourly cost of one team, feature or model) is compared with its own
seasonal baseline: the same hour on previous days (lags of 24 h) and, when there are
enough weeks, the same hour of the same weekday (lags of 168 h). The score is robust:
``(cost - median) / scale``, where the scale is the largest of

- ``1.4826 × MAD`` of the baseline hours (the standard deviation a normal series would
  have, unmoved by the odd outlier);
- 10 % of the median, so that a very regular series does not turn wobbles into alarms;
- the noise of counting: an hour's cost is a sum over a Poisson number of requests, whose
  standard deviation is ``sqrt(λ · E[c²])`` (λ the usual number of requests in that hour,
  at least 4, E[c²] the mean squared cost of one request). A quiet hour that usually sees
  one or two requests can see eight without anything being wrong; a busy one cannot.

An hour is an anomaly when it scores above ``min_score`` against *both* baselines (a
Monday peak that every Monday has is not one), costs at least ``min_ratio`` times its
usual cost, and at least ``min_cost_usd``. A daily peak is normal for its hour, so it is
never flagged for being a peak.

Hours are UNIX hours (``ts // 3600``); a lag of 24 h keeps the local hour of day except
across a daylight-saving change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from margin.limits.config import AnomalyConfig
from margin.metering import console_queries, queries
from margin.metering.db import Database

MAD_TO_SIGMA = 1.4826
REL_SCALE_FLOOR = 0.10
# Fewer requests than this in an hour are too few to call: their counting noise is taken
# as that of this many (Poisson tails are far heavier than a normal's at one or two).
MIN_COUNTED_REQUESTS = 4.0
MIN_WEEKLY_SAMPLES = 3  # the MAD of two values is half their difference: not a spread
DIMENSIONS = ("team", "feature", "model")


@dataclass
class HourlySeries:
    """One series: cost per UNIX hour, and (from a ledger) requests and the sum of squared
    request costs per hour, for the counting-noise floor. Missing hours cost 0."""

    cost: dict[int, float]
    count: dict[int, int] = field(default_factory=dict)
    cost_sq: dict[int, float] = field(default_factory=dict)

    def mean_sq_cost(self) -> float | None:
        n = sum(self.count.values())
        return sum(self.cost_sq.values()) / n if n else None


@dataclass(frozen=True, slots=True)
class Baseline:
    median_usd: float
    scale_usd: float
    samples: int

    def score(self, cost_usd: float) -> float:
        return (cost_usd - self.median_usd) / self.scale_usd


@dataclass(frozen=True, slots=True)
class Anomaly:
    dimension: str
    value: str
    hour_start_s: int
    cost_usd: float
    baseline_usd: float   # the usual cost of this hour (median of the same hours)
    ratio: float          # cost / baseline
    score: float          # robust z-score (the lower of the daily and weekly ones)
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline(history: Sequence[float], floor_usd: float) -> Baseline | None:
    if not history:
        return None
    arr = np.asarray(history, dtype=float)
    med = float(np.median(arr))
    mad = float(np.median(np.abs(arr - med)))
    scale = max(MAD_TO_SIGMA * mad, REL_SCALE_FLOOR * med, floor_usd, 1e-12)
    return Baseline(med, scale, len(arr))


def _lags(hour: int, lag_h: int, count: int, first_hour: int) -> list[int]:
    return [h for h in (hour - k * lag_h for k in range(1, count + 1)) if h >= first_hour]


def _seasonal(series: HourlySeries, hours: list[int], abs_floor: float,
              mean_sq: float | None) -> Baseline | None:
    floor = abs_floor
    if mean_sq is not None and series.count:
        usual_requests = float(np.median([series.count.get(h, 0) for h in hours]))
        floor = max(floor, math.sqrt(max(usual_requests, MIN_COUNTED_REQUESTS) * mean_sq))
    return baseline([series.cost.get(h, 0.0) for h in hours], floor)


def score_hour(series: HourlySeries, hour: int, first_hour: int, cfg: AnomalyConfig,
               mean_sq: float | None = None) -> Anomaly | None:
    """The anomaly at ``hour`` of one series (dimension and value left blank), or None."""
    cost = series.cost.get(hour, 0.0)
    if cost < cfg.min_cost_usd or cost <= 0:
        return None
    abs_floor = max(cfg.min_cost_usd, 0.01) / 4
    daily = _lags(hour, 24, cfg.lookback_days, first_hour)
    if len(daily) < cfg.min_history_days:
        return None
    base = _seasonal(series, daily, abs_floor, mean_sq)
    assert base is not None
    score = base.score(cost)
    weekly = _lags(hour, 168, cfg.lookback_days // 7, first_hour)
    if len(weekly) >= MIN_WEEKLY_SAMPLES:
        wbase = _seasonal(series, weekly, abs_floor, mean_sq)
        assert wbase is not None
        if wbase.score(cost) < score:
            score, base = wbase.score(cost), wbase
    usual = base.median_usd
    ratio = cost / usual if usual > 0 else math.inf
    if score < cfg.min_score or ratio < cfg.min_ratio:
        return None
    return Anomaly("", "", hour * 3600, round(cost, 6), round(usual, 6),
                   round(ratio, 2) if math.isfinite(ratio) else 1e9, round(score, 2),
                   base.samples)


def detect(series_by_key: Mapping[tuple[str, str], HourlySeries], hours: Iterable[int],
           cfg: AnomalyConfig) -> list[Anomaly]:
    """Every anomaly among ``hours`` of every series; biggest scores first."""
    hours = list(hours)
    found: list[Anomaly] = []
    for (dimension, value), series in series_by_key.items():
        if not series.cost:
            continue
        first = min(series.cost)
        mean_sq = series.mean_sq_cost()
        for hour in hours:
            a = score_hour(series, hour, first, cfg, mean_sq)
            if a is not None:
                found.append(Anomaly(dimension, value, a.hour_start_s, a.cost_usd,
                                     a.baseline_usd, a.ratio, a.score, a.samples))
    found.sort(key=lambda a: (-a.score, a.hour_start_s))
    return found


def hourly_costs(db: Database, since_s: float, until_s: float,
                 dimensions: Sequence[str] = DIMENSIONS) -> dict[tuple[str, str], HourlySeries]:
    """Hourly series per (dimension, value) from the ledger, rows without a value left out."""
    out: dict[tuple[str, str], HourlySeries] = {}
    window = queries.Filters(since_s, until_s)
    for dim in dimensions:
        for hc in console_queries.hourly_costs(db, dim, window):
            series = out.get((dim, hc.value))
            if series is None:
                series = out[(dim, hc.value)] = HourlySeries({})
            series.cost[hc.hour] = hc.cost_usd
            series.count[hc.hour] = hc.requests
            series.cost_sq[hc.hour] = hc.cost_sq_usd2
    return out


def find_anomalies(db: Database, since_s: float, now_s: float,
                   cfg: AnomalyConfig) -> list[Anomaly]:
    """Anomalies among the complete hours from ``since_s`` to ``now_s``."""
    first_hour = int(since_s // 3600)
    last_hour = int(now_s // 3600)  # the current hour is incomplete: not judged
    history_s = first_hour * 3600 - cfg.lookback_days * 86400
    series = hourly_costs(db, history_s, last_hour * 3600, cfg.dimensions)
    return detect(series, range(first_hour, last_hour), cfg)
