"""Building the rollups from the rows already in the ledger, in bulk: what migration 7 and
``margin ledger rollup --rebuild`` run.

The same sums as ``rollups.aggregate`` (the writer's per-batch path), computed with polars
over large chunks of rows read oldest first: ten million rows take minutes, not the hour a
row-by-row loop would. Buckets wholly before a chunk's last row are complete and written
out (each exactly once, into emptied tables), so memory holds about a day of sums.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from margin.metering import rollups
from margin.metering.db import Database
from margin.metering.rollups import (DAILY, DIM_DAILY, DIM_HOURLY, DIM_LATENCY_HOURLY,
                                     DIM_STAGE_HOURLY, DIM_WEEKLY, ERROR_PAIRS, HIST_BASE_MS,
                                     HIST_BUCKETS, HIST_DIMENSIONS, MEASURES, MODEL_DAILY,
                                     MODEL_HOURLY, MODEL_HOURLY_SUMS, ONE_DIMENSION, PAIR_DAILY,
                                     PAIR_HOURLY, PAIRS, STAGE_HOURLY, TABLES, Table, pair_name)

COLUMNS = ("ts", "user_id", "team", "feature", "key_id", "model", "requested_model", "cache",
           "status", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd",
           "reserved_usd", "latency_ms", "upstream_ms", "overhead_ms", "stage_ms", "notes")
_SCHEMA = {"ts": pl.Float64, "user_id": pl.Utf8, "team": pl.Utf8, "feature": pl.Utf8,
           "key_id": pl.Utf8, "model": pl.Utf8, "requested_model": pl.Utf8, "cache": pl.Utf8,
           "status": pl.Int64, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
           "cost_usd": pl.Float64, "saved_usd": pl.Float64, "reserved_usd": pl.Float64,
           "latency_ms": pl.Float64, "upstream_ms": pl.Float64, "overhead_ms": pl.Float64,
           "stage_ms": pl.Utf8, "notes": pl.Utf8}
_DIM_COLUMN = {"user": "user_id", "team": "team", "feature": "feature", "key": "key_id",
               "model": "model", "cache": "cache"}


def _bucket_expr(ms: pl.Expr) -> pl.Expr:
    """``rollups.hist_bucket`` on a column."""
    idx = (1 + ((ms / HIST_BASE_MS).log() / math.log(rollups.HIST_FACTOR)).floor())
    return (pl.when(ms < HIST_BASE_MS).then(0)
            .otherwise(idx.clip(upper_bound=HIST_BUCKETS - 1)).cast(pl.Int64))


def _note(key: str) -> pl.Expr:
    return (pl.col("notes").str.json_path_match(f"$.{key}")
            .cast(pl.Float64, strict=False).fill_null(0.0))


def _prepare(rows: list[tuple]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=_SCHEMA, orient="row")
    cost = pl.col("cost_usd").fill_null(0.0)
    reserved = pl.col("reserved_usd")
    status = pl.col("status").fill_null(0)
    cache = pl.col("cache").fill_null("miss")
    return df.select(
        (pl.col("ts") // 3600).cast(pl.Int64).alias("hour"),
        (pl.col("ts") // 86400).cast(pl.Int64).alias("day"),
        (pl.col("ts") // rollups.WEEK_S).cast(pl.Int64).alias("week"),
        *(pl.col(c).fill_null("").alias(c) for c in ("user_id", "team", "feature", "key_id")),
        pl.coalesce(pl.col("model"), pl.col("requested_model"), pl.lit("")).alias("model"),
        cache.alias("cache"), status.alias("status"),
        pl.lit(1, pl.Int64).alias("requests"),
        pl.col("prompt_tokens").fill_null(0).alias("prompt_tokens"),
        pl.col("completion_tokens").fill_null(0).alias("completion_tokens"),
        cost.alias("cost_usd"), pl.col("saved_usd").fill_null(0.0).alias("saved_usd"),
        (status >= 400).cast(pl.Int64).alias("errors"),
        cache.is_in(["exact", "semantic"]).cast(pl.Int64).alias("cache_hits"),
        pl.when(reserved.is_not_null() & (cost > reserved)).then(cost - reserved)
        .otherwise(0.0).alias("overrun_usd"),
        (cost * cost).alias("cost_sq_usd2"),
        pl.col("latency_ms").fill_null(0.0).alias("latency_ms_sum"),
        pl.col("upstream_ms").fill_null(0.0).alias("upstream_ms_sum"),
        *(_note(k).alias(f"saved_{name}_usd") for name, k in rollups.NOTE_SAVINGS.items()),
        pl.when(pl.col("overhead_ms").is_not_null())
        .then(_bucket_expr(pl.col("overhead_ms"))).otherwise(None).alias("ov_bucket"),
        pl.when(pl.col("upstream_ms").is_not_null() & (pl.col("upstream_ms") > 0))
        .then(_bucket_expr(pl.col("upstream_ms"))).otherwise(None).alias("up_bucket"),
        pl.col("stage_ms"))


def _sum(frame: pl.DataFrame, keys: list[str], values: tuple[str, ...]) -> pl.DataFrame:
    return frame.group_by(keys).agg(*(pl.col(v).sum() for v in values))


def _hist_columns(frame: pl.DataFrame, bucket_col: str, names: tuple[str, ...]) -> list[pl.Expr]:
    return [(pl.col(bucket_col) == i).cast(pl.Int64).alias(n) for i, n in enumerate(names)]


def _pair_value(name: str) -> pl.Expr:
    if name == "status":   # only error rows go into the status pairs
        return pl.lit("error")
    return pl.col(_DIM_COLUMN[name])


def aggregate(df: pl.DataFrame, tables: tuple[Table, ...] = TABLES) -> dict[str, pl.DataFrame]:
    """Each of ``tables``' sums over ``df`` (from ``_prepare``), columns in the table's
    order."""
    out: dict[str, pl.DataFrame] = {}
    measures = list(MEASURES)
    wanted = {t.name for t in tables}
    if MODEL_DAILY.name in wanted:
        out[MODEL_DAILY.name] = _sum(df.rename({"day": "bucket"}),
                                     ["bucket", *MODEL_DAILY.keys], MEASURES)
    if MODEL_HOURLY_SUMS.name in wanted:
        out[MODEL_HOURLY_SUMS.name] = _sum(df.rename({"hour": "bucket"}),
                                           ["bucket", *MODEL_HOURLY_SUMS.keys], MEASURES)
    if PAIR_HOURLY.name in wanted or PAIR_DAILY.name in wanted:
        parts = []
        for a, b in PAIRS:
            frame = df.filter(pl.col("status") >= 400) if (a, b) in ERROR_PAIRS else df
            parts.append(frame.select(pl.col("hour"), pl.col("day"),
                                      pl.lit(pair_name(a, b)).alias("pair"),
                                      _pair_value(a).alias("a"), _pair_value(b).alias("b"),
                                      *measures))
        p = pl.concat(parts)
        out[PAIR_HOURLY.name] = _sum(p.rename({"hour": "bucket"}).drop("day"),
                                     ["bucket", "pair", "a", "b"], MEASURES)
        out[PAIR_DAILY.name] = _sum(p.rename({"day": "bucket"}).drop("hour"),
                                    ["bucket", "pair", "a", "b"], MEASURES)
    if DIM_WEEKLY.name in wanted:
        weeks = pl.concat([df.select(pl.col("week").alias("bucket"), pl.lit(dim).alias("dim"),
                                     pl.col(_DIM_COLUMN[dim]).alias("value"), *measures)
                           for dim in ONE_DIMENSION])
        out[DIM_WEEKLY.name] = _sum(weeks, ["bucket", "dim", "value"], MEASURES)
    if DIM_LATENCY_HOURLY.name in wanted:
        m = df.with_columns(*_hist_columns(df, "ov_bucket", rollups.OVERHEAD_HIST),
                            *_hist_columns(df, "up_bucket", rollups.UPSTREAM_HIST))
        m = m.with_columns(*(pl.col(c).fill_null(0) for c in DIM_LATENCY_HOURLY.values))
        parts = [m.select(pl.col("hour").alias("bucket"), pl.lit(dim).alias("dim"),
                          pl.col(_DIM_COLUMN[dim]).alias("value"), *DIM_LATENCY_HOURLY.values)
                 for dim in HIST_DIMENSIONS]
        out[DIM_LATENCY_HOURLY.name] = _sum(pl.concat(parts), ["bucket", "dim", "value"],
                                            DIM_LATENCY_HOURLY.values)
    if DIM_STAGE_HOURLY.name in wanted:
        st = _stages(df, ["team", "feature"])
        parts = [st.select("bucket", pl.lit(dim).alias("dim"),
                           pl.col(_DIM_COLUMN[dim]).alias("value"), "stage",
                           *DIM_STAGE_HOURLY.values) for dim in HIST_DIMENSIONS]
        out[DIM_STAGE_HOURLY.name] = _sum(pl.concat(parts), ["bucket", "dim", "value", "stage"],
                                          DIM_STAGE_HOURLY.values)
    if DAILY.name not in wanted:   # the tables of migration 7 come together
        return {t.name: out[t.name].select("bucket", *t.keys, *t.values) for t in tables}
    out[DAILY.name] = _sum(df.rename({"day": "bucket"}), ["bucket", *DAILY.keys], MEASURES)
    dims = []
    for dim in ONE_DIMENSION:
        dims.append(df.select(pl.col("hour"), pl.col("day"), pl.lit(dim).alias("dim"),
                              pl.col(_DIM_COLUMN[dim]).alias("value"), *measures))
    d = pl.concat(dims)
    out[DIM_HOURLY.name] = _sum(d.rename({"hour": "bucket"}).drop("day"),
                                ["bucket", "dim", "value"], MEASURES)
    out[DIM_DAILY.name] = _sum(d.rename({"day": "bucket"}).drop("hour"),
                               ["bucket", "dim", "value"], MEASURES)
    m = df.with_columns(*_hist_columns(df, "ov_bucket", rollups.OVERHEAD_HIST),
                        *_hist_columns(df, "up_bucket", rollups.UPSTREAM_HIST))
    m = m.with_columns(*(pl.col(c).fill_null(0) for c in rollups.OVERHEAD_HIST
                         + rollups.UPSTREAM_HIST))
    out[MODEL_HOURLY.name] = _sum(m.rename({"hour": "bucket"}), ["bucket", *MODEL_HOURLY.keys],
                                  MODEL_HOURLY.values)
    out[STAGE_HOURLY.name] = _sum(_stages(df, []), ["bucket", "stage"], STAGE_HOURLY.values)
    return {t.name: out[t.name].select("bucket", *t.keys, *t.values) for t in tables}


def _stages(df: pl.DataFrame, keep: list[str]) -> pl.DataFrame:
    """One row per (request, stage) with ``keep`` columns, the hour as ``bucket`` and the
    stage's histogram columns."""
    pairs = (df.select(pl.col("hour").alias("bucket"), *keep,
                       pl.col("stage_ms").str.extract_all(r'"[^"]+"\s*:\s*-?[0-9.eE+-]+').alias("p"))
             .explode("p").drop_nulls("p"))
    stages = pairs.select(
        pl.col("bucket"), *keep,
        pl.col("p").str.extract(r'^"([^"]+)"', 1).str.slice(0, 64).alias("stage"),
        pl.col("p").str.extract(r':\s*(-?[0-9.eE+-]+)$', 1).cast(pl.Float64, strict=False)
        .alias("ms")).drop_nulls()
    stages = stages.with_columns(pl.lit(1, pl.Int64).alias("samples"),
                                 _bucket_expr(pl.col("ms")).alias("b"))
    return stages.with_columns(*_hist_columns(stages, "b", rollups.STAGE_HIST))


def _write(db: Database, t: Table, frame: pl.DataFrame) -> None:
    if frame.is_empty():
        return
    cols = ("bucket",) + t.keys + t.values
    if db.dialect == "postgresql":
        # PostgreSQL keeps rows where they were written: in the key's order, one pair's
        # buckets (one model's keys over a week) sit on a few pages, not one row a page.
        frame = frame.sort(list(rollups.key_columns(t)))
        with db.conn.cursor() as cur:
            with cur.copy(f"COPY {t.name} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in frame.iter_rows():
                    copy.write_row(row)
        return
    marks = ", ".join("?" for _ in cols)
    sql = f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({marks})"
    rows = frame.rows()
    for start in range(0, len(rows), 50_000):
        db.executemany(sql, rows[start:start + 50_000])


def rebuild(db: Database, chunk_rows: int = 500_000, tables: tuple[Table, ...] = TABLES) -> int:
    """Empty ``tables`` (every rollup) and fill them from the ``requests`` table (the
    caller commits); returns the rows read."""
    for t in tables:
        db.execute(f"DELETE FROM {t.name}")
    sql = f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY ts"
    cur: Any
    if db.dialect == "postgresql":
        cur = db.conn.cursor(name="margin_rollup_rebuild")  # server-side: not all at once
        cur.itersize = chunk_rows
        cur.execute(sql)
    else:
        cur = db.execute(sql)
    pending: dict[str, pl.DataFrame | None] = {t.name: None for t in tables}
    by_name = {t.name: t for t in tables}
    n = 0
    while True:
        chunk = cur.fetchmany(chunk_rows)
        if not chunk:
            break
        n += len(chunk)
        last_ts = float(chunk[-1][0])
        for name, frame in aggregate(_prepare(chunk), tables).items():
            t = by_name[name]
            before = pending[name]
            if before is not None:
                frame = _sum(pl.concat([before, frame]), ["bucket", *t.keys], t.values) \
                    .select("bucket", *t.keys, *t.values)
            cutoff = int(last_ts // t.bucket_s)
            _write(db, t, frame.filter(pl.col("bucket") < cutoff))
            pending[name] = frame.filter(pl.col("bucket") >= cutoff)
    if db.dialect == "postgresql":
        cur.close()
    for name, frame in pending.items():
        if frame is not None:
            _write(db, by_name[name], frame)
    return n
