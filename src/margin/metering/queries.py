"""Every read of the ledger, as typed functions over a ``Database`` and ``Filters``.

No module outside ``metering/`` writes SQL against the ``requests`` table
(tests/metering/test_queries.py greps for it). What a report does with the numbers —
rounding, shares, percentiles, bot signals, seasonal baselines — stays with the report;
here is only what to read and how to group it, in SQL that both SQLite and PostgreSQL run.

Adding a query: a function here taking ``(db, filters, ...)`` and returning plain values
or a small frozen dataclass; group and filter through ``GROUPS`` and ``Filters`` so that
the attribution columns are spelled once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, BinaryIO, Iterator, Sequence

from margin.metering import schema
from margin.metering.db import Database

# A report's name for a dimension -> the SQL expression it groups and filters on. A row's
# model is the one that served it, else (an error before any upstream) the one asked for.
GROUPS: dict[str, str] = {
    "user": "user_id", "team": "team", "feature": "feature", "key": "key_id",
    "model": "COALESCE(model, requested_model)", "endpoint": "endpoint",
}


@dataclass(frozen=True, slots=True)
class Filters:
    """Which rows: a time window (UNIX seconds, ``until_s`` exclusive) and attribution."""

    since_s: float | None = None
    until_s: float | None = None
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    model: str | None = None
    key: str | None = None
    status: str | None = None   # "ok" (below 400), "error" (400 and above) or one status
    cache: str | None = None    # miss | exact | semantic | bypass

    def where(self, *conditions: str) -> tuple[str, list[Any]]:
        """`` WHERE …`` for these filters and any extra ``conditions`` ('' for none)."""
        clauses, params = [], []
        if self.since_s is not None:
            clauses.append("ts >= ?")
            params.append(self.since_s)
        if self.until_s is not None:
            clauses.append("ts < ?")
            params.append(self.until_s)
        for dim in ("user", "team", "feature", "model", "key"):
            value = getattr(self, dim)
            if value is not None:
                clauses.append(f"{GROUPS[dim]} = ?")
                params.append(value)
        if self.status is not None:
            clauses.append(status_condition(self.status, "status"))
            if self.status not in ("ok", "error"):
                params.append(int(self.status))
        if self.cache is not None:
            clauses.append("cache = ?")
            params.append(self.cache)
        clauses += conditions
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def status_condition(status: str, column: str) -> str:
    """The SQL test of ``Filters.status`` on ``column`` (one ``?`` for a given status)."""
    if status == "ok":
        return f"{column} < 400"
    if status == "error":
        return f"{column} >= 400"
    return f"{column} = ?"


def _group(by: str) -> str:
    try:
        return GROUPS[by]
    except KeyError:
        raise ValueError(f"cannot group the ledger by {by!r}: one of {', '.join(GROUPS)}") \
            from None


def _hour(db: Database) -> str:
    """The UNIX hour of ``ts`` (``ts // 3600``)."""
    if db.dialect == "postgresql":
        return "CAST(FLOOR(ts / 3600) AS BIGINT)"
    return "CAST(ts / 3600 AS INTEGER)"  # ts is positive: truncation is floor


def _minute(db: Database) -> str:
    """The UNIX minute of ``ts`` (``ts // 60``)."""
    if db.dialect == "postgresql":
        return "CAST(FLOOR(ts / 60) AS BIGINT)"
    return "CAST(ts / 60 AS INTEGER)"


# ------------------------------------------------------------------------------ totals

@dataclass(frozen=True, slots=True)
class Totals:
    """What a group of rows adds up to (unrounded)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    saved_usd: float
    errors: int       # status 400 and above
    cache_hits: int   # exact or semantic
    overrun_usd: float = 0.0  # settled cost above what admission reserved (still charged)

    @classmethod
    def of(cls, values: Sequence[Any]) -> "Totals":
        n, p, c, cost, saved, errors, hits, overrun = values
        return cls(int(n or 0), int(p or 0), int(c or 0), float(cost or 0.0),
                   float(saved or 0.0), int(errors or 0), int(hits or 0),
                   float(overrun or 0.0))

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


TOTALS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Totals))
ZERO = Totals(0, 0, 0, 0.0, 0.0, 0, 0, 0.0)
_TOTALS = ("COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), "
           "SUM(saved_usd), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
           "SUM(CASE WHEN cache IN ('exact', 'semantic') THEN 1 ELSE 0 END), "
           "SUM(CASE WHEN reserved_usd IS NOT NULL AND cost_usd > reserved_usd "
           "THEN cost_usd - reserved_usd ELSE 0 END)")


def totals_by(db: Database, by: str, filters: Filters = Filters(), *,
              skip_null: bool = False) -> list[tuple[str | None, Totals]]:
    """Totals per value of ``by`` (a key of ``GROUPS``); None is the rows without one,
    left out with ``skip_null``."""
    col = _group(by)
    where, params = filters.where(*([f"{col} IS NOT NULL"] if skip_null else []))
    rows = db.query(f"SELECT {col}, {_TOTALS} FROM requests{where} GROUP BY {col}", params)
    return [(None if v is None else str(v), Totals.of(values)) for v, *values in rows]


def totals_per_hour(db: Database, filters: Filters = Filters()) -> list[tuple[int, Totals]]:
    """Totals per UNIX hour (``ts // 3600``) that has rows."""
    hour = _hour(db)
    where, params = filters.where()
    rows = db.query(f"SELECT {hour}, {_TOTALS} FROM requests{where} GROUP BY {hour}", params)
    return [(int(h), Totals.of(values)) for h, *values in rows]


def cost_by(db: Database, by: str, filters: Filters = Filters()) -> dict[str, float]:
    """Cost (USD) per value of ``by``, rows without a value left out: what budgets start
    from for a period (per key, user, team or feature)."""
    col = _group(by)
    where, params = filters.where(f"{col} IS NOT NULL")
    rows = db.query(f"SELECT {col}, SUM(cost_usd) FROM requests{where} GROUP BY {col}", params)
    return {str(v): float(cost or 0.0) for v, cost in rows}


# Rows of requests that admission refused: they never counted on a request budget.
# The LIKE patterns travel as parameters (a literal % would be a placeholder to psycopg);
# COALESCE because with a NULL, NOT (...) would be NULL and drop the row.
_REFUSED = ("(COALESCE(error_type, '') = 'insufficient_quota' OR COALESCE(notes, '') LIKE ? "
            "OR COALESCE(notes, '') LIKE ?)")
_REFUSED_PARAMS = ('%"rate_limited"%', '%"limits_unavailable"%')


def admitted_by(db: Database, by: str, filters: Filters = Filters()) -> dict[str, int]:
    """Requests admission let through per value of ``by`` (refused ones left out): what
    request-count budgets start from for a period."""
    col = _group(by)
    where, params = filters.where(f"{col} IS NOT NULL", f"NOT {_REFUSED}")
    rows = db.query(f"SELECT {col}, COUNT(*) FROM requests{where} GROUP BY {col}",
                    [*params, *_REFUSED_PARAMS])
    return {str(v): int(n or 0) for v, n in rows}


# --------------------------------------------------------------------------- anomalies

@dataclass(frozen=True, slots=True)
class HourCost:
    """One hour of one series: its cost, its requests, and the sum of their squared costs
    (the counting noise of the anomaly baseline needs the mean squared request cost)."""

    hour: int
    value: str
    cost_usd: float
    requests: int
    cost_sq_usd2: float


def hourly_costs(db: Database, by: str, filters: Filters = Filters()) -> list[HourCost]:
    """Per (UNIX hour, value of ``by``), rows without a value left out."""
    col, hour = _group(by), _hour(db)
    where, params = filters.where(f"{col} IS NOT NULL")
    rows = db.query(f"SELECT {hour}, {col}, SUM(cost_usd), COUNT(*), SUM(cost_usd * cost_usd) "
                    f"FROM requests{where} GROUP BY {hour}, {col}", params)
    return [HourCost(int(h), str(v), float(cost or 0.0), int(n), float(sq or 0.0))
            for h, v, cost, n, sq in rows]


def request_times(db: Database, filters: Filters, limit: int) -> list[tuple[float, str | None]]:
    """(ts, prompt hash) of the first ``limit`` matching requests, oldest first: how a
    user's traffic is spaced and repeated."""
    where, params = filters.where()
    rows = db.query(f"SELECT ts, prompt_hash FROM requests{where} ORDER BY ts LIMIT ?",
                    [*params, limit])
    return [(float(ts), h) for ts, h in rows]


# ------------------------------------------------------------------------- row reads

def time_span(db: Database, filters: Filters = Filters()) -> tuple[float | None, float | None]:
    """The oldest and newest matching row's time ((None, None) when none match); two
    reads of the ``ts`` index, not a scan."""
    where, params = filters.where()
    first = db.query(f"SELECT ts FROM requests{where} ORDER BY ts LIMIT 1", params)
    if not first:
        return None, None
    last = db.query(f"SELECT ts FROM requests{where} ORDER BY ts DESC LIMIT 1", params)
    return float(first[0][0]), float(last[0][0])


@dataclass(frozen=True, slots=True)
class CompressionTotals:
    """The rows the compression stage saw and their prompt tokens before and after it."""

    requests: int
    tokens_before: int
    tokens_after: int


def compression_totals(db: Database, filters: Filters = Filters()) -> CompressionTotals:
    """No rollup holds token counts before compression: one aggregate over the matching
    rows that have them, read from their partial index (migration 8) when no attribution
    filter is given."""
    where, params = filters.where("tokens_before_compression IS NOT NULL",
                                  "tokens_after_compression IS NOT NULL")
    n, before, after = db.query(
        "SELECT COUNT(*), SUM(tokens_before_compression), SUM(tokens_after_compression) "
        f"FROM requests{where}", params)[0]
    return CompressionTotals(int(n or 0), int(before or 0), int(after or 0))


RECENT_COLUMNS: tuple[str, ...] = (
    "id", "ts", "endpoint", "user_id", "feature", "model", "status", "cache",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms")


def recent(db: Database, count: int, filters: Filters = Filters()) -> list[dict[str, Any]]:
    """The ``count`` newest matching requests, newest first, as {column: value}."""
    where, params = filters.where()
    rows = db.query(f"SELECT {', '.join(RECENT_COLUMNS)} FROM requests{where} "
                    f"ORDER BY ts DESC LIMIT ?", [*params, count])
    return [dict(zip(RECENT_COLUMNS, r)) for r in rows]


def notes(db: Database, filters: Filters) -> list[str | None]:
    """The matching rows' ``notes`` (JSON text or None), in no particular order."""
    where, params = filters.where()
    return [r[0] for r in db.query(f"SELECT notes FROM requests{where}", params)]


# ------------------------------------------------------------- the planner's reader

def present(db: Database, wanted: Sequence[str]) -> list[str]:
    """Those of ``wanted`` that this ledger's table has, in the order asked ([] when it
    has no ``requests`` table). The planner reads ledgers of any age: it takes what is
    there rather than insisting on today's schema."""
    have = db.columns(schema.TABLE)
    return [c for c in wanted if c in have]


def column_chunks(db: Database, columns: Sequence[str], chunk_rows: int = 200_000
                  ) -> Iterator[list[tuple]]:
    """Every row's ``columns``, oldest first, ``chunk_rows`` at a time."""
    cur = db.execute(f"SELECT {', '.join(columns)} FROM requests ORDER BY ts")
    while True:
        rows = cur.fetchmany(chunk_rows)
        if not rows:
            return
        yield rows


def write_csv(db: Database, columns: Sequence[str], sink: BinaryIO) -> int:
    """Every row's ``columns`` as CSV with a header, oldest first, written to ``sink``;
    returns the bytes written. On PostgreSQL this is one ``COPY … TO STDOUT``, several
    times faster than fetching rows for a large ledger."""
    if db.dialect != "postgresql":
        raise ValueError("write_csv reads a PostgreSQL ledger")
    n = 0
    with db.conn.cursor().copy(f"COPY (SELECT {', '.join(columns)} FROM requests ORDER BY ts) "
                               "TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for chunk in copy:
            n += sink.write(chunk)
    return n


# ------------------------------------------------------------------------------ service

@dataclass(frozen=True, slots=True)
class ServiceMinute:
    """One minute of answered requests of one model: how many and their upstream time."""

    model: str
    minute: int           # UNIX minute (ts // 60)
    requests: int
    upstream_ms_sum: float
    upstream_ms_max: float


def service_minutes(db: Database, filters: Filters = Filters()) -> list[ServiceMinute]:
    """Per model and minute, the answered (status < 400), upstream-served (not cached)
    requests and the sum of their upstream time (``upstream_ms``, else ``latency_ms``):
    by Little's law that sum / 60 000 is the requests the upstream held at once."""
    minute, model = _minute(db), GROUPS["model"]
    ms = "COALESCE(upstream_ms, latency_ms)"
    where, params = filters.where("status < 400", f"{ms} IS NOT NULL", f"{model} IS NOT NULL",
                                  "(cache IS NULL OR cache NOT IN ('exact', 'semantic'))")
    rows = db.query(f"SELECT {model}, {minute}, COUNT(*), SUM({ms}), MAX({ms}) FROM requests"
                    f"{where} GROUP BY {model}, {minute} ORDER BY {model}, {minute}", params)
    return [ServiceMinute(str(m), int(t), int(n), float(s or 0.0), float(x or 0.0))
            for m, t, n, s, x in rows]
