"""Hourly and daily rollups of the ledger, kept in step with every batch the writer inserts.

Five tables (created by migration 7), each a sum over the rows of one time bucket:

- ``rollup_dim_hour`` / ``rollup_dim_day``: per (bucket, dimension, value) for the user,
  team, feature and key dimensions one at a time — what a page grouped or filtered on one
  of them alone reads (a few rows per value and bucket, not one per combination);
- ``rollup_day``: per (UTC day, user, team, feature, model) — so a page filtered and
  grouped on several of these is a ``WHERE`` on it. Only daily, and without key, cache
  outcome and status: per hour, or with those, the combinations of a busy ledger are
  nearly as many as its rows (measured with ``margin bench ledger``), so such queries, and
  the partial days of these, read the ``requests`` table on its indexes instead;
- ``rollup_model_hour``: per (hour, model, cache, status), small enough to read 90 days
  at once, with histograms of gateway overhead and upstream time: the overview, the
  capacity page and ``by=model`` read it;
- ``rollup_stage_hour``: per (hour, stage), a histogram of each stage's own time.

Histograms have fixed log-spaced buckets (``HIST_BUCKETS`` of ratio ``HIST_FACTOR`` above
``HIST_BASE_MS``), so two hours' histograms add up and P50/P95/P99 are read from the sum
(within half a bucket: about ±13 %).

Missing attribution is stored as '' (a NULL never equals another NULL, so it could not be
part of a conflict key); readers turn it back into None. The writer adds a batch's rows
(only those the INSERT did not skip as duplicates) with one UPSERT per table in the same
transaction as the INSERT, so a rollup is never ahead of or behind its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import orjson

from margin.metering.db import Database

HOUR_S = 3600
DAY_S = 86_400
HIST_BASE_MS = 0.05
HIST_FACTOR = 1.3
HIST_BUCKETS = 56
_LOG_FACTOR = math.log(HIST_FACTOR)

# Savings that stages write into a row's notes (the caches' own savings are saved_usd).
NOTE_SAVINGS = {"compression": "compression_saved_usd", "routing": "routing_saved_usd",
                "batching": "batching_saved_usd"}

MEASURES: tuple[str, ...] = (
    "requests", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd", "errors",
    "cache_hits", "overrun_usd", "cost_sq_usd2", "latency_ms_sum", "upstream_ms_sum",
    "saved_compression_usd", "saved_routing_usd", "saved_batching_usd")
_FLOAT_MEASURES = {"cost_usd", "saved_usd", "overrun_usd", "cost_sq_usd2", "latency_ms_sum",
                   "upstream_ms_sum", "saved_compression_usd", "saved_routing_usd",
                   "saved_batching_usd"}
OVERHEAD_HIST = tuple(f"ov_{i:02d}" for i in range(HIST_BUCKETS))
UPSTREAM_HIST = tuple(f"up_{i:02d}" for i in range(HIST_BUCKETS))
STAGE_HIST = tuple(f"h_{i:02d}" for i in range(HIST_BUCKETS))


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    bucket_s: int
    keys: tuple[str, ...]      # after ``bucket``
    values: tuple[str, ...]    # summed columns


COMBO_KEYS = ("user_id", "team", "feature", "model")
DAILY = Table("rollup_day", DAY_S, COMBO_KEYS, MEASURES)
DIM_KEYS = ("dim", "value")
DIM_HOURLY = Table("rollup_dim_hour", HOUR_S, DIM_KEYS, MEASURES)
DIM_DAILY = Table("rollup_dim_day", DAY_S, DIM_KEYS, MEASURES)
ONE_DIMENSION = ("user", "team", "feature", "key")
MODEL_HOURLY = Table("rollup_model_hour", HOUR_S, ("model", "cache", "status"),
                     MEASURES + OVERHEAD_HIST + UPSTREAM_HIST)
STAGE_HOURLY = Table("rollup_stage_hour", HOUR_S, ("stage",), ("samples",) + STAGE_HIST)
TABLES: tuple[Table, ...] = (DAILY, DIM_HOURLY, DIM_DAILY, MODEL_HOURLY, STAGE_HOURLY)
_INT_KEYS = {"status"}


def _ddl(t: Table) -> list[str]:
    cols = ["bucket BIGINT NOT NULL"]
    cols += [f"{k} {'INTEGER' if k in _INT_KEYS else 'TEXT'} NOT NULL" for k in t.keys]
    cols += [f"{v} {'DOUBLE PRECISION' if v in _FLOAT_MEASURES else 'BIGINT'} NOT NULL DEFAULT 0"
             for v in t.values]
    pk = ", ".join(("bucket",) + t.keys)
    out = [f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}, PRIMARY KEY ({pk}))"]
    if t.keys == COMBO_KEYS:
        # The pages filter on one attribution over a range of buckets.
        for k in COMBO_KEYS:
            out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_{k} ON {t.name} ({k}, bucket)")
    if t.keys == DIM_KEYS:
        out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_value ON {t.name} (dim, value, bucket)")
    return out


def ddl() -> list[str]:
    """Migration 7's statements: the four tables, and the request log's keyset index."""
    out = [s for t in TABLES for s in _ddl(t)]
    out.append("CREATE INDEX IF NOT EXISTS requests_ts_id ON requests (ts, id)")
    # The model filter's expression (queries.GROUPS["model"]), so it can use an index.
    out.append("CREATE INDEX IF NOT EXISTS requests_model_ts ON requests "
               "(COALESCE(model, requested_model), ts)")
    return out


# ----------------------------------------------------------------------------- histograms

def hist_bucket(ms: float) -> int:
    """The histogram bucket of ``ms``: 0 below ``HIST_BASE_MS``, then one per factor."""
    if ms < HIST_BASE_MS:
        return 0
    return min(HIST_BUCKETS - 1, 1 + int(math.log(ms / HIST_BASE_MS) / _LOG_FACTOR))


def bucket_bounds(i: int) -> tuple[float, float]:
    if i == 0:
        return 0.0, HIST_BASE_MS
    return HIST_BASE_MS * HIST_FACTOR ** (i - 1), HIST_BASE_MS * HIST_FACTOR ** i


def hist_quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram, interpolated geometrically inside its bucket."""
    n = sum(counts)
    if n <= 0:
        return None
    rank = q * n
    seen = 0.0
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if seen + c >= rank:
            lo, hi = bucket_bounds(i)
            frac = (rank - seen) / c
            if i == 0:
                return lo + (hi - lo) * frac
            if i == HIST_BUCKETS - 1:
                return lo
            return lo * (hi / lo) ** frac
        seen += c
    return bucket_bounds(len(counts) - 1)[0]


# ------------------------------------------------------------------------------ aggregation

def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _note_savings(notes: Any) -> tuple[float, float, float]:
    if not notes or "saved_usd" not in notes:
        return 0.0, 0.0, 0.0
    try:
        d = orjson.loads(notes)
    except orjson.JSONDecodeError:
        return 0.0, 0.0, 0.0
    if not isinstance(d, dict):
        return 0.0, 0.0, 0.0
    out = []
    for key in NOTE_SAVINGS.values():
        v = d.get(key)
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0)
    return out[0], out[1], out[2]


def _stage_items(stage_ms: Any) -> Iterable[tuple[str, float]]:
    if not stage_ms:
        return ()
    try:
        d = orjson.loads(stage_ms)
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(d, dict):
        return ()
    return [(str(k), float(v)) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


Sums = dict[tuple, list]


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[str, Sums]:
    """Each table's sums over ``rows`` (dicts by ledger column), keyed by (bucket, keys…)."""
    out: dict[str, Sums] = {t.name: {} for t in TABLES}
    daily = out[DAILY.name]
    dim_hourly, dim_daily = out[DIM_HOURLY.name], out[DIM_DAILY.name]
    per_model, per_stage = out[MODEL_HOURLY.name], out[STAGE_HOURLY.name]
    n_measures = len(MEASURES)
    for r in rows:
        ts = float(r["ts"])
        hour, day = int(ts // HOUR_S), int(ts // DAY_S)
        model = _text(r.get("model") or r.get("requested_model"))
        cache = _text(r.get("cache") or "miss")
        status = int(r.get("status") or 0)
        cost = float(r.get("cost_usd") or 0.0)
        reserved = r.get("reserved_usd")
        latency = r.get("latency_ms")
        upstream = r.get("upstream_ms")
        comp, routing, batching = _note_savings(r.get("notes"))
        m = (1, int(r.get("prompt_tokens") or 0), int(r.get("completion_tokens") or 0), cost,
             float(r.get("saved_usd") or 0.0), 1 if status >= 400 else 0,
             1 if cache in ("exact", "semantic") else 0,
             cost - reserved if reserved is not None and cost > reserved else 0.0,
             cost * cost, float(latency or 0.0), float(upstream or 0.0), comp, routing,
             batching)
        user, team, feature = (_text(r.get("user_id")), _text(r.get("team")),
                               _text(r.get("feature")))
        k = (day, user, team, feature, model)
        acc = daily.get(k)
        daily[k] = list(m) if acc is None else [a + b for a, b in zip(acc, m)]
        for dim, value in (("user", user), ("team", team), ("feature", feature),
                           ("key", _text(r.get("key_id")))):
            for sums, bucket in ((dim_hourly, hour), (dim_daily, day)):
                k = (bucket, dim, value)
                acc = sums.get(k)
                sums[k] = list(m) if acc is None else [a + b for a, b in zip(acc, m)]
        k = (hour, model, cache, status)
        acc = per_model.get(k)
        if acc is None:
            acc = per_model[k] = [*m, *([0] * (2 * HIST_BUCKETS))]
        else:
            acc[:n_measures] = [a + b for a, b in zip(acc, m)]
        overhead = r.get("overhead_ms")
        if overhead is not None:
            acc[n_measures + hist_bucket(float(overhead))] += 1
        if upstream is not None and float(upstream) > 0:
            acc[n_measures + HIST_BUCKETS + hist_bucket(float(upstream))] += 1
        for stage, ms in _stage_items(r.get("stage_ms")):
            k = (hour, stage[:64])
            acc = per_stage.get(k)
            if acc is None:
                acc = per_stage[k] = [0] * len(STAGE_HOURLY.values)
            acc[0] += 1
            acc[1 + hist_bucket(ms)] += 1
    return out


def _upsert_sql(t: Table) -> str:
    cols = ("bucket",) + t.keys + t.values
    marks = ", ".join("?" for _ in cols)
    sets = ", ".join(f"{v} = {t.name}.{v} + excluded.{v}" for v in t.values)
    return (f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(('bucket',) + t.keys)}) DO UPDATE SET {sets}")


_UPSERTS = {t.name: _upsert_sql(t) for t in TABLES}


def apply(db: Database, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``rows`` to every rollup (the caller commits, with the rows themselves)."""
    if not rows:
        return
    for name, sums in aggregate(rows).items():
        if sums:
            db.executemany(_UPSERTS[name], [(*k, *v) for k, v in sorted(sums.items())])


def rebuild(db: Database) -> int:
    """Recompute every rollup from the ``requests`` table (the caller commits); returns
    the rows read. In bulk (``metering/rollup_build.py``)."""
    from margin.metering import rollup_build

    return rollup_build.rebuild(db)
