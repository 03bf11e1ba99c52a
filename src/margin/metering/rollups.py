"""Hourly, daily and weekly rollups of the ledger, kept in step with every batch the writer
inserts.

Migration 7's five tables, each a sum over the rows of one time bucket:

- ``rollup_dim_hour`` / ``rollup_dim_day``: per (bucket, dimension, value) for the user,
  team, feature and key dimensions one at a time — what a page grouped or filtered on one
  of them alone reads (a few rows per value and bucket, not one per combination);
- ``rollup_day``: per (UTC day, user, team, feature, model) — so a page filtered and
  grouped on several of these is a ``WHERE`` on it. Only daily, and without key, cache
  outcome and status: per hour, or with those, the combinations of a busy ledger are
  nearly as many as its rows (measured with ``margin bench ledger``);
- ``rollup_model_hour``: per (hour, model, cache, status), with histograms of gateway
  overhead and upstream time;
- ``rollup_stage_hour``: per (hour, stage), a histogram of each stage's own time.

Migration 9's, for the pages that still read raw rows or too many rollup rows at ten
million rows: ``rollup_model_hour_sums`` / ``rollup_model_day`` (the model table's sums
without the histograms), ``rollup_dim_week``, ``rollup_pair_hour`` / ``rollup_pair_day``
(two dimensions, ``PAIRS``), and ``rollup_dim_latency_hour`` / ``rollup_dim_stage_hour``
(the histograms per team and per feature).

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

from margin.metering import rollup_keys
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
WEEK_S = 7 * DAY_S   # weeks since the epoch (they start on a Thursday, UTC)
# Migration 9: per week too, so the totals of 2,000 users over 90 days add 13 weeks of
# rows, not 90 days of them (the Pareto curve, a "*" budget's biggest spenders).
DIM_WEEKLY = Table("rollup_dim_week", WEEK_S, DIM_KEYS, MEASURES, since=9)
ONE_DIMENSION = ("user", "team", "feature", "key")
MODEL_KEYS = ("model", "cache", "status")
MODEL_HOURLY = Table("rollup_model_hour", HOUR_S, MODEL_KEYS,
                     MEASURES + OVERHEAD_HIST + UPSTREAM_HIST)
STAGE_HOURLY = Table("rollup_stage_hour", HOUR_S, ("stage",), ("samples",) + STAGE_HIST)
# Migration 9. Per hour and per day and model without the histograms: a 90-day chart
# reads 90 narrow rows per (model, cache, status), not 2,160 rows of 126 columns, and the
# capacity page's four weeks of hours read 150-byte rows, not 1-kB ones.
MODEL_HOURLY_SUMS = Table("rollup_model_hour_sums", HOUR_S, MODEL_KEYS, MEASURES, since=9)
MODEL_DAILY = Table("rollup_model_day", DAY_S, MODEL_KEYS, MEASURES, since=9)
# A page filtered on one dimension and grouped on another (spend by feature of one team,
# by key of one model, by user of the errors): per (bucket, pair, a, b), the pair named
# "a|b". Only the pairs in ``PAIRS``: each costs the writer one more sum per row and bucket.
# The overview of one team or feature: its latency and per-stage histograms per hour (a
# busy team's day is 25,000 rows to read and bucket otherwise). Only these two: a few dozen
# values each, where users and keys are thousands.
HIST_DIMENSIONS = ("team", "feature")
DIM_LATENCY_HOURLY = Table("rollup_dim_latency_hour", HOUR_S, DIM_KEYS,
                           OVERHEAD_HIST + UPSTREAM_HIST, since=9)
DIM_STAGE_HOURLY = Table("rollup_dim_stage_hour", HOUR_S, (*DIM_KEYS, "stage"),
                         ("samples",) + STAGE_HIST, since=9)
PAIR_KEYS = ("pair", "a", "b")
PAIR_HOURLY = Table("rollup_pair_hour", HOUR_S, PAIR_KEYS, MEASURES, since=9)
PAIR_DAILY = Table("rollup_pair_day", DAY_S, PAIR_KEYS, MEASURES, since=9)
# Which pairs: the low-cardinality dimensions (team, feature, model) with each other and
# with the cache outcome, team and model with user and key (a user belongs to one team, so
# team|user is no bigger than the user dimension; model|user and model|key are a few
# models per user), and the error rows by each attribution. The status pairs hold the
# error rows only (status >= 400, ``a`` = "error"): "errors by user" is a few rows per
# hour, all statuses by user would be one per user and hour for the 96 % of rows that are
# fine, which no page asks for on their own; one status code alone reads the raw table.
# A pair is read when its first dimension is filtered (one team, one model, the errors):
# the key (pair, a, bucket, b) makes that one range, and no other index costs the writer. Not kept: feature|user and
# feature|key (a dozen features per user: the rows of a busy hour again, measured in
# ``margin bench ledger``); those combinations read ``rollup_day`` or the raw table.
PAIRS: tuple[tuple[str, str], ...] = (
    ("team", "feature"), ("team", "model"), ("team", "cache"), ("team", "user"),
    ("team", "key"), ("feature", "model"), ("feature", "cache"), ("model", "user"),
    ("model", "key"),
    ("status", "user"), ("status", "team"), ("status", "feature"), ("status", "key"))
ERROR_PAIRS = {p for p in PAIRS if p[0] == "status"}
TABLES: tuple[Table, ...] = (DAILY, DIM_HOURLY, DIM_DAILY, MODEL_HOURLY, STAGE_HOURLY,
                             MODEL_HOURLY_SUMS, MODEL_DAILY, DIM_WEEKLY, PAIR_HOURLY, PAIR_DAILY,
                             DIM_LATENCY_HOURLY, DIM_STAGE_HOURLY)
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
    pk = ", ".join(key_columns(t))
    # SQLite: the newer tables are stored in their key's order (WITHOUT ROWID), so a range
    # of one pair's buckets is read in place, not looked up row by row from an index.
    clustered = " WITHOUT ROWID" if dialect == "sqlite" and t.since >= 9 else ""
    if dialect == "postgresql" and t.since >= 9:
        clustered = f" WITH (fillfactor = {PG_FILLFACTOR})"
    out = [f"CREATE TABLE IF NOT EXISTS {t.name} ({', '.join(cols)}, PRIMARY KEY ({pk})){clustered}"]
    if t.keys == COMBO_KEYS:
        # The pages filter on one attribution over a range of buckets.
        for k in COMBO_KEYS:
            out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_{k} ON {t.name} ({k}, bucket)")
    if t.keys == DIM_KEYS:
        out.append(f"CREATE INDEX IF NOT EXISTS {t.name}_value ON {t.name} (dim, value, bucket)")
    return out


def key_columns(t: Table) -> tuple[str, ...]:
    """The columns of ``t``'s primary key, in its order."""
    return ("pair", "a", "bucket", "b") if t.keys == PAIR_KEYS else ("bucket",) + t.keys


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


_INT_MEASURES = [i for i, m in enumerate(MEASURES) if m not in _FLOAT_MEASURES]


def hist_buckets(ms: np.ndarray) -> np.ndarray:
    """``hist_bucket`` of every value of ``ms`` at once."""
    with np.errstate(divide="ignore", invalid="ignore"):
        idx = 1 + np.floor(np.log(ms / HIST_BASE_MS) / _LOG_FACTOR)
    return np.where(ms < HIST_BASE_MS, 0, np.minimum(idx, HIST_BUCKETS - 1)).astype(np.int64)


@dataclass(slots=True)
class Batch:
    """One table's sums over a batch of rows: its distinct keys (bucket, keys…) and a
    row of ``Table.values`` per key."""

    keys: list[tuple]
    values: np.ndarray

    def as_dict(self) -> dict[tuple, list]:
        return dict(zip(self.keys, self.values.tolist()))


def _group(keys: Iterable[tuple]) -> tuple[list[tuple], np.ndarray]:
    """The distinct ``keys`` in order of appearance, and each key's group id."""
    index: dict[tuple, int] = {}
    gids = [index.setdefault(k, len(index)) for k in keys]
    return list(index), np.asarray(gids, dtype=np.int64)


def _floats(rows: Sequence[dict[str, Any]], column: str) -> np.ndarray:
    return np.array([float(r.get(column) or 0.0) for r in rows])


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Batch]:
    """Each table's sums over ``rows`` (dicts by ledger column).

    The writer calls this for every batch: the per-row Python is the reading of each
    column and coding its keys; grouping (``rollup_keys``) and sums (bincount) are
    numpy's."""
    rows = list(rows)
    out: dict[str, Batch] = {}
    n = len(rows)
    if not n:
        return out
    ts = np.array([float(r["ts"]) for r in rows])
    hours = (ts // HOUR_S).astype(np.int64).tolist()
    days = (ts // DAY_S).astype(np.int64).tolist()
    weeks = (ts // WEEK_S).astype(np.int64).tolist()
    v = {"user": [_text(r.get("user_id")) for r in rows],
         "team": [_text(r.get("team")) for r in rows],
         "feature": [_text(r.get("feature")) for r in rows],
         "key": [_text(r.get("key_id")) for r in rows],
         "model": [_text(r.get("model") or r.get("requested_model")) for r in rows],
         "cache": [_text(r.get("cache") or "miss") for r in rows]}
    status = [int(r.get("status") or 0) for r in rows]
    v["status"] = ["error"] * n   # the status pairs hold only the error rows
    status_a = np.array(status)
    cost = _floats(rows, "cost_usd")
    reserved = np.array([np.nan if r.get("reserved_usd") is None else float(r["reserved_usd"])
                         for r in rows])
    with np.errstate(invalid="ignore"):
        overrun = np.where(~np.isnan(reserved) & (cost > reserved), cost - reserved, 0.0)
    notes = np.array([_note_savings(r.get("notes")) for r in rows]).reshape(n, 3)
    m = np.column_stack([
        np.ones(n), _floats(rows, "prompt_tokens"), _floats(rows, "completion_tokens"), cost,
        _floats(rows, "saved_usd"), (status_a >= 400).astype(float),
        np.array([c in ("exact", "semantic") for c in v["cache"]], dtype=float), overrun,
        cost * cost, _floats(rows, "latency_ms"), _floats(rows, "upstream_ms"), notes])
    # Key columns as codes (metering/rollup_keys.py): one dict lookup per row and
    # column here, the grouping of every table in numpy.
    texts = rollup_keys.Codes()
    code = {d: texts.encode(v[d]) for d in ("user", "team", "feature", "key", "model",
                                             "cache")}
    errors = np.flatnonzero(status_a >= 400)
    code["status"] = texts.encode(["error"] * len(errors))   # the error rows' "a"
    statuses = rollup_keys.Codes()
    status_part = (statuses.encode(status), statuses.values())
    words = texts.values()
    hours_a, days_a, weeks_a = (np.asarray(x, dtype=np.int64) for x in (hours, days, weeks))

    def text(d: str) -> rollup_keys.Part:
        return code[d], words

    def put(t: Table, parts: list[rollup_keys.Part], mm: np.ndarray) -> None:
        keys_, sums_ = rollup_keys.sums(parts, mm)
        out[t.name] = Batch(keys_, sums_)

    put(DAILY, [rollup_keys.buckets(days_a), *(text(d) for d in ("user", "team", "feature",
                                                                 "model"))], m)
    n_dim = len(ONE_DIMENSION)
    dim_parts = [(np.repeat(np.arange(n_dim), n), ONE_DIMENSION),
                 (np.concatenate([code[d] for d in ONE_DIMENSION]), words)]
    m4 = np.concatenate([m] * n_dim)
    for t, b in ((DIM_HOURLY, hours_a), (DIM_DAILY, days_a), (DIM_WEEKLY, weeks_a)):
        put(t, [rollup_keys.buckets(np.tile(b, n_dim)), *dim_parts], m4)
    put(MODEL_DAILY, [rollup_keys.buckets(days_a), text("model"), text("cache"), status_part],
        m)
    model_hour_parts = [rollup_keys.buckets(hours_a), text("model"), text("cache"),
                        status_part]
    put(MODEL_HOURLY_SUMS, model_hour_parts, m)
    picks: list[np.ndarray] = []
    pair_ids: list[np.ndarray] = []
    a_codes: list[np.ndarray] = []
    b_codes: list[np.ndarray] = []
    for i, (a, b) in enumerate(PAIRS):
        pick = errors if (a, b) in ERROR_PAIRS else np.arange(n)
        picks.append(pick)
        pair_ids.append(np.full(len(pick), i, dtype=np.int64))
        a_codes.append(code["status"] if a == "status" else code[a][pick])
        b_codes.append(code[b][pick])
    rows_p = np.concatenate(picks)
    pair_parts = [(np.concatenate(pair_ids), [pair_name(a, b) for a, b in PAIRS]),
                  (np.concatenate(a_codes), words), (np.concatenate(b_codes), words)]
    mp = m[rows_p]
    # The pair tables' keys are (bucket, pair, a, b) like the others'; their primary key
    # order differs, which only the upsert's order cares about (rollups._columns).
    put(PAIR_HOURLY, [rollup_keys.buckets(hours_a[rows_p]), *pair_parts], mp)
    put(PAIR_DAILY, [rollup_keys.buckets(days_a[rows_p]), *pair_parts], mp)
    # Per (hour, model, cache, status): the measures and the two latency histograms.
    keys, gids = rollup_keys.group(model_hour_parts)
    n_m, g = len(MEASURES), len(keys)
    per_model = np.zeros((g, n_m + 2 * HIST_BUCKETS))
    for j in range(n_m):
        per_model[:, j] = np.bincount(gids, weights=m[:, j], minlength=g)
    overhead = np.array([np.nan if r.get("overhead_ms") is None else float(r["overhead_ms"])
                         for r in rows])
    upstream = np.array([np.nan if r.get("upstream_ms") is None else float(r["upstream_ms"])
                         for r in rows])
    for values, offset, keep in ((overhead, n_m, ~np.isnan(overhead)),
                                 (upstream, n_m + HIST_BUCKETS, np.nan_to_num(upstream) > 0)):
        if keep.any():
            cells = gids[keep] * HIST_BUCKETS + hist_buckets(values[keep])
            per_model[:, offset:offset + HIST_BUCKETS] += np.bincount(
                cells, minlength=g * HIST_BUCKETS).reshape(g, HIST_BUCKETS)
    out[MODEL_HOURLY.name] = Batch(keys, per_model)
    # The same two histograms per (hour, team) and (hour, feature).
    reps = len(HIST_DIMENSIONS)
    keys, gids = rollup_keys.group([
        rollup_keys.buckets(np.tile(hours_a, reps)),
        (np.repeat(np.arange(reps), n), HIST_DIMENSIONS),
        (np.concatenate([code[d] for d in HIST_DIMENSIONS]), words)])
    g = len(keys)
    per_dim = np.zeros((g, 2 * HIST_BUCKETS))
    for values, offset, keep in ((overhead, 0, ~np.isnan(overhead)),
                                 (upstream, HIST_BUCKETS, np.nan_to_num(upstream) > 0)):
        keep_all = np.concatenate([keep] * reps)
        if keep_all.any():
            buckets = np.concatenate([hist_buckets(np.nan_to_num(values))] * reps)
            cells = gids[keep_all] * HIST_BUCKETS + buckets[keep_all]
            per_dim[:, offset:offset + HIST_BUCKETS] += np.bincount(
                cells, minlength=g * HIST_BUCKETS).reshape(g, HIST_BUCKETS)
    out[DIM_LATENCY_HOURLY.name] = Batch(keys, per_dim)
    stage_keys: list[tuple] = []
    dim_stage_keys: list[tuple] = []
    stage_ms: list[float] = []
    for i, (hour, r) in enumerate(zip(hours, rows)):
        for st, ms in _stage_items(r.get("stage_ms")):
            st = st[:64]
            stage_keys.append((hour, st))
            stage_ms.append(ms)
            for dim in HIST_DIMENSIONS:
                dim_stage_keys.append((hour, dim, v[dim][i], st))
    if stage_keys:
        buckets = hist_buckets(np.asarray(stage_ms))
        for t, keys_of, b in ((STAGE_HOURLY, stage_keys, buckets),
                              (DIM_STAGE_HOURLY, dim_stage_keys, np.repeat(buckets, reps))):
            keys, gids = _group(keys_of)
            g = len(keys)
            counts = np.zeros((g, 1 + HIST_BUCKETS))
            counts[:, 0] = np.bincount(gids, minlength=g)
            counts[:, 1:] = np.bincount(gids * HIST_BUCKETS + b,
                                        minlength=g * HIST_BUCKETS).reshape(g, HIST_BUCKETS)
            out[t.name] = Batch(keys, counts)
    return out


_INT_VALUES = {t.name: [i for i, c in enumerate(t.values) if c not in _FLOAT_MEASURES]
               for t in TABLES}


def _columns(t: Table, batch: Batch) -> list[list]:
    """The batch as one list per column (bucket, keys…, values…), keys sorted: concurrent
    writers then lock a table's rows in the same order (no deadlock)."""
    order = sorted(range(len(batch.keys)), key=batch.keys.__getitem__)
    keys = [batch.keys[i] for i in order]
    values = batch.values[order]
    ints = set(_INT_VALUES[t.name])
    cols = [list(c) for c in zip(*keys)]
    for j in range(values.shape[1]):
        col = values[:, j]
        cols.append(np.rint(col).astype(np.int64).tolist() if j in ints else col.tolist())
    return cols


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
    by_name = {t.name: t for t in TABLES}
    for name, batch in aggregate(rows).items():
        if not batch.keys:
            continue
        if db.dialect == "postgresql":
            from margin.metering import rollup_pg   # imports this module

            rollup_pg.upsert(db, by_name[name], batch)
        else:
            db.executemany(_UPSERTS[name], zip(*_columns(by_name[name], batch)))


def rebuild(db: Database, since: int | None = None) -> int:
    """Recompute the rollups (all, or those migration ``since`` created) from the
    ``requests`` table (the caller commits); returns the rows read. In bulk
    (``metering/rollup_build.py``)."""
    from margin.metering import rollup_build

    tables = TABLES if since is None else tuple(t for t in TABLES if t.since == since)
    return rollup_build.rebuild(db, tables=tables)


# PostgreSQL: every batch the writer commits updates rollup rows in place. With room left
# in each page the update stays on its page and touches no index (a HOT update); in a full
# page it writes a new index entry too. Measured with the writer on the 10 M-row ledger:
# the pair upserts took a third less time at 70 than at the default 100.
PG_FILLFACTOR = 70


def create_step(since: int) -> Any:
    """A migration's step creating its tables (the DDL differs a little per dialect); on
    PostgreSQL migration 9 also leaves room in the pages of migration 7's tables."""
    def step(db: Database) -> None:
        for statement in ddl(since, db.dialect):
            db.execute(statement)
        if since == 9 and db.dialect == "postgresql":
            for t in TABLES:
                if t.since < 9:   # new pages only; a rebuild rewrites them all
                    db.execute(f"ALTER TABLE {t.name} SET (fillfactor = {PG_FILLFACTOR})")
    step.__name__ = f"create_rollups_of_{since}"
    return step


def rebuild_step(since: int) -> Any:
    """A migration's step filling the tables it created from the rows already there."""
    def step(db: Database) -> int:
        return rebuild(db, since)
    step.__name__ = f"rebuild_rollups_of_{since}"
    return step
