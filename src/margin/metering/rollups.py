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

import numpy as np
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
    since: int = 7             # the migration that created it


COMBO_KEYS = ("user_id", "team", "feature", "model")
DAILY = Table("rollup_day", DAY_S, COMBO_KEYS, MEASURES)
DIM_KEYS = ("dim", "value")
DIM_HOURLY = Table("rollup_dim_hour", HOUR_S, DIM_KEYS, MEASURES)
DIM_DAILY = Table("rollup_dim_day", DAY_S, DIM_KEYS, MEASURES)
ONE_DIMENSION = ("user", "team", "feature", "key")
MODEL_KEYS = ("model", "cache", "status")
MODEL_HOURLY = Table("rollup_model_hour", HOUR_S, MODEL_KEYS,
                     MEASURES + OVERHEAD_HIST + UPSTREAM_HIST)
STAGE_HOURLY = Table("rollup_stage_hour", HOUR_S, ("stage",), ("samples",) + STAGE_HIST)
# Migration 9. Per day and model without the histograms: a 90-day chart reads 90 narrow
# rows per (model, cache, status), not 2,160 rows of 126 columns.
MODEL_DAILY = Table("rollup_model_day", DAY_S, MODEL_KEYS, MEASURES, since=9)
# A page filtered on one dimension and grouped on another (spend by feature of one team,
# by key of one model, by user of the errors): per (bucket, pair, a, b), the pair named
# "a|b". Only the pairs in ``PAIRS``: each costs the writer one more sum per row and bucket.
PAIR_KEYS = ("pair", "a", "b")
PAIR_HOURLY = Table("rollup_pair_hour", HOUR_S, PAIR_KEYS, MEASURES, since=9)
PAIR_DAILY = Table("rollup_pair_day", DAY_S, PAIR_KEYS, MEASURES, since=9)
# Which pairs: the low-cardinality dimensions (team, feature, model) with each other and
# with the cache outcome, team and model with user and key (a user belongs to one team, so
# team|user is no bigger than the user dimension; model|user and model|key are a few
# models per user), and the error rows by each attribution. The status pairs hold the
# error rows only (status >= 400, ``a`` their code as text): "errors by user" is a few
# rows per hour, all statuses by user would be one per user and hour for the 96 % of rows
# that are fine, which no page asks for on their own. Not kept: feature|user and
# feature|key (a dozen features per user: the rows of a busy hour again, measured in
# ``margin bench ledger``); those combinations read ``rollup_day`` or the raw table.
PAIRS: tuple[tuple[str, str], ...] = (
    ("team", "feature"), ("team", "model"), ("team", "cache"), ("team", "user"),
    ("team", "key"), ("feature", "model"), ("feature", "cache"), ("model", "user"),
    ("model", "key"),
    ("status", "user"), ("status", "team"), ("status", "feature"), ("status", "key"))
ERROR_PAIRS = {p for p in PAIRS if p[0] == "status"}
TABLES: tuple[Table, ...] = (DAILY, DIM_HOURLY, DIM_DAILY, MODEL_HOURLY, STAGE_HOURLY,
                             MODEL_DAILY, PAIR_HOURLY, PAIR_DAILY)
_INT_KEYS = {"status"}


def pair_name(a: str, b: str) -> str:
    return f"{a}|{b}"


def _ddl(t: Table, dialect: str = "postgresql") -> list[str]:
    cols = ["bucket BIGINT NOT NULL"]
    cols += [f"{k} {'INTEGER' if k in _INT_KEYS else 'TEXT'} NOT NULL" for k in t.keys]
    cols += [f"{v} {'DOUBLE PRECISION' if v in _FLOAT_MEASURES else 'BIGINT'} NOT NULL DEFAULT 0"
             for v in t.values]
    # The key leads with what a reader fixes (a pair and its first value) and then the
    # bucket range, so a window of one team is one contiguous range of the index.
    pk = ", ".join(("pair", "a", "bucket", "b") if t.keys == PAIR_KEYS else ("bucket",) + t.keys)
    # SQLite: the newer tables are stored in their key's order (WITHOUT ROWID), so a range
    # of one pair's buckets is read in place, not looked up row by row from an index.
    clustered = " WITHOUT ROWID" if dialect == "sqlite" and t.since >= 9 else ""
    out = [f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}, PRIMARY KEY ({pk})){clustered}"]
    if t.keys == COMBO_KEYS:
        # The pages filter on one attribution over a range of buckets.
        for k in COMBO_KEYS:
            out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_{k} ON {t.name} ({k}, bucket)")
    if t.keys == DIM_KEYS:
        out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_value ON {t.name} (dim, value, bucket)")
    if t.keys == PAIR_KEYS:
        # Filtered on the second value (one user's spend per team), grouped on the first;
        # and neither fixed (the error rows of every user over a day).
        out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_b ON {t.name} (pair, b, bucket)")
        out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_bucket ON {t.name} (pair, bucket)")
    return out


def ddl(since: int = 7, dialect: str = "postgresql") -> list[str]:
    """The statements creating the tables of migration ``since`` (7: the first five, and
    the request log's keyset index; 9: the daily model table and the pair tables)."""
    out = [s for t in TABLES if t.since == since for s in _ddl(t, dialect)]
    if since == 7:
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
_INT_MEASURES = [i for i, m in enumerate(MEASURES) if m not in _FLOAT_MEASURES]


def hist_buckets(ms: np.ndarray) -> np.ndarray:
    """``hist_bucket`` of every value of ``ms`` at once."""
    with np.errstate(divide="ignore", invalid="ignore"):
        idx = 1 + np.floor(np.log(ms / HIST_BASE_MS) / _LOG_FACTOR)
    return np.where(ms < HIST_BASE_MS, 0, np.minimum(idx, HIST_BUCKETS - 1)).astype(np.int64)


class _Groups:
    """Keys seen in a batch, each a group id; which rows (by index) add to which group."""

    __slots__ = ("index", "gids", "rows")

    def __init__(self) -> None:
        self.index: dict[tuple, int] = {}
        self.gids: list[int] = []
        self.rows: list[int] = []

    def add(self, key: tuple, row: int) -> None:
        index = self.index
        g = index.get(key)
        if g is None:
            g = index[key] = len(index)
        self.gids.append(g)
        self.rows.append(row)

    def sums(self, m: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.index), m.shape[1]))
        if self.gids:
            np.add.at(out, np.asarray(self.gids), m[np.asarray(self.rows)])
        return out


def _as_rows(groups: _Groups, sums: np.ndarray, n_int: Sequence[int]) -> Sums:
    values = sums.tolist()
    for v in values:
        for i in n_int:
            v[i] = int(round(v[i]))
    return dict(zip(groups.index, values))


def aggregate(rows: Iterable[dict[str, Any]]) -> dict[str, Sums]:
    """Each table's sums over ``rows`` (dicts by ledger column), keyed by (bucket, keys…).

    The writer calls this for every batch, so the per-row Python is only the keys; the
    measures are summed per group with numpy."""
    measures: list[tuple] = []
    daily, dim_h, dim_d, model_h, model_d = (_Groups() for _ in range(5))
    pair_h, pair_d, stage = _Groups(), _Groups(), _Groups()
    ov: list[tuple[int, float]] = []
    up: list[tuple[int, float]] = []
    stage_ms: list[float] = []
    pairs = [(pair_name(a, b), a, b, (a, b) in ERROR_PAIRS) for a, b in PAIRS]
    for i, r in enumerate(rows):
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
        measures.append((1, int(r.get("prompt_tokens") or 0), int(r.get("completion_tokens") or 0),
                         cost, float(r.get("saved_usd") or 0.0), 1 if status >= 400 else 0,
                         1 if cache in ("exact", "semantic") else 0,
                         cost - reserved if reserved is not None and cost > reserved else 0.0,
                         cost * cost, float(latency or 0.0), float(upstream or 0.0), comp,
                         routing, batching))
        v = {"user": _text(r.get("user_id")), "team": _text(r.get("team")),
             "feature": _text(r.get("feature")), "key": _text(r.get("key_id")),
             "model": model, "cache": cache, "status": str(status)}
        daily.add((day, v["user"], v["team"], v["feature"], model), i)
        for dim in ONE_DIMENSION:
            dim_h.add((hour, dim, v[dim]), i)
            dim_d.add((day, dim, v[dim]), i)
        k = (hour, model, cache, status)
        model_h.add(k, i)
        model_d.add((day, model, cache, status), i)
        g = model_h.gids[-1]
        overhead = r.get("overhead_ms")
        if overhead is not None:
            ov.append((g, float(overhead)))
        if upstream is not None and float(upstream) > 0:
            up.append((g, float(upstream)))
        for name, a, b, errors_only in pairs:
            if errors_only and status < 400:
                continue
            pair_h.add((hour, name, v[a], v[b]), i)
            pair_d.add((day, name, v[a], v[b]), i)
        for st, ms in _stage_items(r.get("stage_ms")):
            stage.add((hour, st[:64]), i)
            stage_ms.append(ms)
    out: dict[str, Sums] = {t.name: {} for t in TABLES}
    if not measures:
        return out
    m = np.asarray(measures, dtype=np.float64)
    ints = _INT_MEASURES
    for t, groups in ((DAILY, daily), (DIM_HOURLY, dim_h), (DIM_DAILY, dim_d),
                      (MODEL_DAILY, model_d), (PAIR_HOURLY, pair_h), (PAIR_DAILY, pair_d)):
        out[t.name] = _as_rows(groups, groups.sums(m), ints)
    n_m = len(MEASURES)
    per_model = np.zeros((len(model_h.index), n_m + 2 * HIST_BUCKETS))
    per_model[:, :n_m] = model_h.sums(m)
    for pairs_of, offset in ((ov, n_m), (up, n_m + HIST_BUCKETS)):
        if pairs_of:
            gids = np.fromiter((p[0] for p in pairs_of), np.int64, len(pairs_of))
            ms = np.fromiter((p[1] for p in pairs_of), np.float64, len(pairs_of))
            np.add.at(per_model, (gids, offset + hist_buckets(ms)), 1)
    out[MODEL_HOURLY.name] = _as_rows(model_h, per_model,
                                      [*ints, *range(n_m, n_m + 2 * HIST_BUCKETS)])
    if stage.gids:
        counts = np.zeros((len(stage.index), 1 + HIST_BUCKETS))
        gids = np.asarray(stage.gids)
        np.add.at(counts, (gids, 0), 1)
        np.add.at(counts, (gids, 1 + hist_buckets(np.asarray(stage_ms))), 1)
        out[STAGE_HOURLY.name] = _as_rows(stage, counts, range(1 + HIST_BUCKETS))
    return out


def _upsert_sql(t: Table) -> str:
    cols = ("bucket",) + t.keys + t.values
    marks = ", ".join("?" for _ in cols)
    sets = ", ".join(f"{v} = {t.name}.{v} + excluded.{v}" for v in t.values)
    return (f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(('bucket',) + t.keys)}) DO UPDATE SET {sets}")


def _pg_type(t: Table, col: str) -> str:
    if col == "bucket":
        return "bigint"
    if col in t.keys:
        return "integer" if col in _INT_KEYS else "text"
    return "double precision" if col in _FLOAT_MEASURES else "bigint"


def _pg_upsert_sql(t: Table) -> str:
    """One statement per table and batch on PostgreSQL: every row's columns as arrays,
    unnested (a fixed text the server prepares once, one round trip)."""
    cols = ("bucket",) + t.keys + t.values
    arrays = ", ".join(f"%s::{_pg_type(t, c)}[]" for c in cols)
    sets = ", ".join(f"{v} = {t.name}.{v} + excluded.{v}" for v in t.values)
    return (f"INSERT INTO {t.name} ({', '.join(cols)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(('bucket',) + t.keys)}) DO UPDATE SET {sets}")


_UPSERTS = {t.name: _upsert_sql(t) for t in TABLES}
_PG_UPSERTS = {t.name: _pg_upsert_sql(t) for t in TABLES}


def apply(db: Database, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``rows`` to every rollup (the caller commits, with the rows themselves)."""
    if not rows:
        return
    for name, sums in aggregate(rows).items():
        if not sums:
            continue
        # Sorted: concurrent writers lock a table's rows in the same order (no deadlock).
        items = [(*k, *v) for k, v in sorted(sums.items())]
        if db.dialect == "postgresql":
            with db._guard(), db.conn.cursor() as cur:
                cur.execute(_PG_UPSERTS[name], [list(c) for c in zip(*items)], prepare=True)
        else:
            db.executemany(_UPSERTS[name], items)


def rebuild(db: Database, since: int | None = None) -> int:
    """Recompute the rollups (all, or those migration ``since`` created) from the
    ``requests`` table (the caller commits); returns the rows read. In bulk
    (``metering/rollup_build.py``)."""
    from margin.metering import rollup_build

    tables = TABLES if since is None else tuple(t for t in TABLES if t.since == since)
    return rollup_build.rebuild(db, tables=tables)


def create_step(since: int) -> Any:
    """A migration's step creating its tables (the DDL differs a little per dialect)."""
    def step(db: Database) -> None:
        for statement in ddl(since, db.dialect):
            db.execute(statement)
    step.__name__ = f"create_rollups_of_{since}"
    return step


def rebuild_step(since: int) -> Any:
    """A migration's step filling the tables it created from the rows already there."""
    def step(db: Database) -> int:
        return rebuild(db, since)
    step.__name__ = f"rebuild_rollups_of_{since}"
    return step
