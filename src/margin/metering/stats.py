"""Ledger statistics: latency percentiles per stage and group, cost per group, cache
outcomes. Pure functions over the rows ``queries.stats_rows`` reads."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import orjson

from margin.metering.queries import StatsRow

GROUPS = ("stage", "model", "user", "feature", "team", "key", "day", "endpoint")
Row = StatsRow  # one request, as ``queries.stats_rows`` reads it


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    arr = np.fromiter((v for v in values if v is not None), dtype=float)
    if arr.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(arr.mean()), 3)}


def _key(row: Row, by: str) -> str:
    if by == "day":
        return dt.datetime.fromtimestamp(row.ts, dt.timezone.utc).strftime("%Y-%m-%d")
    value = {"model": row.model or row.requested_model, "user": row.user_id, "team": row.team,
             "feature": row.feature, "key": row.key_id, "endpoint": row.endpoint}[by]
    return value if value else "-"


def by_stage(rows: list[Row]) -> list[dict[str, Any]]:
    per: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.stage_ms:
            for stage, ms in orjson.loads(r.stage_ms).items():
                per[stage].append(ms)
        for name, v in (("upstream", r.upstream_ms), ("overhead", r.overhead_ms),
                        ("total", r.latency_ms), ("ttft", r.ttft_ms)):
            if v is not None and (name != "upstream" or v > 0):
                per[name].append(v)
    order = {"total": 0, "upstream": 1, "ttft": 2, "overhead": 3}
    return [{"stage": s, "requests": len(v), **percentiles(v)}
            for s, v in sorted(per.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))]


def by_group(rows: list[Row], by: str) -> list[dict[str, Any]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[_key(r, by)].append(r)
    out = []
    for key, rs in groups.items():
        out.append({
            by: key, "requests": len(rs),
            "errors": sum(1 for r in rs if r.status >= 400),
            "prompt_tokens": sum(r.prompt_tokens for r in rs),
            "completion_tokens": sum(r.completion_tokens for r in rs),
            "cost_usd": round(sum(r.cost_usd for r in rs), 8),
            "saved_usd": round(sum(r.saved_usd for r in rs), 8),
            **percentiles(r.latency_ms for r in rs),
        })
    out.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g[by]))
    return out


def cache_summary(rows: list[Row]) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.cache] += 1
    n = len(rows) or 1
    hits = counts.get("exact", 0) + counts.get("semantic", 0)
    return {"outcomes": dict(counts), "hit_rate": round(hits / n, 4),
            "exact_hit_rate": round(counts.get("exact", 0) / n, 4),
            "semantic_hit_rate": round(counts.get("semantic", 0) / n, 4),
            "saved_usd": round(sum(r.saved_usd for r in rows), 8)}


def compression_summary(rows: list[Row]) -> dict[str, Any]:
    before = after = saved_usd = 0.0
    n = 0
    for r in rows:
        if r.tokens_before_compression is None or r.tokens_after_compression is None:
            continue
        n += 1
        before += r.tokens_before_compression
        after += r.tokens_after_compression
        if r.notes:
            saved_usd += float(orjson.loads(r.notes).get("compression_saved_usd") or 0.0)
    return {"requests": n, "tokens_before": int(before), "tokens_after": int(after),
            "tokens_saved": int(before - after), "saved_usd": round(saved_usd, 8)}


def summary(rows: list[Row], by: str = "stage") -> dict[str, Any]:
    if by not in GROUPS:
        raise ValueError(f"by must be one of {GROUPS}")
    return {
        "requests": len(rows),
        "errors": sum(1 for r in rows if r.status >= 400),
        "first_ts": rows[0].ts if rows else None,
        "last_ts": rows[-1].ts if rows else None,
        "cost_usd": round(sum(r.cost_usd for r in rows), 8),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "latency": percentiles(r.latency_ms for r in rows),
        "by": by,
        "groups": by_stage(rows) if by == "stage" else by_group(rows, by),
        "cost_by": {g: by_group(rows, g) for g in ("model", "user", "feature", "day")},
        "cache": cache_summary(rows),
        "compression": compression_summary(rows),
    }
