"""A synthetic ledger with a few weeks of seasonal traffic, for anomaly and spend tests.

Three features with their own daily shapes (office hours, evenings, a nightly batch on
weekdays), quieter weekends, Poisson request counts and log-normal request costs. An
spike (``add_spike``) multiplies one feature's requests in one hour.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid

import numpy as np

from margin.metering.db import connect
from margin.metering import rollups
from margin.metering.migrations import migrate

FEATURES = {
    # feature: (team, model, requests per hour at the daily peak, usd per request)
    "support-chat": ("support", "small", 60.0, 0.004),
    "search": ("web", "small", 40.0, 0.002),
    "batch-reports": ("finance", "large", 30.0, 0.02),
}


def _rate(feature: str, when: dt.datetime) -> float:
    peak = FEATURES[feature][2]
    h, weekend = when.hour, when.weekday() >= 5
    if feature == "support-chat":   # office hours, peak mid-afternoon
        shape = 0.1 + 0.9 * math.exp(-((h - 14) / 3.5) ** 2)
        return peak * shape * (0.35 if weekend else 1.0)
    if feature == "search":         # evenings, every day
        return peak * (0.15 + 0.85 * math.exp(-((h - 20) / 2.5) ** 2))
    # nightly batch, weekdays only, two busy hours
    return peak * (1.0 if h in (2, 3) and not weekend else 0.05)


def _rows(rng: np.random.Generator, hour: int, feature: str, rate: float) -> list[tuple]:
    team, model, _, usd = FEATURES[feature]
    n = int(rng.poisson(rate))
    costs = rng.lognormal(math.log(usd) - 0.125, 0.5, n)
    offsets = np.sort(rng.uniform(0, 3600, n))
    users = rng.integers(0, 25, n)
    return [(uuid.uuid4().hex, hour * 3600 + float(off), "chat", 200, f"user{u}", team,
             feature, model, float(cost), 100, 50, uuid.uuid4().hex[:8])
            for off, cost, u in zip(offsets, costs, users)]


def _insert(url: str, rows: list[tuple]) -> None:
    db = connect(url)
    try:
        migrate(db)
        db.executemany(
            "INSERT INTO requests (id, ts, endpoint, status, user_id, team, feature, model, "
            "cost_usd, prompt_tokens, completion_tokens, prompt_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        # Rows put in by SQL, not by the writer: the rollups are rebuilt as an import would.
        rollups.rebuild(db)
        db.commit()
    finally:
        db.close()


def build_ledger(url: str, end_s: float, days: int = 28, seed: int = 7) -> int:
    """Write ``days`` of traffic ending at ``end_s``; returns the number of rows."""
    rng = np.random.default_rng(seed)
    end_hour = int(end_s // 3600)
    rows: list[tuple] = []
    for hour in range(end_hour - days * 24, end_hour):
        when = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
        for feature in FEATURES:
            rows += _rows(rng, hour, feature, _rate(feature, when))
    _insert(url, rows)
    return len(rows)


def add_spike(url: str, feature: str, hour_start_s: float, factor: float,
              seed: int = 11) -> int:
    """Multiply ``feature``'s usual traffic in one hour by ``factor`` (a viral moment)."""
    hour = int(hour_start_s // 3600)
    when = dt.datetime.fromtimestamp(hour * 3600, dt.timezone.utc)
    rows = _rows(np.random.default_rng(seed), hour, feature,
                 (factor - 1) * _rate(feature, when))
    _insert(url, rows)
    return len(rows)
