"""Ledger statistics for ``margin ledger stats``: latency per stage, cost per group, cache
outcomes and compression savings, read through the console's query layer
(``console_queries``) so that the CLI and the console show the same numbers and both
answer from the rollups, not from every row.

What the rollups can and cannot say, and so what this report says:

- sums (requests, errors, tokens, cost, savings, cache outcomes) are exact;
- P50/P95/P99 of gateway overhead, upstream time and each pipeline stage come from the
  rollups' log-spaced histograms (``rollups.hist_quantile``): approximate, within about
  ±13 %; the mean of upstream time is exact (a summed column), those of overhead and the
  stages are read from the same histograms and are as approximate;
- no rollup keeps a histogram of the whole request's time, nor anything of time to first
  token: whole-request P50/P95/P99 (overall and per group) are None ("not measured"),
  their mean is the rollups' latency sum over the requests (a row recorded without a
  latency adds 0), and the ``ttft`` stage is not reported;
- first/last row time and compression tokens are small indexed or aggregate reads of the
  ``requests`` table; ``by="endpoint"`` groups the ``requests`` table itself (no rollup
  keeps the endpoint), which on a large ledger is a scan.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Sequence

from margin.metering import console_queries as cq
from margin.metering import latency_queries, queries, rollups
from margin.metering.db import Database
from margin.metering.queries import Filters

GROUPS = ("stage", "model", "user", "feature", "team", "key", "day", "endpoint")
COST_BY = ("model", "user", "feature", "day")
_ORDER = {"total": 0, "upstream": 1, "overhead": 3}
DAY_S = 86_400


def _ms(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


def hist_mean(counts: Sequence[int]) -> float | None:
    """The mean of a histogram, each bucket at its geometric middle (as approximate as
    the histogram's quantiles)."""
    n = sum(counts)
    if n <= 0:
        return None
    total = 0.0
    for i, c in enumerate(counts):
        if c:
            lo, hi = rollups.bucket_bounds(i)
            total += c * ((lo + hi) / 2 if i == 0 else math.sqrt(lo * hi))
    return total / n


def from_histogram(counts: Sequence[int], mean_ms: float | None = None) -> dict[str, Any]:
    """P50/P95/P99 (and the mean, unless an exact one is given) of a rollup histogram."""
    return {"p50_ms": _ms(rollups.hist_quantile(counts, 0.5)),
            "p95_ms": _ms(rollups.hist_quantile(counts, 0.95)),
            "p99_ms": _ms(rollups.hist_quantile(counts, 0.99)),
            "mean_ms": _ms(hist_mean(counts) if mean_ms is None else mean_ms)}


def whole_request(s: cq.Sums) -> dict[str, Any]:
    """A group's whole-request latency: no rollup keeps its distribution, only its sum."""
    return {"p50_ms": None, "p95_ms": None, "p99_ms": None,
            "mean_ms": _ms(s.latency_ms_sum / s.requests) if s.requests else None}


def by_stage(db: Database, f: Filters, whole: cq.Sums) -> list[dict[str, Any]]:
    overhead, upstream = latency_queries.latency_histograms(db, f)
    out = []
    if whole.requests:
        out.append({"stage": "total", "requests": whole.requests, **whole_request(whole)})
    n_up = sum(upstream)
    if n_up:
        out.append({"stage": "upstream", "requests": n_up,
                    **from_histogram(upstream, whole.upstream_ms_sum / n_up)})
    if sum(overhead):
        out.append({"stage": "overhead", "requests": sum(overhead), **from_histogram(overhead)})
    for stage, counts in latency_queries.stage_histograms(db, f).items():
        if sum(counts):
            out.append({"stage": stage, "requests": sum(counts), **from_histogram(counts)})
    out.sort(key=lambda g: (_ORDER.get(g["stage"], 9), g["stage"]))
    return out


def _group_sums(db: Database, f: Filters, by: str) -> list[tuple[str, cq.Sums]]:
    if by == "day":
        return [(dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d"), s)
                for (t,), s in cq.sums(db, f, ("t",), DAY_S).items()]
    if by == "endpoint":
        return [(v or "-", s) for v, s in cq.endpoint_sums(db, f).items()]
    return [(v or "-", s) for (v,), s in cq.sums(db, f, (by,)).items()]


def by_group(db: Database, f: Filters, by: str) -> list[dict[str, Any]]:
    out = [{by: key, "requests": s.requests, "errors": int(s.errors),
            "prompt_tokens": int(s.prompt_tokens), "completion_tokens": int(s.completion_tokens),
            "cost_usd": round(s.cost_usd, 8), "saved_usd": round(s.saved_usd, 8),
            **whole_request(s)} for key, s in _group_sums(db, f, by)]
    out.sort(key=lambda g: (-g["cost_usd"], -g["requests"], g[by]))
    return out


def cache_summary(db: Database, f: Filters, whole: cq.Sums) -> dict[str, Any]:
    counts = {k: s.requests for (k,), s in cq.sums(db, f, ("cache",)).items()}
    n = whole.requests or 1
    return {"outcomes": counts, "hit_rate": round(int(whole.cache_hits) / n, 4),
            "exact_hit_rate": round(counts.get("exact", 0) / n, 4),
            "semantic_hit_rate": round(counts.get("semantic", 0) / n, 4),
            "saved_usd": round(whole.saved_usd, 8)}


def compression_summary(db: Database, f: Filters, whole: cq.Sums) -> dict[str, Any]:
    c = queries.compression_totals(db, f)
    return {"requests": c.requests, "tokens_before": c.tokens_before,
            "tokens_after": c.tokens_after, "tokens_saved": c.tokens_before - c.tokens_after,
            "saved_usd": round(whole.saved_compression_usd, 8)}


def summary(db: Database, f: Filters = Filters(), by: str = "stage") -> dict[str, Any]:
    """The whole report (``schemas/ledger-stats.schema.json``) for the rows ``f`` matches."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {GROUPS}")
    whole = cq.total(db, f)
    first_ts, last_ts = queries.time_span(db, f)
    cost_by = {g: by_group(db, f, g) for g in COST_BY}
    return {
        "requests": whole.requests,
        "errors": int(whole.errors),
        "first_ts": first_ts,
        "last_ts": last_ts,
        "cost_usd": round(whole.cost_usd, 8),
        "prompt_tokens": int(whole.prompt_tokens),
        "completion_tokens": int(whole.completion_tokens),
        "latency": whole_request(whole),
        "by": by,
        "groups": by_stage(db, f, whole) if by == "stage" else
        cost_by[by] if by in cost_by else by_group(db, f, by),
        "cost_by": cost_by,
        "cache": cache_summary(db, f, whole),
        "compression": compression_summary(db, f, whole),
    }
