"""Spend reports from the ledger: cost per group, the Pareto view of users, bot-like users.

Grouping happens in the database, on the hourly and daily rollups
(``metering/console_queries.py``, the query layer the console reads too); only the top
users' request times and prompt hashes are read back, to judge how machine-like they look:

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

from margin.metering import console_queries as cq
from margin.metering import queries
from margin.metering.db import Database
from margin.metering.queries import Filters, Totals

GROUPS = ("user", "team", "feature", "model", "key", "day")
_FIELDS = queries.TOTALS_FIELDS


@dataclass(frozen=True, slots=True)
class BotThresholds:
    min_requests: int = 20
    high_rate_per_min: float = 10.0
    regular_cv: float = 0.35
    repeated_share: float = 0.5


def _row(t: Totals) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(t, k) for k in _FIELDS}
    d["cost_usd"] = round(d["cost_usd"], 8)
    d["saved_usd"] = round(d["saved_usd"], 8)
    d["overrun_usd"] = round(d["overrun_usd"], 8)
    return d


def spend_by(db: Database, by: str, since_s: float | None = None, until_s: float | None = None,
             tz: str = "UTC") -> dict[str, Any]:
    """Cost, tokens, requests and cache savings per group, most expensive first."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    window = Filters(since_s, until_s)
    if by == "day":
        zone = ZoneInfo(tz)
        days: dict[str, Totals] = {}
        # Hours are summed in the database, days here in the wanted zone: in a zone whose
        # offset is not whole hours, the hour that holds midnight counts to the day before.
        for t_s, t in cq.totals_per_bucket(db, window, 3600):
            day = dt.datetime.fromtimestamp(t_s, zone).date().isoformat()
            days[day] = days.get(day, queries.ZERO) + t
        items = [{"day": day, **_row(t)} for day, t in days.items()]
        items.sort(key=lambda g: g["day"])
    else:
        items = [{by: (v if v is not None else "-"), **_row(t)}
                 for v, t in cq.totals_by(db, by, window)]
        items.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g[by]))
    total_cost = sum(g["cost_usd"] for g in items)
    for g in items:
        g["share"] = round(g["cost_usd"] / total_cost, 4) if total_cost > 0 else 0.0
    totals = {k: sum(g[k] for g in items) for k in _FIELDS}
    totals["cost_usd"] = round(float(totals["cost_usd"]), 8)
    totals["saved_usd"] = round(float(totals["saved_usd"]), 8)
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
    window = Filters(since_s, until_s)
    users = [{"user": u, **_row(t)}
             for u, t in cq.totals_by(db, "user", window, skip_null=True)]
    users.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g["user"]))
    total = sum(u["cost_usd"] for u in users)
    k, share = pareto_share([u["cost_usd"] for u in users])
    top = []
    cumulative = 0.0
    for u in users[:top_n]:
        cumulative += u["cost_usd"]
        detail = queries.request_times(db, Filters(since_s, until_s, user=u["user"]),
                                       max_rows_per_user)
        signals = bot_signals([r[0] for r in detail], [r[1] for r in detail], th)
        top.append({**u, "share": round(u["cost_usd"] / total, 4) if total else 0.0,
                    "cumulative_share": round(cumulative / total, 4) if total else 0.0,
                    **signals})
    return {"users": len(users), "cost_usd": round(total, 8),
            "pareto": {"top_fraction": 0.2, "top_users": k, "cost_share": round(share, 4)},
            "top": top, "bot_like": [u["user"] for u in top if u["bot_like"]]}
