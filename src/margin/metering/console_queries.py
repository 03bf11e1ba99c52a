"""The console's reads: sums over any window and filter, answered from the rollups.

A window ``[since, until)`` is cut into pieces: whole buckets of the narrowest rollup that
holds what is asked (``metering/rollups.py``), and the partial buckets at either edge from
the ``requests`` table itself. Nothing but the model, the cache outcome or the status:
``rollup_model_hour_sums`` and ``rollup_model_day``. One of user, team, feature or key
alone: whole weeks, days and hours of ``rollup_dim_*``. One team, feature or model (or the
errors) filtered and grouped by one other dimension: ``rollup_pair_hour`` / ``_day``.
Several of user, team, feature and model (no key, cache or status): whole days from
``rollup_day``, the partial days from the raw table on its indexes; anything else, or
hourly buckets of several: the raw table. Each piece is one grouped query; their sums are
added here. The numbers are exactly those of the raw table (the writer updates the
rollups in the transaction that inserts the rows).

The latency histograms are ``metering/latency_queries.py``. The request log
(``metering/request_log.py``) reads the raw table with keyset pagination
on ``(ts, id)``. The CLI (``margin spend``, ``margin anomalies``, ``margin ledger stats``) and ``/admin/``
read through these functions.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from margin.metering import rollups
from margin.metering.db import Database
from margin.metering.queries import Filters, Totals, status_condition
from margin.metering.rollups import (DAILY, DIM_DAILY, DIM_HOURLY, DIM_WEEKLY, MEASURES,
                                     MODEL_DAILY, MODEL_HOURLY_SUMS, PAIR_DAILY, PAIR_HOURLY,
                                     Table)

# A report's dimension -> the rollup column holding it.
ROLLUP_COLUMNS = {"user": "user_id", "team": "team", "feature": "feature", "key": "key_id",
                  "model": "model", "cache": "cache", "status": "status"}
_RAW = {"user": "COALESCE(user_id, '')", "team": "COALESCE(team, '')",
        "feature": "COALESCE(feature, '')", "key": "COALESCE(key_id, '')",
        "model": "COALESCE(model, requested_model, '')", "cache": "cache", "status": "status"}
_ATTRIBUTION = ("user", "team", "feature", "key")  # only the full-combination rollups hold
DIMENSIONS = ("user", "team", "feature", "model", "key")


@dataclass(frozen=True, slots=True)
class Sums:
    """What a group of rows adds up to: ``rollups.MEASURES``, by name."""

    values: tuple[float, ...]

    def __getattr__(self, name: str) -> float:
        try:
            return self.values[MEASURES.index(name)]
        except ValueError:
            raise AttributeError(name) from None

    @property
    def requests(self) -> int:
        return int(self.values[0])

    def totals(self) -> Totals:
        v = dict(zip(MEASURES, self.values))
        return Totals(int(v["requests"]), int(v["prompt_tokens"]), int(v["completion_tokens"]),
                      float(v["cost_usd"]), float(v["saved_usd"]), int(v["errors"]),
                      int(v["cache_hits"]), float(v["overrun_usd"]))


def _measure(i: int) -> property:
    return property(lambda self: self.values[i])


# Each measure a plain property: a page reads several of thousands of groups.
for _i, _m in enumerate(MEASURES):
    if _m != "requests":
        setattr(Sums, _m, _measure(_i))

ZERO = Sums(tuple(0 for _ in MEASURES))


def _note_sql(db: Database, key: str) -> str:
    if db.dialect == "postgresql":
        value = f"CAST(CAST(notes AS json)->>'{key}' AS DOUBLE PRECISION)"
        found = f"strpos(notes, '{key}') > 0"
    else:
        value = f"json_extract(notes, '$.{key}')"
        found = f"instr(notes, '{key}') > 0"
    return f"SUM(CASE WHEN {found} THEN COALESCE({value}, 0) ELSE 0 END)"


def _raw_measures(db: Database, measures: Sequence[str] = MEASURES) -> str:
    return ", ".join(_raw_measure_list(db, measures))


def _raw_measure_list(db: Database, measures: Sequence[str] = MEASURES) -> list[str]:
    parts = ["COUNT(*)", "SUM(prompt_tokens)", "SUM(completion_tokens)", "SUM(cost_usd)",
             "SUM(saved_usd)", "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)",
             "SUM(CASE WHEN cache IN ('exact', 'semantic') THEN 1 ELSE 0 END)",
             "SUM(CASE WHEN reserved_usd IS NOT NULL AND cost_usd > reserved_usd "
             "THEN cost_usd - reserved_usd ELSE 0 END)", "SUM(cost_usd * cost_usd)",
             "SUM(COALESCE(latency_ms, 0))", "SUM(COALESCE(upstream_ms, 0))"]
    parts += [_note_sql(db, k) for k in rollups.NOTE_SAVINGS.values()]
    assert len(parts) == len(MEASURES)
    return [parts[MEASURES.index(m)] for m in measures]


# ------------------------------------------------------------------------------- pieces

@dataclass(frozen=True, slots=True)
class Piece:
    table: Table | None   # None: the raw table
    lo_s: float | None    # None: unbounded
    hi_s: float | None


def pieces(since_s: float | None, until_s: float | None, widths: Sequence[Table]
           ) -> list[Piece]:
    """``[since_s, until_s)`` as raw edges and whole buckets of the ``widths`` tables
    (hourly first, then daily), widest in the middle."""
    if since_s is not None and until_s is not None and until_s <= since_s:
        return []
    out: list[Piece] = []

    def cut(lo: float | None, hi: float | None, level: int) -> None:
        if lo is not None and hi is not None and hi <= lo:
            return
        if level == len(widths):
            out.append(Piece(widths[-1], lo, hi) if widths else Piece(None, lo, hi))
            return
        w = widths[level].bucket_s
        a = None if lo is None else math.ceil(lo / w) * w
        b = None if hi is None else math.floor(hi / w) * w
        if a is not None and b is not None and a >= b:
            out.append(Piece(widths[level - 1] if level else None, lo, hi))
            return
        if lo is not None and a != lo:
            out.append(Piece(widths[level - 1] if level else None, lo, a))
        cut(a, b, level + 1)
        if hi is not None and b != hi:
            out.append(Piece(widths[level - 1] if level else None, b, hi))

    cut(since_s, until_s, 0)
    return out


@dataclass(frozen=True, slots=True)
class Source:
    """Where a query's whole buckets are read: ``widths`` (narrowest first; none: the raw
    table), and for the pair tables which pair holds the two dimensions asked about."""

    widths: tuple[Table, ...]
    dim: str | None = None                    # the dimension tables: which one
    pair: tuple[str, str] | None = None       # the pair tables: (a, b)




def _source(f: Filters, group: Iterable[str], bucket_s: int | None) -> Source:
    """The narrowest rollups that hold what ``f`` and ``group`` ask about."""
    group = [g for g in group if g != "t"]
    filtered = {d for d in (*DIMENSIONS, "status", "cache") if getattr(f, d) is not None}
    asked = filtered | set(group)
    dims = {d for d in _ATTRIBUTION if d in asked}
    hourly = bucket_s is not None and bucket_s < DAILY.bucket_s
    if not dims:
        return Source((MODEL_HOURLY_SUMS,) if hourly else (MODEL_HOURLY_SUMS, MODEL_DAILY))
    if len(asked) == 1:
        (dim,) = dims
        weekly = bucket_s is None or bucket_s % DIM_WEEKLY.bucket_s == 0
        return Source((DIM_HOURLY,) if hourly else (DIM_HOURLY, DIM_DAILY, DIM_WEEKLY) if weekly
                      else (DIM_HOURLY, DIM_DAILY), dim=dim)
    if len(asked) == 2 and ("status" not in asked or f.status == "error"):
        for a, b in rollups.PAIRS:
            # The pair's first dimension filtered: one range of its key.
            if {a, b} == asked and getattr(f, a) is not None and b not in filtered:
                return Source((PAIR_HOURLY,) if hourly else (PAIR_HOURLY, PAIR_DAILY),
                              pair=(a, b))
    combo = {"user", "team", "feature", "model"}
    if hourly or not asked <= combo:
        return Source(())
    return Source((DAILY,))


def _rollup_where(f: Filters, t: Table, lo_s: float | None, hi_s: float | None,
                  src: Source = Source(()), sqlite: bool = False) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if t.keys == rollups.DIM_KEYS:
        dim = src.dim
        assert dim is not None
        value = getattr(f, dim)
        # All values of a dimension over a window: the key (bucket, dim, value), not the
        # index (dim, value, bucket), which SQLite prefers without statistics because it
        # yields the groups in order, and then reads every bucket of the dimension. The
        # unary + keeps "dim" off that index.
        clauses.append("+dim = ?" if sqlite and value is None else "dim = ?")
        params.append(dim)
        if value is not None:
            clauses.append("value = ?")
            params.append(value)
        f = replace(f, **{dim: None})
    if t.keys == rollups.PAIR_KEYS:
        assert src.pair is not None
        clauses.append("pair = ?")
        params.append(rollups.pair_name(*src.pair))
        a, b = src.pair
        clauses.append("a = ?")
        params.append(getattr(f, a))   # "error" for the status pairs
        f = replace(f, **{a: None})
    if lo_s is not None:
        clauses.append("bucket >= ?")
        params.append(int(lo_s // t.bucket_s))
    if hi_s is not None:
        clauses.append("bucket < ?")
        params.append(int(hi_s // t.bucket_s))
    for dim in DIMENSIONS:
        value = getattr(f, dim)
        if value is not None:
            clauses.append(f"{ROLLUP_COLUMNS[dim]} = ?")
            params.append(value)
    if f.status is not None:
        clauses.append(status_condition(f.status, "status"))
        if f.status not in ("ok", "error"):
            params.append(int(f.status))
    if f.cache is not None:
        clauses.append("cache = ?")
        params.append(f.cache)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _rollup_column(g: str, src: Source) -> str:
    if src.dim is not None:
        return "value"
    if src.pair is not None:
        return "a" if g == src.pair[0] else "b"
    return ROLLUP_COLUMNS[g]


def _raw_bucket(db: Database, width_s: int) -> str:
    if db.dialect == "postgresql":
        return f"CAST(FLOOR(ts / {width_s}) AS BIGINT)"
    return f"CAST(ts / {width_s} AS INTEGER)"


Key = tuple


def _sum_sql(db: Database, column: str) -> str:
    # PostgreSQL sums BIGINT columns as NUMERIC, which is slow to add up again and slow
    # to read back; the answer is floats anyway (exact up to 2**53). As DOUBLE PRECISION,
    # read in the binary format, thousands of groups come back in half the time.
    if db.dialect == "postgresql":
        return f"CAST(SUM({column}) AS DOUBLE PRECISION)"
    return f"SUM({column})"


def _among_sql(column: str, values: Sequence[str | None]) -> tuple[str, list[Any]]:
    return f"{column} IN ({', '.join('?' for _ in values)})", ["" if v is None else v
                                                                for v in values]


def sums(db: Database, f: Filters, group: Sequence[str] = (), bucket_s: int | None = None,
         *, measures: Sequence[str] = MEASURES,
         among: tuple[str, Sequence[str | None]] | None = None) -> dict[Key, Sums]:
    """The sums per ``group`` (dimension names of ``ROLLUP_COLUMNS``, and ``"t"`` for the
    start of a ``bucket_s`` time bucket in UNIX seconds) of the rows ``f`` matches. A
    missing attribution is None.

    ``measures``: only these are summed (the others are NaN in the answer: a page that
    needs the cost of 2,000 users need not add up fourteen columns for each).
    ``among``: (a dimension of ``group``, its values): only the groups with those values
    (a chart's top ten, not every user per day)."""
    if not measures or measures[0] != "requests":
        raise ValueError("measures must start with requests (a group with none is dropped)")
    if among is not None and among[0] not in group:
        raise ValueError("among names a dimension that is not grouped")
    if "t" in group and not bucket_s:
        raise ValueError("grouping by time needs bucket_s")
    if bucket_s and DAILY.bucket_s % bucket_s and bucket_s % DAILY.bucket_s:
        raise ValueError("bucket_s must divide a day or be whole days")
    src = _source(f, group, bucket_s)
    n = len(measures)
    raw_measures = _raw_measure_list(db, measures)
    if among is not None and not among[1]:
        return {}
    # Every piece is one SELECT of the same shape (group columns with the same meaning,
    # then the sums), and the pieces are added up by the server in one statement: one
    # round trip, and one row per group comes back instead of one per group and piece
    # (2,000 users in each of a window's hours, days and weeks).
    parts: list[str] = []
    params: list[Any] = []
    for p in pieces(f.since_s, f.until_s, src.widths):
        if p.table is None:
            cols = [(_raw_bucket(db, bucket_s) if g == "t" else _RAW[g]) for g in group]
            extra = [] if among is None else [_among_sql(_RAW[among[0]], among[1])]
            where, piece_params = replace(f, since_s=p.lo_s, until_s=p.hi_s).where(
                *(c for c, _ in extra))
            piece_params += [v for _, vs in extra for v in vs]
            summed = raw_measures
            table = "requests"
        else:
            t = p.table
            # A bucket of this table is a whole number of wanted buckets, or the other way
            # (a finer bucket then gets the table bucket's sums at its start): every
            # piece's time column counts buckets of bucket_s.
            time_col = "bucket"
            if bucket_s and bucket_s > t.bucket_s:
                time_col = f"bucket / {bucket_s // t.bucket_s}"
            elif bucket_s and bucket_s < t.bucket_s:
                time_col = f"bucket * {t.bucket_s // bucket_s}"
            cols = [time_col if g == "t" else _rollup_column(g, src) for g in group]
            where, piece_params = _rollup_where(f, t, p.lo_s, p.hi_s, src,
                                                db.dialect == "sqlite")
            if among is not None:
                clause, values = _among_sql(_rollup_column(among[0], src), among[1])
                where += (" AND " if where else " WHERE ") + clause
                piece_params += values
            summed = [_sum_sql(db, m) for m in measures]
            table = t.name
        named = [f"{c} AS g{i}" for i, c in enumerate(cols)]
        named += [f"{m} AS m{i}" for i, m in enumerate(summed)]
        sql = f"SELECT {', '.join(named)} FROM {table}{where}"
        if group:
            sql += " GROUP BY " + ", ".join(cols)
        parts.append(sql)
        params += piece_params
    if not parts:
        return {}
    ng = len(group)
    outer = [f"g{i}" for i in range(ng)] + [_sum_sql(db, f"m{i}") for i in range(n)]
    sql = (f"SELECT {', '.join(outer)} FROM ("
           + " UNION ALL ".join(parts) + ") AS piece")
    if group:
        sql += " GROUP BY " + ", ".join(f"g{i}" for i in range(ng))
    scale = bucket_s or 1
    out: dict[Key, list[float]] = {}
    plain = ng == 1 and group[0] not in ("t", "status")   # one text dimension
    for row in db.query(sql, params, binary=True):
        if not row[ng]:
            continue
        if plain:
            v = row[0]
            k: Key = (None if v is None or v == "" else str(v),)
        else:
            k = tuple(_key_value(g, v, scale) for g, v in zip(group, row))
        out[k] = [float(x or 0) for x in row[ng:]]
    if tuple(measures) != MEASURES:
        # The measures not summed are NaN: a caller that reads one gets no silent zero.
        # Each of MEASURES picked from the summed ones, or from the NaN appended last (one
        # C call per group: thousands of groups on a page by user or key).
        pick = operator.itemgetter(*(measures.index(m) if m in measures else n
                                     for m in MEASURES))
        return {k: Sums(pick(v + [math.nan])) for k, v in out.items()}
    return {k: Sums(tuple(v)) for k, v in out.items()}


def endpoint_sums(db: Database, f: Filters) -> dict[str | None, Sums]:
    """The sums per endpoint. No rollup keeps the endpoint (few ledgers have more than
    one or two), so this is one grouped query over the ``requests`` table: a scan of the
    window, much slower than the other reads here on a large ledger."""
    where, params = f.where()
    out = {}
    for endpoint, *values in db.query(
            f"SELECT endpoint, {_raw_measures(db)} FROM requests{where} GROUP BY endpoint",
            params):
        if values[0]:
            out[None if endpoint in (None, "") else str(endpoint)] = Sums(
                tuple(float(v or 0) for v in values))
    return out


def _key_value(g: str, v: Any, scale: int) -> Any:
    if g == "t":
        return int(v) * scale
    if g == "status":
        return int(v)
    return None if v in (None, "") else str(v)


def total(db: Database, f: Filters) -> Sums:
    return sums(db, f).get((), ZERO)


def totals_by(db: Database, by: str, f: Filters = Filters(), *, skip_null: bool = False
              ) -> list[tuple[str | None, Totals]]:
    """Totals per value of ``by`` (what ``queries.totals_by`` answers, from the rollups)."""
    if by not in ROLLUP_COLUMNS:
        raise ValueError(f"cannot group the ledger by {by!r}: one of {', '.join(DIMENSIONS)}")
    out = [(k[0], s.totals()) for k, s in sums(db, f, (by,)).items()]
    return [(None if v is None else str(v), t) for v, t in out if not (skip_null and v is None)]


def totals_per_bucket(db: Database, f: Filters, bucket_s: int) -> list[tuple[int, Totals]]:
    """Totals per time bucket (start in UNIX seconds), oldest first."""
    return sorted((k[0], s.totals()) for k, s in sums(db, f, ("t",), bucket_s).items())


def series(db: Database, by: str, f: Filters, bucket_s: int) -> list[tuple[int, str | None, Sums]]:
    """(bucket start, value of ``by``, sums), oldest first."""
    return sorted(((k[0], k[1], s) for k, s in sums(db, f, ("t", by), bucket_s).items()),
                  key=lambda x: (x[0], x[1] or ""))


@dataclass(frozen=True, slots=True)
class HourCost:
    hour: int
    value: str
    cost_usd: float
    requests: int
    cost_sq_usd2: float


def hourly_costs(db: Database, by: str, f: Filters = Filters()) -> list[HourCost]:
    """Per (UNIX hour, value of ``by``), rows without a value left out: the anomaly
    watcher's series (``queries.hourly_costs``'s answer, from the rollups)."""
    out = []
    for (t, v), s in sums(db, f, ("t", by), 3600).items():
        if v is not None:
            out.append(HourCost(t // 3600, v, s.cost_usd, s.requests, s.cost_sq_usd2))
    return out


# ------------------------------------------------------------------------------ capacity

@dataclass(frozen=True, slots=True)
class ModelHour:
    hour: int
    model: str
    requests: int
    tokens: int


def model_hours(db: Database, since_s: float, until_s: float) -> list[ModelHour]:
    """Requests and tokens per model and whole UNIX hour in ``[since_s, until_s)``
    (aligned down to hours), oldest first."""
    lo, hi = int(since_s // 3600), int(until_s // 3600)
    rows = db.query(f"SELECT bucket, model, SUM(requests), SUM(prompt_tokens) + "
                    f"SUM(completion_tokens) FROM {MODEL_HOURLY_SUMS.name} WHERE bucket >= ? AND "
                    "bucket < ? GROUP BY bucket, model ORDER BY bucket", [lo, hi])
    return [ModelHour(int(h), str(m), int(n or 0), int(t or 0)) for h, m, n, t in rows if m]
