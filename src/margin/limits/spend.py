"""Spend reports from the ledger: cost per group, the Pareto view of users, bot-like users.

Grouping happens in SQL (one pass over the period's rows); only the top users' request
times and prompt hashes are read back, to judge how machine-like they look:

- rate: requests per minute over the span they were active;
- regularity: the coefficient of variation (std / mean) of the gaps between requests —
  people are bursty (CV around 1 or more), a cron job or a loop is regular (CV near 0);
- repeats: the share of requests whose prompt (by hash) the user already sent.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from margin.metering.db import Database
from margin.metering.stats import time_where

GROUPS = ("user", "team", "feature", "model", "key", "day")
_COLUMN = {"user": "user_id", "team": "team", "feature": "feature",
           "model": "COALESCE(model, requested_model)", "key": "key_id"}
_AGGREGATES = ("COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), "
               "SUM(saved_usd), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
               "SUM(CASE WHEN cache IN ('exact', 'semantic') THEN 1 ELSE 0 END), "
               # a settled cost above its budget reservation (still charged)
               "SUM(CASE WHEN reserved_usd IS NOT NULL AND cost_usd > reserved_usd "
               "THEN cost_usd - reserved_usd ELSE 0 END)")
_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd", "errors",
           "cache_hits", "overrun_usd")


@dataclass(frozen=True, slots=True)
class BotThresholds:
    min_requests: int = 20
    high_rate_per_min: float = 10.0
    regular_cv: float = 0.35
    repeated_share: float = 0.5


def _hour_expr(db: Database) -> str:
    if db.dialect == "postgresql":
        return "CAST(FLOOR(ts / 3600) AS BIGINT)"
    return "CAST(ts / 3600 AS INTEGER)"


def _where(since_s: float | None, until_s: float | None) -> tuple[str, list[Any]]:
    return time_where(since_s, until_s)


def _row(values: Sequence[Any]) -> dict[str, Any]:
    d = {k: (v or 0) for k, v in zip(_FIELDS, values)}
    d["cost_usd"] = round(float(d["cost_usd"]), 8)
    d["saved_usd"] = round(float(d["saved_usd"]), 8)
    d["overrun_usd"] = round(float(d["overrun_usd"]), 8)
    for k in ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits"):
        d[k] = int(d[k])
    return d


def spend_by(db: Database, by: str, since_s: float | None = None, until_s: float | None = None,
             tz: str = "UTC") -> dict[str, Any]:
    """Cost, tokens, requests and cache savings per group, most expensive first."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    where, params = _where(since_s, until_s)
    groups: dict[str, dict[str, Any]] = {}
    if by == "day":
        zone = ZoneInfo(tz)
        hour = _hour_expr(db)
        rows = db.query(f"SELECT {hour}, {_AGGREGATES} FROM requests{where} GROUP BY {hour}",
                        params)
        for h, *values in rows:
            day = dt.datetime.fromtimestamp(int(h) * 3600, zone).date().isoformat()
            g = groups.setdefault(day, {k: 0 for k in _FIELDS})
            for k, v in zip(_FIELDS, values):
                g[k] += v or 0
        items = [{"day": day, **_row([g[k] for k in _FIELDS])} for day, g in groups.items()]
        items.sort(key=lambda g: g["day"])
    else:
        col = _COLUMN[by]
        rows = db.query(f"SELECT {col}, {_AGGREGATES} FROM requests{where} GROUP BY {col}",
                        params)
        items = [{by: (str(v) if v is not None else "-"), **_row(values)} for v, *values in rows]
        items.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g[by]))
    total_cost = sum(g["cost_usd"] for g in items)
    for g in items:
        g["share"] = round(g["cost_usd"] / total_cost, 4) if total_cost > 0 else 0.0
    totals = _row([sum(g[k] for g in items) for k in _FIELDS])
    return {"by": by, "since_s": since_s, "until_s": until_s, "total": totals, "groups": items}


def pareto_share(costs: Sequence[float], top_fraction: float = 0.2) -> tuple[int, float]:
    """(how many are the top ``top_fraction``, their share of the total cost)."""
    values = sorted((c for c in costs if c > 0), reverse=True)
    total = sum(values)
    if not values or total <= 0:
        return 0, 0.0
    k = max(1, math.ceil(top_fraction * len(values)))
    return k, sum(values[:k]) / total


def bot_signals(ts: Sequence[float], prompt_hashes: Sequence[str | None],
                th: BotThresholds = BotThresholds()) -> dict[str, Any]:
    """How machine-like one user's traffic looks (``ts`` in ascending order)."""
    n = len(ts)
    out: dict[str, Any] = {"rate_per_min": None, "interarrival_cv": None,
                           "repeated_prompt_share": None, "flags": [], "bot_like": False}
    if n == 0:
        return out
    seen: set[str] = set()
    repeats = 0
    for h in prompt_hashes:
        if h is None:
            continue
        if h in seen:
            repeats += 1
        seen.add(h)
    out["repeated_prompt_share"] = round(repeats / n, 4)
    if n >= 2:
        gaps = np.diff(np.asarray(ts, dtype=float))
        span_min = float(ts[-1] - ts[0]) / 60
        out["rate_per_min"] = round((n - 1) / span_min, 3) if span_min > 0 else None
        mean = float(gaps.mean())
        out["interarrival_cv"] = round(float(gaps.std()) / mean, 4) if mean > 0 else 0.0
    if n < th.min_requests:
        return out
    flags = []
    if out["rate_per_min"] is not None and out["rate_per_min"] >= th.high_rate_per_min:
        flags.append("high_rate")
    if out["interarrival_cv"] is not None and out["interarrival_cv"] <= th.regular_cv:
        flags.append("regular")
    if out["repeated_prompt_share"] >= th.repeated_share:
        flags.append("repeated_prompts")
    out["flags"] = flags
    out["bot_like"] = len(flags) >= 2
    return out


def top_users(db: Database, since_s: float | None = None, until_s: float | None = None,
              top_n: int = 10, th: BotThresholds = BotThresholds(),
              max_rows_per_user: int = 100_000) -> dict[str, Any]:
    """The Pareto view (share of cost from the top 20 % of users) and the top users."""
    where, params = _where(since_s, until_s)
    cond = (where + " AND" if where else " WHERE") + " user_id IS NOT NULL"
    rows = db.query(f"SELECT user_id, {_AGGREGATES} FROM requests{cond} GROUP BY user_id",
                    params)
    users = [{"user": str(u), **_row(values)} for u, *values in rows]
    users.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g["user"]))
    total = sum(u["cost_usd"] for u in users)
    k, share = pareto_share([u["cost_usd"] for u in users])
    top = []
    cumulative = 0.0
    for u in users[:top_n]:
        cumulative += u["cost_usd"]
        detail = db.query(f"SELECT ts, prompt_hash FROM requests{cond} AND user_id = ? "
                          f"ORDER BY ts LIMIT ?", [*params, u["user"], max_rows_per_user])
        signals = bot_signals([r[0] for r in detail], [r[1] for r in detail], th)
        top.append({**u, "share": round(u["cost_usd"] / total, 4) if total else 0.0,
                    "cumulative_share": round(cumulative / total, 4) if total else 0.0,
                    **signals})
    return {"users": len(users), "cost_usd": round(total, 8),
            "pareto": {"top_fraction": 0.2, "top_users": k, "cost_share": round(share, 4)},
            "top": top, "bot_like": [u["user"] for u in top if u["bot_like"]]}
