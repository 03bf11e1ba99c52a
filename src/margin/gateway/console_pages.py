"""What each console page shows, built from the ledger's query layer
(``metering/console_queries.py``): the payloads of ``/admin/overview``, ``/admin/spend``,
``/admin/requests`` and ``/admin/anomalies`` (docs/admin-api.md). Synchronous functions of
a database handle, the filters and the clock; the handlers run them in a worker thread."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from margin.limits import spend as spend_report
from margin.limits.anomalies import find_anomalies
from margin.limits.config import AnomalyConfig
from margin.limits.periods import period_bounds
from margin.metering import console_queries as cq
from margin.metering import latency_queries, request_log
from margin.metering.db import Database
from margin.metering.queries import Filters
from margin.metering.rollups import MEASURES, hist_quantile

DAY_S = 86_400
BOT_SAMPLE_ROWS = 2000   # a user's newest requests that judge how machine-like it is
BOT_CANDIDATES = 10      # the biggest spenders that are judged


def _r(v: float) -> float:
    return round(float(v), 8)


def _q(counts: list[int]) -> dict[str, float | None]:
    out = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        v = hist_quantile(counts, q)
        out[name] = None if v is None else round(v, 3)
    return out


def overview(db: Database, f: Filters, now_s: float, tz: str) -> dict[str, Any]:
    """Spend, requests and tokens over today / 7 d / 30 d, error and cache-hit rates (7 d),
    savings per optimization (30 d), latencies (24 h). ``f``'s window is ignored: the
    page's windows end at ``now_s``."""
    def window(since: float, until: float = now_s) -> Filters:
        return replace(f, since_s=since, until_s=until)

    today = period_bounds("day", now_s, ZoneInfo(tz)).start_s
    by_window = {name: cq.total(db, window(since)) for name, since in
                 (("today", today), ("7d", now_s - 7 * DAY_S), ("30d", now_s - 30 * DAY_S))}
    prev = cq.total(db, window(now_s - 14 * DAY_S, now_s - 7 * DAY_S))
    week = by_window["7d"]
    by_cache = {k[0]: s for k, s in
                cq.sums(db, window(now_s - 30 * DAY_S), ("cache",)).items()}
    month = by_window["30d"]
    saved = {"exact_cache": by_cache["exact"].saved_usd if "exact" in by_cache else 0.0,
             "semantic_cache": by_cache["semantic"].saved_usd if "semantic" in by_cache else 0.0,
             "routing": month.saved_routing_usd, "compression": month.saved_compression_usd,
             "batching": month.saved_batching_usd}
    saved = {k: _r(v) for k, v in saved.items()}
    saved["total"] = _r(sum(saved.values()))
    day = window(now_s - DAY_S)
    overhead, upstream = latency_queries.latency_histograms(db, day)
    stages = latency_queries.stage_histograms(db, day)
    return {
        "generated_at": now_s,
        "spend_usd": {k: _r(t.cost_usd) for k, t in by_window.items()},
        "spend_trend": {"7d_vs_prev": (round(week.cost_usd / prev.cost_usd, 4)
                                       if prev.cost_usd > 0 else None)},
        "requests": {k: t.requests for k, t in by_window.items()},
        "tokens": {"prompt": int(month.prompt_tokens), "completion": int(month.completion_tokens)},
        "error_rate": round(week.errors / week.requests, 6) if week.requests else None,
        "cache_hit_rate": round(week.cache_hits / week.requests, 6) if week.requests else None,
        "saved_usd": saved,
        "latency_ms": {"overhead": _q(overhead), "upstream": _q(upstream)},
        "stage_ms": {s: _q(c)["p50"] for s, c in sorted(stages.items())},
    }


def _label(v: str | None) -> str:
    return v if v is not None else "-"


def pareto_curve(costs: list[float], points: int = 20) -> list[dict[str, float]]:
    """(share of users, share of spend) of the biggest spenders first: the Lorenz curve
    read from the top, at ``points`` even steps (every user when there are fewer)."""
    values = sorted((c for c in costs if c > 0), reverse=True)
    total = sum(values)
    if not values or total <= 0:
        return []
    n = len(values)
    cumulative = [0.0]
    for v in values:
        cumulative.append(cumulative[-1] + v)
    ks = sorted({0, n, *(math.ceil(n * i / points) for i in range(1, points))})
    return [{"share_of_users": round(k / n, 4), "share_of_spend": round(cumulative[k] / total, 4)}
            for k in ks]


def spend(db: Database, f: Filters, by: str, bucket_s: int, top: int) -> dict[str, Any]:
    """Cost per group over time (the ``top`` groups, the rest as ``other``), totals per
    group (all of them, biggest first), the Pareto curve of users and bot-like users."""
    shown_measures = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd",
                      "errors", "cache_hits")
    groups = [(v, s) for (v,), s in cq.sums(db, f, (by,), measures=shown_measures).items()]
    groups.sort(key=lambda g: (-g[1].cost_usd, -g[1].requests, _label(g[0])))
    shown = {g[0] for g in groups[:top]}
    grand = sum(s.cost_usd for _, s in groups)
    # Read by position: a page by key or user has thousands of groups, and a property
    # per measure per group was a fifth of the page's time (profiled at 10 M rows).
    i_req, i_pt, i_ct, i_cost, i_saved, i_err, i_hits = (MEASURES.index(m)
                                                         for m in shown_measures)
    totals = []
    for v, s in groups:
        x = s.values
        totals.append({"group": _label(v), "cost_usd": round(x[i_cost], 8),
                       "requests": int(x[i_req]), "tokens": int(x[i_pt] + x[i_ct]),
                       "prompt_tokens": int(x[i_pt]), "completion_tokens": int(x[i_ct]),
                       "saved_usd": round(x[i_saved], 8), "errors": int(x[i_err]),
                       "cache_hits": int(x[i_hits]),
                       "share": round(x[i_cost] / grand, 4) if grand > 0 else 0.0})
    # The chart: the top groups per bucket and, where other groups have rows too, "other"
    # as the bucket's total less the top's (reading every group per bucket would be
    # 60,000 rows for 2,000 users over 30 days).
    cost_only = ("requests", "cost_usd")
    per_bucket: dict[int, dict[str, float]] = {}
    shown_requests: dict[int, int] = {}
    for (t, v), s in cq.sums(db, f, ("t", by), bucket_s, measures=cost_only,
                             among=(by, sorted(shown, key=_label))).items():
        per_bucket.setdefault(t, {})[_label(v)] = s.cost_usd
        shown_requests[t] = shown_requests.get(t, 0) + s.requests
    if len(groups) > len(shown):
        for (t,), s in cq.sums(db, f, ("t",), bucket_s, measures=cost_only).items():
            if s.requests > shown_requests.get(t, 0):
                values = per_bucket.setdefault(t, {})
                values["other"] = max(0.0, s.cost_usd - sum(values.values()))
    series = [{"t": t, "values": {k: _r(c) for k, c in sorted(values.items())}}
              for t, values in sorted(per_bucket.items())]
    users = groups if by == "user" else [
        (v, s) for (v,), s in cq.sums(db, f, ("user",), measures=cost_only).items()]
    users = [(v, s) for v, s in users if v is not None]
    users.sort(key=lambda g: -g[1].cost_usd)
    flagged = []
    for user, _ in users[:BOT_CANDIDATES]:
        # Judged on the user's own traffic in the window, whatever else the page filters:
        # how machine-like a sender is does not depend on the model or team looked at, and
        # (user, ts, prompt hash) is then an index the rows are read from alone.
        times = request_log.recent_times(db, Filters(f.since_s, f.until_s, user=user), BOT_SAMPLE_ROWS)
        signals = spend_report.bot_signals([t for t, _ in times], [h for _, h in times])
        if signals["bot_like"]:
            flagged.append({"group": user, "reason": ", ".join(signals["flags"]),
                            "rate_per_min": signals["rate_per_min"],
                            "interarrival_cv": signals["interarrival_cv"],
                            "repeated_prompt_share": signals["repeated_prompt_share"]})
    return {"by": by, "bucket": "hour" if bucket_s == 3600 else "day",
            "since_s": f.since_s, "until_s": f.until_s, "series": series, "totals": totals,
            "pareto": pareto_curve([s.cost_usd for _, s in users]), "flagged": flagged}


_JSON_FIELDS = ("stage_ms", "attempts", "notes")


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": r["id"], "ts": r["ts"], "user": r["user_id"], "team": r["team"],
            "feature": r["feature"], "model": r["model"] or r["requested_model"],
            "key_id": r["key_id"], "status": r["status"], "cache": r["cache"],
            "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
            "cost_usd": r["cost_usd"], "latency_ms": r["latency_ms"]}


def requests_page(db: Database, f: Filters, limit: int, cursor: str | None) -> dict[str, Any]:
    rows, nxt = request_log.request_page(db, f, limit, cursor)
    return {"rows": [_row(r) for r in rows], "next_cursor": nxt}


def _loads(text: Any) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def request_detail(db: Database, request_id: str, log_content: bool) -> dict[str, Any] | None:
    r = request_log.request_detail(db, request_id, with_content=log_content)
    if r is None:
        return None
    out = _row(r)
    parsed = {k: _loads(r[k]) for k in _JSON_FIELDS}
    notes = parsed["notes"] if isinstance(parsed["notes"], dict) else {}
    out.update({
        "requested_model": r["requested_model"], "endpoint": r["endpoint"],
        "provider": r["provider"], "error_type": r["error_type"],
        "stage_ms": parsed["stage_ms"] or {}, "attempts": parsed["attempts"] or [],
        "fallbacks": notes.get("fallback"), "similarity": r["cache_similarity"],
        "ttft_ms": r["ttft_ms"], "upstream_ms": r["upstream_ms"],
        "overhead_ms": r["overhead_ms"], "reserved_usd": r["reserved_usd"],
        "dialect": r["dialect"], "route": r["route"] or (notes.get("route") or {}).get("name"),
        "saved_usd": r["saved_usd"], "streamed": bool(r["streamed"]),
        "estimated": bool(r["estimated"]), "cached_tokens": r["cached_tokens"],
        "cache_write_tokens": r["cache_write_tokens"],
        "reasoning_tokens": r["reasoning_tokens"], "notes": notes})
    if log_content:
        out["prompt"] = _loads(r["prompt"])
        out["response"] = r["response"]
    return out


def anomalies(db: Database, since_s: float, now_s: float, cfg: AnomalyConfig
              ) -> dict[str, Any]:
    found = find_anomalies(db, since_s, now_s, cfg)
    return {"since_s": since_s, "until_s": now_s, "anomalies": [
        {"kind": "cost_anomaly", "group": f"{a.dimension}:{a.value}", "at": a.hour_start_s,
         "detail": a.as_dict()} for a in found]}
